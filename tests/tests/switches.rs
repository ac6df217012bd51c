//! Incident switches (`/admin/switches`), end to end: at the server (in this process, on a
//! clock the test moves) a cache cap and fail-closed change what a cached introspection may
//! serve, a switch past its expiry is off, and a restarted server starts with the switches
//! in force (from `switches_file`, or from Redis, where every replica reads them); through the
//! real Envoy and filter (either build) a flush, a cache cap, asynchronous verification off and
//! a key refetch reach the proxy through its change feed and do what they say.

use serde_json::{json, Value};
use std::time::Duration;
use tests::grpc::check;
use tests::in_process::{start, start_with_clock};
use tests::*;

fn admin_call(admin_port: u16, method: &str, body: Option<Value>, bearer: Option<&str>) -> Reply {
    let authorization = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("authorization", value));
    }
    let text = body.map(|b| b.to_string());
    request(
        method,
        &format!("http://127.0.0.1:{admin_port}/admin/switches"),
        &headers,
        text.as_deref(),
    )
}

/// Sets a switch at the server whose admin port is `admin_port`; its answer.
fn switch(admin_port: u16, body: Value) -> Value {
    let reply = admin_call(admin_port, "POST", Some(body.clone()), Some(ADMIN_TOKEN));
    assert_eq!(reply.status, 200, "{body}: {}", reply.body);
    reply.json()
}

