//! Freshness on every tier, end to end through the real Envoy (two workers), the real `.wasm`
//! and the real server: revocations of a token (by the token and by `jti`) and of a subject
//! reach routes the filter decides locally from the JWT; the server pushes changes through
//! held change-feed requests (measured: a revocation arrives long before the poll interval,
//! and an idle feed costs no request per interval); with the push off or the server gone the
//! filter polls, and comes back to push when the server returns.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::build::FilterBuild;
use tests::*;

/// A stack whose feed polls only every `poll_interval_ms` and is held `push_wait_ms` (0: off).
fn stack(poll_interval_ms: u64, push_wait_ms: u64, max_unreachable_ms: u64) -> CacheStack {
    let mut plugin = decision_cache_plugin_config(poll_interval_ms, 1000);
    plugin["server"]["push_wait_ms"] = json!(push_wait_ms);
    plugin["server"]["max_unreachable_ms"] = json!(max_unreachable_ms);
    CacheStack::start(&plugin, "")
}

fn jwt(s: &CacheStack, sub: &str, extra: Value) -> String {
    s.idp
        .mint(json!({"sub": sub, "scope": "read write", "ttl": 600, "claims": extra}))
}

fn status(s: &CacheStack, method: &str, path: &str, token: &str) -> u16 {
    s.envoy.status_on_new_connection(method, path, token)
}

/// How long after `since` the token was first refused on `count` requests in a row (new
/// connections, so both workers answer), within `limit`.
fn refused_after(
    s: &CacheStack,
    method: &str,
    path: &str,
    token: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut refused_in_a_row = 0;
    let mut first_refusal = None;
    while since.elapsed() < limit {
        if status(s, method, path, token) == 401 {
            first_refusal.get_or_insert(since.elapsed());
            refused_in_a_row += 1;
            if refused_in_a_row == 20 {
                return first_refusal;
            }
        } else {
            refused_in_a_row = 0;
            first_refusal = None;
        }
    }
    None
}

