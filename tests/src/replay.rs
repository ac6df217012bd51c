//! The replay harness: mixed synthetic traffic through the real Envoy + filter + server + IdP
//! while tokens and subjects are revoked, a role changes (policy version bump), JWTs expire and
//! the IdP goes down and up. Every response is recorded with its time; [`Report`] lists every
//! violation of the freshness invariants and the worst stale window seen for each.
//!
//! The server keeps its state in Redis (the shared tier), so it can restart mid-run: the
//! filter's held change-feed request (push) drops, it polls until the server is back, and holds
//! requests again. With a second replica behind the same Envoy clusters (Check and the feed
//! round robin over both), the second one restarts instead, and a revocation is issued at the
//! first while it is down: the restarted replica must not answer with a state that lacks it.
//! The negative control runs the second replica without the shared tier.
//!
//! Invariants checked (bounds are the documented ones, plus a small processing margin):
//! - a token revoked at the server: no allow later than the revocation + poll interval + RTT;
//! - a subject revoked at the server: same;
//! - the same for a JWT on a route the filter decides locally (read), a subject revoked while
//!   it writes (`standard_write`), and a JWT revoked after the server restarted;
//! - a role change (IdP scope change + policy version bump): same;
//! - a JWT the IdP revoked, on a read checked after the answer (`background_check_ms`): no allow
//!   later than the revocation + the window + a tick + the server's cached answer (0.5 s);
//! - a JWT: no allow at or after `exp` + clock skew;
//! - privileged: no allow later than the IdP going down + the tier's max staleness;
//! - regulated (never cached in the proxy): no allow later than the IdP going down + its max staleness.

use crate::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the run does.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The filter's epochs poll interval; 0 turns invalidation off (the negative control).
    pub poll_interval_ms: u64,
    pub duration: Duration,
    /// When the IdP's introspection goes down (and 5 s later up), if at all.
    pub idp_down_at: Option<Duration>,
    /// The filter's `max_unreachable_ms` (how long cached decisions are trusted without
    /// hearing from the server).
    pub max_unreachable_ms: u64,
    /// The filter's `push_wait_ms` (0: the change feed is polled, never held).
    pub push_wait_ms: u64,
    /// Whether locally decided tiers honour revocations (the negative control turns it off).
    pub local_revocations: bool,
    /// When the server restarts (its state survives in Redis), if at all.
    pub restart_server_at: Option<Duration>,
    /// A second server replica, if any.
    pub second_replica: SecondReplica,
    /// Whether `/news/` is checked after the answer (`background_check_ms`); the negative
    /// control answers it from the JWT alone.
    pub background_checks: bool,
}

/// A second ext-authz-server behind the same Envoy clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondReplica {
    None,
    /// Sharing the first one's Redis (the supported deployment).
    Shared,
    /// With a state of its own (the negative control: replicas must share a tier).
    Unshared,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub requests: usize,
    pub violations: Vec<String>,
    /// (invariant, worst observed window after its event).
    pub worst: Vec<(String, Duration)>,
}