fn switches(admin_port: u16) -> Value {
    let reply = admin_call(admin_port, "GET", None, Some(ADMIN_TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn mint_opaque(idp: &DevIdp, sub: &str) -> String {
    idp.mint(json!({"sub": sub, "scope": "read", "opaque": true}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_server_a_cap_bounds_cached_answers_and_fail_closed_ends_stale_if_error() {
    let idp = DevIdp::start(&[]);
    let clock = ext_authz_server::clock::ManualClock::new();
    let server = start_with_clock(
        &server_yaml(idp.port, "circuit_breaker: {failure_threshold: 1000}\n"),
        clock.clone(),
    )
    .await;
    let port = server.admin_port;
    let mut client = server.client.clone();
    let token = mint_opaque(&idp, "alice");
    let calls = || idp.stat("introspection_calls");
    assert_eq!(check(&mut client, "/account/me", Some(&token)).await.0, 200);

    // Authenticated: 60 s fresh, then 300 s more while the IdP fails.
    clock.advance_ms(61_000);
    idp.set_introspection("error", 0);
    assert_eq!(
        check(&mut client, "/account/me", Some(&token)).await.0,
        200,
        "stale-if-error serves the cached answer"
    );
    switch(
        port,
        json!({"switch": "fail_closed", "tier": "authenticated", "on": true, "for_seconds": 30, "by": "oncall"}),
    );
    let (status, headers) = check(&mut client, "/account/me", Some(&token)).await;
    assert_eq!(status, 503, "fail closed: nothing stale");
    assert!(headers.contains_key("retry-after"));
    let state = switches(port);
    assert_eq!(state["active"][0]["switch"], "fail_closed", "{state}");
    assert_eq!(state["changes"][0]["change"]["by"], "oncall");
    assert_eq!(
        server_metric(
            port,
            "authz_switch_active{switch=\"fail_closed\",tier=\"authenticated\"}"
        ),
        1.0
    );
    // Past its expiry the switch is off by itself.
    clock.advance_ms(30_000);
    assert_eq!(check(&mut client, "/account/me", Some(&token)).await.0, 200);
    assert!(switches(port)["active"]
        .as_array()
        .is_some_and(Vec::is_empty));
    assert_eq!(
        server_metric(
            port,
            "authz_switch_active{switch=\"fail_closed\",tier=\"authenticated\"}"
        ),
        0.0
    );

    // A cap: a cached answer older than it is not used, for freshness or on error.
    idp.set_introspection("ok", 0);
    let fresh = mint_opaque(&idp, "bob");
    assert_eq!(check(&mut client, "/account/me", Some(&fresh)).await.0, 200);
    let before = calls();
    clock.advance_ms(2_000);
    assert_eq!(check(&mut client, "/account/me", Some(&fresh)).await.0, 200);
    assert_eq!(calls(), before, "2 s old: cached");
    switch(
        port,
        json!({"switch": "cache_max", "tier": "authenticated", "max_ms": 1000, "by": "oncall"}),
    );
    assert_eq!(check(&mut client, "/account/me", Some(&fresh)).await.0, 200);
    assert_eq!(calls(), before + 1, "past the cap: asked again");
    clock.advance_ms(1_500);
    idp.set_introspection("error", 0);
    assert_eq!(
        check(&mut client, "/account/me", Some(&fresh)).await.0,
        503,
        "no stale answer older than the cap"
    );
    switch(
        port,
        json!({"switch": "cache_max", "tier": "authenticated", "on": false, "by": "oncall"}),
    );
    assert_eq!(check(&mut client, "/account/me", Some(&fresh)).await.0, 200);
    assert_eq!(
        server_metric(
            port,
            "authz_switch_changes_total{switch=\"cache_max\",on=\"false\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_is_refused_without_the_admin_token_and_every_problem_is_named() {
    let idp = DevIdp::start(&[]);
    let server = start(&server_yaml(idp.port, "")).await;
    let port = server.admin_port;
    let flush = json!({"switch": "flush", "by": "oncall"});
    assert_eq!(
        admin_call(port, "POST", Some(flush.clone()), None).status,
        401
    );
    assert_eq!(
        admin_call(port, "POST", Some(flush), Some(EPOCHS_TOKEN)).status,
        401
    );
    assert_eq!(admin_call(port, "GET", None, None).status, 401);
    let refused = admin_call(
        port,
        "POST",
        Some(json!({"switch": "cache_max", "tier": "public", "for_seconds": 0})),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(refused.status, 400);
    let problems = refused.json()["problems"].clone();
    assert_eq!(problems.as_array().map(Vec::len), Some(4), "{problems}");
    assert!(switches(port)["changes"]
        .as_array()
        .is_some_and(Vec::is_empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_starts_with_the_switches_of_its_switches_file() {
    let idp = DevIdp::start(&[]);
    let scratch = Scratch::new("switches-file");
    let file = scratch.0.join("switches.json");
    let yaml = server_yaml(
        idp.port,
        &format!("switches_file: \"{}\"\n", file.display()),
    );
    let mut first = start(&yaml).await;
    switch(
        first.admin_port,
        json!({"switch": "async_verification_off", "on": true, "for_seconds": 600, "by": "oncall"}),
    );
    switch(
        first.admin_port,
        json!({"switch": "jwks_refetch", "by": "oncall"}),
    );
    // A promoted route policy too: the account route needs a scope nobody has.
    let routes = json!([
        {"name": "admin", "match": {"prefix": "/admin/"}, "tier": "privileged", "require": {"scopes": ["admin"]}},
        {"name": "account", "match": {"prefix": "/account/"}, "tier": "authenticated", "require": {"scopes": ["account"]}}
    ]);
    for body in [
        json!({"action": "start", "by": "oncall", "canary": {"per_million": 1,
            "candidate": {"id": "v2", "routes": routes, "default": {"tier": "authenticated"}}}}),
        json!({"action": "promote", "id": "v2", "by": "oncall"}),
    ] {
        let reply = request(
            "POST",
            &format!("http://127.0.0.1:{}/admin/canary", first.admin_port),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ],
            Some(&body.to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let token = mint_opaque(&idp, "alice");
    let mut client = first.client.clone();
    assert_eq!(check(&mut client, "/account/me", Some(&token)).await.0, 403);
    first.stop();
    drop(first);
    let second = start(&yaml).await;
    let mut client = second.client.clone();
    assert_eq!(
        check(&mut client, "/account/me", Some(&token)).await.0,
        403,
        "the promoted policy is enforced after a restart"
    );
    let state = switches(second.admin_port);
    assert!(
        state["switches"]["async_verification_off"]["until_ms"].as_u64() > Some(0),
        "{state}"
    );
    assert!(state["switches"]["jwks_refetch_at_ms"].as_u64() > Some(0));
    // And the feed carries them.
    let feed = get(
        &format!(
            "http://127.0.0.1:{}/admin/epochs?format=2&since=0",
            second.admin_port
        ),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .json();
    assert_eq!(feed["switches"], state["switches"], "{feed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_set_on_one_replica_reaches_the_others_and_survives_every_restart_through_redis() {
    let idp = DevIdp::start(&[]);
    let redis = RedisServer::start();
    let a = shared_server(&idp, &redis, "zone-a");
    let mut b = shared_server(&idp, &redis, "zone-b");
    let set = switch(
        a.admin_port,
        json!({"switch": "fail_closed", "tier": "standard_write", "on": true, "by": "oncall"}),
    );
    assert_eq!(set["shared"], "published", "{set}");
    let closed =
        |port: u16| switches(port)["switches"]["fail_closed"]["standard_write"].is_object();
    assert!(
        eventually(Duration::from_secs(3), || closed(b.admin_port)),
        "the other replica has it"
    );
    assert!(b.logged("switch_changed"));
    // Restarted, and past a stream trimmed of the change: read from the snapshot.
    b.kill();
    redis.command(&["XTRIM", "authz:v1:events", "MAXLEN", "0"]);
    let c = shared_server(&idp, &redis, "zone-b");
    assert!(
        eventually(Duration::from_secs(5), || closed(c.admin_port)),
        "a restarted replica starts with it"
    );
    // A newer change wins everywhere, an older one read again does not undo it.
    switch(
        c.admin_port,
        json!({"switch": "fail_closed", "tier": "standard_write", "on": false, "by": "oncall"}),
    );
    assert!(eventually(Duration::from_secs(3), || !closed(a.admin_port)));
    let d = shared_server(&idp, &redis, "zone-c");
    assert!(eventually(Duration::from_secs(5), || d.readyz() == 200));
    assert!(!closed(d.admin_port));
    // The snapshot keeps a switch's latest change: a change stamped earlier than the one it
    // holds (an outbox published late) does not replace it.
    let slot = "fail_closed:standard_write";
    // A bulk string reply: `$<length>\r\n<value>`.
    let value_of = |reply: Option<String>| {
        reply
            .and_then(|r| r.split_once("\r\n").map(|(_, v)| v.to_owned()))
            .expect("the snapshot holds the switch")
    };
    let held = value_of(redis.command(&["HGET", "authz:v1:switches", slot]));
    let later = held.replacen(
        held.split(' ').nth(1).expect("seq at change"),
        "99999999999999",
        1,
    );
    redis.command(&["HSET", "authz:v1:switches", slot, &later]);
    switch(
        d.admin_port,
        json!({"switch": "fail_closed", "tier": "standard_write", "on": true, "by": "late"}),
    );
    assert_eq!(
        value_of(redis.command(&["HGET", "authz:v1:switches", slot])),
        later,
        "an earlier change does not replace a later one"
    );
    redis.command(&["HSET", "authz:v1:switches", slot, &held]);

    // A flush reaches the shared cache too: what one replica introspected, another reads from
    // Redis until the flush, and asks the IdP after it.
    let token = mint_opaque(&idp, "alice");
    let calls = || idp.stat("introspection_calls");
    let mut to_a = tests::grpc::connect(a.grpc_port).await;
    let mut to_d = tests::grpc::connect(d.grpc_port).await;
    assert_eq!(check(&mut to_a, "/account/me", Some(&token)).await.0, 200);
    let after_a = calls();
    assert_eq!(check(&mut to_d, "/account/me", Some(&token)).await.0, 200);
    assert_eq!(calls(), after_a, "read from the shared cache");
    switch(a.admin_port, json!({"switch": "flush", "by": "oncall"}));
    let flushed = |port: u16| {
        switches(port)["switches"]["flushed_at_ms"]
            .as_u64()
            .is_some()
    };
    assert!(eventually(Duration::from_secs(3), || flushed(d.admin_port)));
    assert_eq!(check(&mut to_d, "/account/me", Some(&token)).await.0, 200);
    assert_eq!(calls(), after_a + 1, "flushed everywhere: asked again");
}

#[test]
fn a_flush_and_a_cache_cap_reach_the_filter_through_its_feed() {
    let s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let token = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "ttl": 600, "claims": {}}));
    assert!(s.privileged_decided_by_server(&token, 1) == 1);
    assert!(
        s.privileged_reused(&token),
        "answered from the filter's cache"
    );

    switch(
        s.server.admin_port,
        json!({"switch": "flush", "by": "oncall"}),
    );
    assert!(
        eventually(Duration::from_secs(3), || s
            .envoy
            .metric("authz_proxy_switch_actions_total{action=\"flush\"}")
            >= 1),
        "{}",
        s.envoy.stats_matching("switches")
    );
    assert!(
        s.privileged_decided_by_server(&token, 8) >= 1,
        "flushed: asked again"
    );

    switch(
        s.server.admin_port,
        json!({"switch": "cache_max", "tier": "privileged", "max_ms": 0, "for_seconds": 60, "by": "oncall"}),
    );
    assert!(s.switches_on(1), "{}", s.envoy.stats_matching("switches"));
    assert_eq!(
        s.privileged_decided_by_server(&token, 6),
        6,
        "no reuse under a 0 cap"
    );
    switch(
        s.server.admin_port,
        json!({"switch": "cache_max", "tier": "privileged", "on": false, "by": "oncall"}),
    );
    assert!(s.switches_on(0), "{}", s.envoy.stats_matching("switches"));
    assert!(
        s.privileged_reused(&token),
        "reused again once the cap is lifted"
    );
}

const WINDOW_MS: u64 = 1_000;

#[test]
fn with_asynchronous_verification_off_a_token_the_idp_revoked_is_refused_on_its_first_request() {
    let (plugin, server_extra) = checked_after_answer_config(WINDOW_MS);
    let s = CacheStack::start(&plugin, &server_extra);
    let revoked = |sub: &str| {
        let token = s
            .idp
            .mint(json!({"sub": sub, "scope": "read", "ttl": 600, "claims": {}}));
        s.idp.revoke(&token);
        token
    };
    let first_answer = |token: &str| s.envoy.status_on_new_connection("GET", "/news/1", token);
    assert_eq!(
        first_answer(&revoked("erin")),
        200,
        "checked after the answer: allowed, then revoked"
    );
    switch(
        s.server.admin_port,
        json!({"switch": "async_verification_off", "on": true, "for_seconds": 60, "by": "oncall"}),
    );
    assert!(s.switches_on(1), "{}", s.envoy.stats_matching("switches"));
    assert_eq!(
        first_answer(&revoked("frank")),
        401,
        "checked before the answer"
    );
    let active = s
        .idp
        .mint(json!({"sub": "gina", "scope": "read", "ttl": 600, "claims": {}}));
    assert_eq!(first_answer(&active), 200);
    switch(
        s.server.admin_port,
        json!({"switch": "async_verification_off", "on": false, "by": "oncall"}),
    );
    assert!(s.switches_on(0), "{}", s.envoy.stats_matching("switches"));
    assert_eq!(first_answer(&revoked("hank")), 200);
}

#[test]
fn a_key_refetch_retires_a_compromised_key_in_the_proxy_at_once() {
    let s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let mint = || {
        s.idp
            .mint(json!({"sub": "ivan", "scope": "read", "ttl": 600, "claims": {}}))
    };
    let old = mint();
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/api/items", &old),
        200
    );
    // The IdP drops the key; the proxy still holds it (its refresh is minutes away).
    s.idp.rotate("RS256", true);
    let new = mint();
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/api/items", &old),
        200
    );
    let fetches = s.idp.jwks_requests();
    switch(
        s.server.admin_port,
        json!({"switch": "jwks_refetch", "by": "oncall"}),
    );
    assert!(
        eventually(Duration::from_secs(3), || s.envoy.status_on_new_connection(
            "GET",
            "/api/items",
            &old
        ) == 401),
        "the retired key's token is refused"
    );
    assert!(s.idp.jwks_requests() > fetches);
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/api/items", &new),
        200
    );
    assert!(
        s.envoy
            .metric("authz_proxy_switch_actions_total{action=\"jwks_refetch\"}")
            >= 1
    );
}