fn revoke(s: &CacheStack, path: &str, body: Value) {
    let reply = s.server.admin("POST", path, Some(body));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn one_feed_request_per_envoy_whatever_its_workers_and_every_worker_applies_it() {
    // Polling every 4 s: only the push, shared with every worker, delivers within a second.
    let mut plugin = decision_cache_plugin_config(4_000, 1000);
    plugin["server"]["push_wait_ms"] = json!(4_000);
    plugin["server"]["max_unreachable_ms"] = json!(10_000);
    let s = CacheStack::start_with_workers(&plugin, "", 4);
    let held = || server_metric(s.server.admin_port, "authz_feed_streams");
    assert!(
        eventually(Duration::from_secs(5), || held() == 1.0),
        "held feed requests: {}",
        held()
    );
    // Four workers and the main thread: still one, past a held request's wait.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_millis(4_500) {
        assert!(held() <= 1.0, "{} held feed requests", held());
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = jwt(&s, "grace", json!({}));
    for _ in 0..8 {
        assert_eq!(status(&s, "POST", "/api/items", &token), 200);
    }
    let at = Instant::now();
    revoke(&s, "/admin/revoke", json!({"token": token}));
    let took = refused_after(
        &s,
        "POST",
        "/api/items",
        &token,
        at,
        Duration::from_millis(1_500),
    );
    assert!(took.is_some(), "a revocation did not reach every worker");
    eprintln!("revocation refused by every worker after {took:?}");
}

#[test]
fn revocations_reach_locally_decided_reads_and_writes_pushed_before_the_poll_interval() {
    // Polling every 4 s: only the push can deliver within a second.
    let s = stack(4_000, 4_000, 10_000);
    let by_token = jwt(&s, "alice", json!({}));
    let by_jti = jwt(&s, "bob", json!({"jti": "jti-bob-1"}));
    let by_subject = jwt(&s, "carol", json!({}));
    let bystander = jwt(&s, "dave", json!({}));
    for token in [&by_token, &by_jti, &by_subject, &bystander] {
        for _ in 0..4 {
            assert_eq!(status(&s, "GET", "/api/items", token), 200);
            assert_eq!(status(&s, "POST", "/api/items", token), 200);
        }
    }
    // Give both workers' first held requests time to be out.
    std::thread::sleep(Duration::from_millis(300));
    let bound = Duration::from_millis(1_500);
    let at = Instant::now();
    revoke(&s, "/admin/revoke", json!({"token": by_token}));
    let lag = refused_after(&s, "GET", "/api/items", &by_token, at, bound);
    assert!(lag.is_some(), "a revoked token kept reading for {bound:?}");
    assert_eq!(status(&s, "POST", "/api/items", &by_token), 401);

    let at = Instant::now();
    revoke(&s, "/admin/revoke", json!({"jti": "jti-bob-1"}));
    assert!(
        refused_after(&s, "POST", "/api/items", &by_jti, at, bound).is_some(),
        "a revoked jti kept writing"
    );

    let at = Instant::now();
    revoke(&s, "/admin/revoke-subject", json!({"sub": "carol"}));
    assert!(
        refused_after(&s, "POST", "/api/items", &by_subject, at, bound).is_some(),
        "a revoked subject kept writing"
    );
    assert_eq!(status(&s, "GET", "/api/items", &by_subject), 401);
    for _ in 0..10 {
        assert_eq!(status(&s, "GET", "/api/items", &bystander), 200);
        assert_eq!(status(&s, "POST", "/api/items", &bystander), 200);
    }
    // A later login of the subject passes (its `iat` is after the revocation's second).
    std::thread::sleep(Duration::from_millis(1_100));
    let fresh = jwt(&s, "carol", json!({}));
    assert_eq!(status(&s, "POST", "/api/items", &fresh), 200);
    // Public routes never look at revocations.
    assert_eq!(status(&s, "GET", "/healthz", &by_token), 200);
    assert!(
        s.envoy
            .metric("authz_proxy_decisions_total{reason=\"revoked\"}")
            >= 60
    );
    assert!(
        s.envoy
            .metric("authz_proxy_feed_polls_total{result=\"held\"}")
            >= 2
    );
}

#[test]
fn an_idle_pushed_feed_costs_no_request_per_poll_interval() {
    let s = stack(250, 1_000, 2_000);
    let requests = || server_metric(s.server.admin_port, "authz_epochs_requests_total");
    // Both workers hold a request (the native module: its process).
    let (min_holds, max_holds) = FilterBuild::current().feed_holds();
    let started = Instant::now();
    while server_metric(s.server.admin_port, "authz_feed_streams") < min_holds {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the workers never held a request"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = requests();
    // Over 3 s, the held requests sampled every 100 ms: the reader re-asks when its wait (1 s)
    // ends, so a sample taken between two of its requests may see none; most must see it, and
    // none more than the one reader.
    let mut samples = Vec::new();
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(3_000) {
        samples.push(server_metric(s.server.admin_port, "authz_feed_streams"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = requests() - before;
    // One reader, 3 s: one held request per second (its wait) is 3 (+ the one in flight);
    // polling every 250 ms would be 12 per reader, and a reader per VM 3 times that.
    assert!(during <= 8.0, "{during} feed requests in 3 s while idle");
    assert!(
        samples.iter().all(|held| *held <= max_holds),
        "more held requests than one reader's: {samples:?}"
    );
    let holding = samples.iter().filter(|held| **held >= min_holds).count();
    assert!(
        holding * 10 >= samples.len() * 8,
        "the reader held no request in {} of {} samples: {samples:?}",
        samples.len() - holding,
        samples.len()
    );

    // The control: with the push off the same 3 s cost a request per worker per interval.
    let polled = stack(250, 0, 2_000);
    let before = server_metric(polled.server.admin_port, "authz_epochs_requests_total");
    std::thread::sleep(Duration::from_millis(3_000));
    let during = server_metric(polled.server.admin_port, "authz_epochs_requests_total") - before;
    // 12 polls per reader in 3 s, less the slack of the first.
    let readers = FilterBuild::current().feed_readers() as f64;
    assert!(
        during >= 8.0 * readers,
        "polling made only {during} requests in 3 s"
    );
}

#[test]
fn with_the_server_gone_the_filter_polls_and_returns_to_push_when_it_is_back() {
    let mut s = stack(250, 1_000, 2_000);
    let token = jwt(&s, "erin", json!({}));
    assert_eq!(status(&s, "GET", "/api/items", &token), 200);
    std::thread::sleep(Duration::from_millis(300));
    let (grpc, admin) = (s.server.grpc_port, s.server.admin_port);
    s.server.kill();
    // Local routes keep working without the server.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(status(&s, "GET", "/api/items", &token), 200);
    assert!(
        s.envoy
            .metric("authz_proxy_feed_polls_total{result=\"failed\"}")
            >= 1
    );
    s.server = AuthzServerProcess::start(&server_yaml(
        s.idp.port,
        &format!(
            "listen: 127.0.0.1:{grpc}\nadmin_listen: 127.0.0.1:{admin}\nepochs_token: \"{EPOCHS_TOKEN}\"\n"
        ),
    ));
    // Back to held requests: both workers (the native module: its process) hold one again.
    let back = Instant::now();
    while server_metric(admin, "authz_feed_streams") < FilterBuild::current().feed_holds().0 {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the workers did not return to held requests"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the new server's revocation (at its change version 1, below the old cursor) lands.
    let at = Instant::now();
    revoke(&s, "/admin/revoke", json!({"token": token}));
    assert!(
        refused_after(
            &s,
            "GET",
            "/api/items",
            &token,
            at,
            Duration::from_millis(1_500)
        )
        .is_some(),
        "a revocation at the restarted server did not reach the filter"
    );
}

#[test]
fn a_held_feed_request_answers_when_something_changes_and_never_before() {
    let s = stack(250, 0, 2_000);
    let admin = s.server.admin_port;
    let feed = |query: &str| {
        let started = Instant::now();
        let reply = get(
            &format!("http://127.0.0.1:{admin}/admin/epochs?format=2&{query}"),
            &[("authorization", &format!("Bearer {EPOCHS_TOKEN}"))],
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        (started.elapsed(), reply.json())
    };
    let (_, now) = feed("since=0");
    let version = now["version"].as_u64().unwrap_or(0);
    let incarnation = now["incarnation"].as_str().unwrap_or("").to_owned();
    // Nothing changes: held for its wait.
    let (held, quiet) = feed(&format!(
        "since={version}&wait_ms=400&incarnation={incarnation}"
    ));
    assert!(
        held >= Duration::from_millis(380),
        "answered after {held:?}"
    );
    assert_eq!(quiet["tokens"], json!([]));
    // Another incarnation's cursor: at once.
    let (other, _) = feed(&format!("since={version}&wait_ms=5000&incarnation=0000"));
    assert!(
        other < Duration::from_millis(1_000),
        "answered after {other:?}"
    );
    // A change during the wait: answered at once, with the change and when it was learned.
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = get(
            &format!(
                "http://127.0.0.1:{admin}/admin/epochs?format=2&since={version}&wait_ms=10000"
            ),
            &[("authorization", &format!("Bearer {EPOCHS_TOKEN}"))],
        );
        (started.elapsed(), reply.json())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(server_metric(admin, "authz_feed_streams") >= 1.0);
    revoke(&s, "/admin/revoke", json!({"jti": "held-jti"}));
    let (waited, answer) = waiter.join().expect("waiter");
    assert!(
        waited < Duration::from_millis(2_000),
        "answered {waited:?} after it was sent"
    );
    assert_eq!(answer["jtis"][0][0], "held-jti");
    assert!(answer["jtis"][0][2].as_u64().is_some(), "{answer}");
}

#[test]
fn a_revocation_at_one_shared_server_is_pushed_by_another() {
    // Two servers share Redis; the Envoy's feed is held by B only, polled every 4 s. A
    // revocation made at A reaches B through the shared stream, and B's held request answers:
    // within a second, not a poll interval.
    let redis = RedisServer::start();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let (a, b) = (
        shared_server(&idp, &redis, "zone-a"),
        shared_server(&idp, &redis, "zone-b"),
    );
    let confirmed = |s: &AuthzServerProcess| {
        s.admin("GET", "/admin/epochs?since=0&format=2", None)
            .json()["confirmed"]
            == true
    };
    assert!(
        eventually(Duration::from_secs(10), || confirmed(&a) && confirmed(&b)),
        "both instances sync with redis"
    );
    let mut plugin = decision_cache_plugin_config(4_000, 1000);
    plugin["server"]["push_wait_ms"] = json!(4_000);
    plugin["server"]["max_unreachable_ms"] = json!(10_000);
    let envoy = Envoy::start_rendered(&render_template_full(
        "decision-cache.template.yaml",
        &plugin,
        idp.port,
        echo.port,
        b.grpc_port,
        b.admin_port,
    ));
    let token = idp.mint(json!({"sub": "frank", "scope": "read write", "ttl": 600}));
    let status = || envoy.status_on_new_connection("POST", "/api/items", &token);
    // Writes fail closed (503) until each worker has read the server's state: on a loaded
    // machine that can take longer than Envoy takes to listen.
    assert!(eventually(Duration::from_secs(5), || status() == 200));
    assert!(
        eventually(Duration::from_secs(5), || b.metric("authz_feed_streams")
            >= FilterBuild::current().feed_holds().0),
        "the workers hold requests at B"
    );
    let revoked_at = Instant::now();
    let answer = a
        .admin(
            "POST",
            "/admin/revoke-subject",
            Some(json!({"sub": "frank"})),
        )
        .json();
    assert_eq!(answer["shared"], "published", "{answer}");
    assert!(
        eventually(Duration::from_millis(1_500), || (0..10)
            .all(|_| status() == 401)),
        "B did not push A's revocation within 1.5 s"
    );
    eprintln!(
        "revoke-subject at A → writes refused through B's feed after {:?}",
        revoked_at.elapsed()
    );
}

#[test]
fn a_fresh_write_route_asks_the_server_so_a_revocation_applies_to_the_next_write() {
    // The feed is off: locally decided routes cannot learn of the revocation; the write route
    // marked fresh asks the server on every request (cache 0) and is refused at once.
    let mut plugin = decision_cache_plugin_config(0, 1000);
    let routes = plugin["routes"].as_array_mut().expect("routes");
    let write = routes
        .iter_mut()
        .find(|r| r["name"] == "write")
        .expect("the write route");
    write["fresh_cache_ms"] = json!(0);
    let s = CacheStack::start(&plugin, "");
    let token = jwt(&s, "grace", json!({}));
    for _ in 0..3 {
        assert_eq!(status(&s, "POST", "/api/items", &token), 200);
        assert_eq!(status(&s, "GET", "/api/items", &token), 200);
    }
    assert!(
        s.envoy.metric("authz_proxy_check_calls_total") >= 3,
        "writes asked the server"
    );
    revoke(&s, "/admin/revoke-subject", json!({"sub": "grace"}));
    assert_eq!(
        status(&s, "POST", "/api/items", &token),
        401,
        "the next write"
    );
    assert_eq!(
        status(&s, "GET", "/api/items", &token),
        200,
        "reads stay local (and, with the feed off, do not know)"
    );
    // Without a token the fresh route answers locally, like any server route.
    assert_eq!(s.envoy.send("POST", "/api/items", None, &[]).status, 401);
}

#[test]
fn a_large_revocation_state_reaches_a_new_envoy_in_pages() {
    let plugin = decision_cache_plugin_config(250, 1000);
    let s = CacheStack::start(&plugin, "feed: {page_rows: 100}\n");
    // 250 revocations of other tokens, then the one that matters: a new Envoy reads the
    // state from 0 in at least three pages, and the last page's revocation is honoured.
    for i in 0..250u32 {
        let hash = authz_core::token_hash::digest_hex(&authz_core::token_hash::token_digest(
            &format!("junk-{i}"),
        ));
        revoke(&s, "/admin/revoke", json!({"token_hash": hash}));
    }
    let revoked = jwt(&s, "alice", json!({}));
    let bystander = jwt(&s, "dave", json!({}));
    revoke(&s, "/admin/revoke", json!({"token": revoked}));
    let first_page = get(
        &format!(
            "http://127.0.0.1:{}/admin/epochs?since=0&format=2",
            s.server.admin_port
        ),
        &[("authorization", &format!("Bearer {EPOCHS_TOKEN}"))],
    );
    let first_page: Value = serde_json::from_str(&first_page.body).expect("json");
    assert_eq!(first_page["more"], true);
    assert!(first_page["tokens"].as_array().expect("rows").len() <= 100);
    let fresh = Envoy::start_rendered(&render_template_full(
        "decision-cache.template.yaml",
        &plugin,
        s.idp.port,
        s.echo.port,
        s.server.grpc_port,
        s.server.admin_port,
    ));
    let send = |token: &str| fresh.status_on_new_connection("POST", "/api/items", token);
    // Each worker reads the pages on its own; the revocations gauge is the last writer's, so
    // wait until writes pass on new connections (spread over both workers), which they do
    // only on a worker that has read every page.
    let read = eventually(Duration::from_secs(10), || {
        fresh.metric("authz_proxy_revocations") >= 251 && (0..10).all(|_| send(&bystander) == 200)
    });
    assert!(
        read,
        "{}\n{}",
        fresh.stats_matching("revocations"),
        fresh.stats_matching("feed_polls")
    );
    for _ in 0..10 {
        assert_eq!(send(&revoked), 401);
        assert_eq!(send(&bystander), 200, "writes pass once every page is read");
    }
}