impl Report {
    pub fn print(&self) {
        println!(
            "replay: {} requests, {} violations",
            self.requests,
            self.violations.len()
        );
        for (name, window) in &self.worst {
            println!("replay: worst stale window for {name}: {window:?}");
        }
        for v in self.violations.iter().take(20) {
            println!("replay: VIOLATION {v}");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Privileged,
    Regulated,
    Jwt,
    /// `POST /api/items`: `standard_write`, decided locally.
    JwtWrite,
    /// `GET /news/items`: `authenticated`, decided locally, checked after the answer.
    Background,
}

struct Actor {
    name: &'static str,
    token: String,
    route: Route,
    /// For JWTs: `exp` in Unix seconds.
    exp: Option<u64>,
}

struct Sample {
    actor: usize,
    at: Duration,
    wall_ms: u64,
    status: u16,
}

const PRIVILEGED_STALENESS_MS: u64 = 4_000;
const REGULATED_STALENESS_MS: u64 = 1_000;
const SKEW_SECONDS: u64 = 1;
/// Processing slack added to every bound (request in flight, timer phase).
const MARGIN_MS: u64 = 400;
/// The `/news/` route's `background_check_ms`.
const BACKGROUND_WINDOW_MS: u64 = 1_000;
/// The documented exposure of a token the IdP revoked on a route checked after the answer:
/// the window, one tick to dispatch, the server's cached answer (at most 0.5 s old).
const BACKGROUND_BOUND_MS: u64 = BACKGROUND_WINDOW_MS + 250 + 500 + MARGIN_MS;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["exp"].as_u64()
}

/// Runs the plan against a fresh stack.
pub fn run_replay(plan: &ReplayPlan) -> Report {
    let mut plugin = decision_cache_plugin_config(plan.poll_interval_ms, 1000);
    plugin["providers"][0]["clock_skew_seconds"] = json!(SKEW_SECONDS);
    plugin["server"]["max_unreachable_ms"] = json!(plan.max_unreachable_ms);
    plugin["server"]["push_wait_ms"] = json!(plan.push_wait_ms);
    if !plan.local_revocations {
        plugin["server"]["local_revocations"] = json!([]);
    }
    let mut news = json!({"name": "news", "match": {"prefix": "/news/", "methods": ["GET"]},
                          "tier": "authenticated"});
    if plan.background_checks {
        news["background_check_ms"] = json!(BACKGROUND_WINDOW_MS);
    }
    if let Some(routes) = plugin["routes"].as_array_mut() {
        routes.insert(0, news);
    }
    let redis = RedisServer::start();
    // The server verifies JWTs with the IdP's keys and opts `/news/` in, as the filter does.
    let checks_after = format!(
        "token:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  discovery: false\n  jwks_uri: http://127.0.0.1:{{IDP_PORT}}/.well-known/jwks.json\npolicy:\n  routes:\n    - {{name: news, match: {{prefix: /news/, methods: [GET]}}, tier: authenticated, background_check_ms: {BACKGROUND_WINDOW_MS}}}\n    - {{name: admin, match: {{prefix: /admin/}}, tier: privileged, require: {{scopes: [admin]}}}}\n    - {{name: regulated, match: {{prefix: /regulated/}}, tier: regulated}}\n  default: {{tier: authenticated}}\n"
    );
    let server_extra = format!(
        "tiers:\n  privileged: {{max_staleness_ms: {PRIVILEGED_STALENESS_MS}}}\n  regulated: {{max_staleness_ms: {REGULATED_STALENESS_MS}}}\nredis:\n  url: \"{}\"\n  secret: \"replay-shared-secret-0123456789abcdef\"\n  block_ms: 200\n{checks_after}",
        redis.url()
    );
    let tiers_only = format!(
        "tiers:\n  privileged: {{max_staleness_ms: {PRIVILEGED_STALENESS_MS}}}\n  regulated: {{max_staleness_ms: {REGULATED_STALENESS_MS}}}\n{checks_after}"
    );
    let extras: Vec<&str> = match plan.second_replica {
        SecondReplica::None => vec![&server_extra],
        SecondReplica::Shared => vec![&server_extra, &server_extra],
        SecondReplica::Unshared => vec![&server_extra, &tiers_only],
    };
    let stack = Arc::new(Mutex::new(CacheStack::start_replicas(&plugin, &extras)));
    let locked = || stack.lock().unwrap_or_else(|p| p.into_inner());
    let idp_port = locked().idp.port;
    let envoy_port = locked().envoy.port;
    let mint = |spec: serde_json::Value| locked().idp.mint(spec);
    let opaque = |sub: &str| mint(json!({"sub": sub, "scope": "read admin", "opaque": true}));
    let mut actors = vec![
        Actor {
            name: "revoked-token",
            token: opaque("alice"),
            route: Route::Privileged,
            exp: None,
        },
        Actor {
            name: "revoked-subject",
            token: opaque("bob"),
            route: Route::Privileged,
            exp: None,
        },
        Actor {
            name: "role-change",
            token: opaque("carol"),
            route: Route::Privileged,
            exp: None,
        },
    ];
    for sub in ["dave", "erin", "frank"] {
        actors.push(Actor {
            name: "bystander",
            token: opaque(sub),
            route: Route::Privileged,
            exp: None,
        });
    }
    actors.push(Actor {
        name: "regulated",
        token: opaque("grace"),
        route: Route::Regulated,
        exp: None,
    });
    let local = |sub: &str| mint(json!({"sub": sub, "scope": "read write", "ttl": 600}));
    actors.push(Actor {
        name: "local-revoked-token",
        token: local("henry"),
        route: Route::Jwt,
        exp: None,
    });
    actors.push(Actor {
        name: "local-revoked-writer",
        token: local("iris"),
        route: Route::JwtWrite,
        exp: None,
    });
    actors.push(Actor {
        name: "local-revoked-after-restart",
        token: local("jack"),
        route: Route::Jwt,
        exp: None,
    });
    actors.push(Actor {
        name: "local-bystander",
        token: local("kate"),
        route: Route::JwtWrite,
        exp: None,
    });
    actors.push(Actor {
        name: "idp-revoked-read",
        token: local("lena"),
        route: Route::Background,
        exp: None,
    });
    for ttl in [3, 4, 60] {
        let token = mint(json!({"sub": format!("jwt-{ttl}"), "scope": "read", "ttl": ttl}));
        let exp = jwt_exp(&token);
        actors.push(Actor {
            name: "jwt",
            token,
            route: Route::Jwt,
            exp,
        });
    }

    let start = Instant::now();
    let events: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let event_thread = {
        let stack = stack.clone();
        let events = events.clone();
        let (alice, idp_down_at) = (actors[0].token.clone(), plan.idp_down_at);
        let token_of = |name: &str| {
            actors
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.token.clone())
                .unwrap_or_default()
        };
        let (henry, jack, lena) = (
            token_of("local-revoked-token"),
            token_of("local-revoked-after-restart"),
            token_of("idp-revoked-read"),
        );
        let restart_at = plan.restart_server_at;
        let admin = |stack: &Mutex<CacheStack>, path: &str, body: Option<serde_json::Value>| {
            lock_stack(stack).server.admin("POST", path, body).status
        };
        std::thread::spawn(move || {
            let at = |t: u64| {
                let target = Duration::from_millis(t);
                if let Some(wait) = target.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            };
            let done = |name: &'static str| {
                events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((name, start.elapsed()))
            };
            at(1_000);
            assert_eq!(
                admin(&stack, "/admin/revoke", Some(json!({"token": alice}))),
                200
            );
            done("revoked-token");
            at(1_400);
            assert_eq!(
                admin(&stack, "/admin/revoke-subject", Some(json!({"sub": "bob"}))),
                200
            );
            done("revoked-subject");
            at(1_600);
            // At the IdP, not the server: only a check after the answer can learn it.
            lock_stack(&stack).idp.revoke(&lena);
            done("idp-revoked-read");
            at(2_000);
            assert_eq!(
                admin(&stack, "/admin/revoke", Some(json!({"token": henry}))),
                200
            );
            done("local-revoked-token");
            at(2_200);
            assert_eq!(
                admin(
                    &stack,
                    "/admin/revoke-subject",
                    Some(json!({"sub": "iris"}))
                ),
                200
            );
            done("local-revoked-writer");
            at(2_800);
            let scope = json!({"sub": "carol", "scope": "read"}).to_string();
            let r = request(
                "POST",
                &format!("http://127.0.0.1:{idp_port}/admin/subject-scope"),
                &[("content-type", "application/json")],
                Some(&scope),
            );
            assert_eq!(r.status, 200);
            assert_eq!(admin(&stack, "/admin/policy-version", None), 200);
            done("role-change");
            if let Some(down) = idp_down_at {
                at(down.as_millis() as u64);
                lock_stack(&stack).idp.set_introspection("down", 0);
                done("idp-down");
            }
            if let Some(restart) = restart_at {
                at(restart.as_millis() as u64);
                if lock_stack(&stack).replicas.is_empty() {
                    restart_server(&stack);
                    done("server-restarted");
                    at(restart.as_millis() as u64 + 1_000);
                    assert_eq!(
                        admin(&stack, "/admin/revoke", Some(json!({"token": jack}))),
                        200
                    );
                    done("local-revoked-after-restart");
                } else {
                    // The second replica goes down; the revocation is made at the first
                    // meanwhile; the second comes back (and must read it before it answers).
                    let config = stop_replica(&stack);
                    assert_eq!(
                        admin(&stack, "/admin/revoke", Some(json!({"token": jack}))),
                        200
                    );
                    done("local-revoked-after-restart");
                    std::thread::sleep(Duration::from_millis(300));
                    start_replica(&stack, &config);
                    done("server-restarted");
                }
            }
            if let Some(down) = idp_down_at {
                at(down.as_millis() as u64 + 5_000);
                lock_stack(&stack).idp.set_introspection("ok", 0);
                done("idp-up");
            }
        })
    };

    let mut samples = Vec::new();
    let mut next = 0usize;
    while start.elapsed() < plan.duration {
        let actor = &actors[next % actors.len()];
        let (method, path) = match actor.route {
            Route::Privileged => ("GET", "/admin/users"),
            Route::Regulated => ("GET", "/regulated/records"),
            Route::Jwt => ("GET", "/api/items"),
            Route::JwtWrite => ("POST", "/api/items"),
            Route::Background => ("GET", "/news/items"),
        };
        let (at, wall) = (start.elapsed(), wall_ms());
        let bearer = format!("Bearer {}", actor.token);
        let status = request(
            method,
            &format!("http://127.0.0.1:{envoy_port}{path}"),
            &[("connection", "close"), ("authorization", &bearer)],
            None,
        )
        .status;
        samples.push(Sample {
            actor: next % actors.len(),
            at,
            wall_ms: wall,
            status,
        });
        next += 1;
    }
    let _ = event_thread.join();
    let events = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    check(plan, &actors, &samples, &events)
}

fn check(
    plan: &ReplayPlan,
    actors: &[Actor],
    samples: &[Sample],
    events: &[(&'static str, Duration)],
) -> Report {
    let mut report = Report {
        requests: samples.len(),
        ..Report::default()
    };
    let event = |name: &str| events.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
    let invalidation_bound = Duration::from_millis(plan.poll_interval_ms.max(250) + MARGIN_MS);
    let revocation_events = [
        "revoked-token",
        "revoked-subject",
        "role-change",
        "local-revoked-token",
        "local-revoked-writer",
        "local-revoked-after-restart",
        "idp-revoked-read",
    ];
    // A check of nothing: each actor must have been allowed before its event.
    for name in revocation_events {
        if let Some(t) = event(name) {
            let index = actors.iter().position(|a| a.name == name).unwrap_or(0);
            if !samples
                .iter()
                .any(|s| s.actor == index && s.status == 200 && s.at < t)
            {
                report
                    .violations
                    .push(format!("{name}: never allowed before the event"));
            }
        }
    }
    let mut window =
        |label: &str, after: Duration, bound: Duration, allowed: &dyn Fn(&Sample) -> bool| {
            let mut worst = Duration::ZERO;
            for s in samples
                .iter()
                .filter(|s| s.status == 200 && s.at > after && allowed(s))
            {
                let late = s.at - after;
                worst = worst.max(late);
                if late > bound {
                    report.violations.push(format!(
                        "{label}: allowed {late:?} after the event (bound {bound:?})"
                    ));
                }
            }
            report.worst.push((label.to_owned(), worst));
        };
    for name in revocation_events {
        if let Some(t) = event(name) {
            let index = actors.iter().position(|a| a.name == name).unwrap_or(0);
            let bound = if name == "idp-revoked-read" {
                Duration::from_millis(BACKGROUND_BOUND_MS)
            } else {
                invalidation_bound
            };
            window(name, t, bound, &|s: &Sample| s.actor == index);
        }
    }
    if let Some(down) = event("idp-down") {
        let up = event("idp-up").unwrap_or(Duration::MAX);
        let privileged = |s: &Sample| actors[s.actor].route == Route::Privileged && s.at < up;
        window(
            "privileged while the IdP is down",
            down,
            Duration::from_millis(PRIVILEGED_STALENESS_MS + MARGIN_MS),
            &privileged,
        );
        let regulated = |s: &Sample| actors[s.actor].route == Route::Regulated && s.at < up;
        window(
            "regulated while the IdP is down",
            down,
            Duration::from_millis(REGULATED_STALENESS_MS + MARGIN_MS),
            &regulated,
        );
    }
    // Bystanders of local routes keep being allowed (the server restart included).
    let bystander = actors.iter().position(|a| a.name == "local-bystander");
    let refused_bystanders = samples
        .iter()
        .filter(|s| Some(s.actor) == bystander && s.at > Duration::from_millis(500))
        .filter(|s| s.status != 200)
        .count();
    if refused_bystanders > 0 {
        report.violations.push(format!(
            "local-bystander: {refused_bystanders} write(s) refused"
        ));
    }
    let mut worst_expiry = 0i64;
    for s in samples.iter().filter(|s| s.status == 200) {
        if let Some(exp) = actors[s.actor].exp {
            let limit_ms = (exp + SKEW_SECONDS) * 1000;
            worst_expiry = worst_expiry.max(s.wall_ms as i64 - limit_ms as i64);
            if s.wall_ms >= limit_ms + 50 {
                report.violations.push(format!(
                    "jwt allowed {} ms after exp + skew",
                    s.wall_ms - limit_ms
                ));
            }
        }
    }
    report.worst.push((
        "jwt past exp + skew (ms, negative = none)".into(),
        Duration::from_millis(worst_expiry.max(0) as u64),
    ));
    let expired_seen = samples.iter().any(|s| {
        actors[s.actor]
            .exp
            .is_some_and(|e| s.wall_ms > (e + SKEW_SECONDS) * 1000 + 500)
            && s.status != 200
    });
    if plan.duration > Duration::from_secs(6) && !expired_seen {
        report
            .violations
            .push("no expired jwt was exercised: the run is too short to check expiry".into());
    }
    report
}

/// Restarts the stack's server on the same ports with the same configuration; its state comes
/// back from Redis.
fn restart_server(stack: &Mutex<CacheStack>) {
    let mut s = lock_stack(stack);
    let config = pinned_config(&s.server);
    s.server.kill();
    s.server = AuthzServerProcess::start(&config);
}

/// Stops the second replica; returns its configuration with its ports pinned.
fn stop_replica(stack: &Mutex<CacheStack>) -> String {
    let mut s = lock_stack(stack);
    let Some(replica) = s.replicas.first_mut() else {
        return String::new();
    };
    let config = pinned_config(replica);
    replica.kill();
    config
}

/// Starts the second replica again with `config`.
fn start_replica(stack: &Mutex<CacheStack>, config: &str) {
    let replica = AuthzServerProcess::start(config);
    if let Some(slot) = lock_stack(stack).replicas.first_mut() {
        *slot = replica;
    }
}

/// A server's configuration with the ports it listens on now written in.
fn pinned_config(server: &AuthzServerProcess) -> String {
    let (grpc, admin) = (server.grpc_port, server.admin_port);
    server
        .config
        .lines()
        .map(|line| {
            if line.starts_with("listen:") {
                format!("listen: 127.0.0.1:{grpc}\n")
            } else if line.starts_with("admin_listen:") {
                format!("admin_listen: 127.0.0.1:{admin}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

fn lock_stack(stack: &Mutex<CacheStack>) -> std::sync::MutexGuard<'_, CacheStack> {
    stack.lock().unwrap_or_else(|p| p.into_inner())
}
