//! Revocation published by the IdP as a Token Status List (draft-ietf-oauth-status-list), end
//! to end through the real Envoy (two workers), the real `.wasm` and the real server: the dev
//! IdP serves a signed list every JWT it mints names an entry of; the server fetches and
//! verifies it and publishes set entries through the change feed. A token the IdP revokes in
//! its list is refused on a read and a write the filter decides from the JWT, and on a
//! privileged route the server decides, within one refresh plus the push. A list with a bad
//! signature or another issuer is refused and logged (the last good one stays); while no
//! good list can be had, a privileged route fails closed and a local read keeps what it has.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

const REFRESH_SECONDS: u64 = 1;
/// The privileged tier's window in these tests: how old a list it still takes.
const PRIVILEGED_STALENESS_MS: u64 = 2_000;

fn list_uri() -> String {
    "http://127.0.0.1:{IDP_PORT}/statuslists/1".to_owned()
}

fn server_extra() -> String {
    format!(
        "token:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  discovery: false\n  jwks_uri: http://127.0.0.1:{{IDP_PORT}}/.well-known/jwks.json\nstatus_lists:\n  uris: [\"{}\"]\n  refresh_seconds: {REFRESH_SECONDS}\ntiers:\n  privileged: {{max_staleness_ms: {PRIVILEGED_STALENESS_MS}}}\n",
        list_uri()
    )
}

fn plugin() -> Value {
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["status_lists"] = json!({"uris": [list_uri()]});
    plugin
}

fn start() -> CacheStack {
    CacheStack::start_with_idp(&plugin(), &server_extra(), &["--status-list"])
}

/// Statuses of a read, a write (both decided by the filter from the JWT) and a privileged
/// route (decided by the server), each on a new connection.
fn statuses(s: &CacheStack, token: &str) -> [u16; 3] {
    [
        s.envoy.status_on_new_connection("GET", "/api/items", token),
        s.envoy
            .status_on_new_connection("POST", "/api/items", token),
        s.envoy
            .status_on_new_connection("GET", "/admin/users", token),
    ]
}

fn mint(s: &CacheStack, sub: &str) -> String {
    s.idp
        .mint(json!({"sub": sub, "scope": "read write admin", "ttl": 600, "claims": {}}))
}

#[test]
fn a_token_the_idp_revokes_in_its_list_is_refused_on_local_reads_and_writes_and_privileged_routes()
{
    let s = start();
    let token = mint(&s, "alice");
    let bystander = mint(&s, "bob");
    assert!(
        eventually(Duration::from_secs(10), || statuses(&s, &token) == [200; 3]),
        "{:?} {}",
        statuses(&s, &token),
        s.server.log_lines("status_list").len()
    );
    // The filter learns nothing from a token but what the list says: revoke it at the IdP only
    // (its introspection stays active), and every route refuses it, on both workers.
    s.idp.set_status(&token, "revoked");
    let revoked_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || (0..4)
            .all(|_| statuses(&s, &token) == [401; 3])),
        "{:?}",
        statuses(&s, &token)
    );
    let took = revoked_at.elapsed();
    eprintln!("status list revocation in force on every route after {took:?}");
    // One refresh, the fetch, the push, and this loop's own round trips.
    assert!(
        took < Duration::from_millis(REFRESH_SECONDS * 1000 + 3_000),
        "{took:?}"
    );
    assert_eq!(statuses(&s, &bystander), [200; 3], "only its entry is set");
    assert!(s.server.metric("authz_status_list_entries_revoked_total") >= 1.0);
    assert!(
        s.envoy
            .metric("authz_proxy_decisions_total{reason=\"revoked\"}")
            >= 2
    );

    // A suspension refuses as well.
    s.idp.set_status(&bystander, "suspended");
    assert!(eventually(Duration::from_secs(5), || statuses(
        &s, &bystander
    ) == [401; 3]));

    // A token naming a list the policy does not name is refused everywhere: nothing watches it.
    let elsewhere = s.idp.mint(json!({"sub": "carol", "scope": "read write admin", "ttl": 600,
        "claims": {"status": {"status_list": {"idx": 0, "uri": "http://127.0.0.1:1/statuslists/9"}}}}));
    assert_eq!(statuses(&s, &elsewhere), [401; 3]);
    assert!(s.server.logged("token refused: status_list_unknown"));
    // A token naming no list passes (the policy does not require one).
    let unlisted = s.idp.mint(
        json!({"sub": "dave", "scope": "read write admin", "ttl": 600,
        "status": false, "claims": {}}),
    );
    assert_eq!(statuses(&s, &unlisted), [200; 3]);
}

#[test]
fn a_list_with_a_bad_signature_or_another_issuer_is_refused_and_without_a_good_list_privileged_routes_fail_closed(
) {
    let s = start();
    let token = mint(&s, "alice");
    assert!(eventually(Duration::from_secs(10), || statuses(&s, &token) == [200; 3]));
    for (fault, logged) in [
        ("bad_signature", "bad_signature"),
        ("wrong_issuer", "wrong_issuer"),
        ("down", "fetch_failed"),
        // Validly signed but issued before the list held: a cache or a replay.
        ("stale", "older_than_held"),
    ] {
        s.idp.set_status_list_fault(fault);
        assert!(
            eventually(Duration::from_secs(5), || s
                .server
                .log_lines("status_list_refused")
                .iter()
                .any(|l| l["fields"]["error"] == logged || l["error"] == logged)),
            "{fault}: {:?}",
            s.server.log_lines("status_list_refused").last()
        );
    }
    // The IdP revokes the token in a list the server cannot take: nothing is applied.
    s.idp.set_status_list_fault("bad_signature");
    s.idp.set_status(&token, "revoked");
    // Past the privileged window with no good list: the privileged route fails closed; the
    // read the filter decides keeps what it holds (like every revocation when the server cannot
    // be reached), so a forged or foreign list revokes nothing.
    std::thread::sleep(Duration::from_millis(PRIVILEGED_STALENESS_MS + 1_000));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/admin/users", &token),
        503
    );
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/api/items", &token),
        200
    );
    assert!(s.server.metric("authz_status_list_unavailable_total") >= 1.0);
    // Many checks needing the list at once while it fails slowly: they share one fetch at a
    // time (a failing IdP is not stormed; no check waits on a queue of fetches).
    s.idp
        .fault_json(json!({"status_list": "down", "status_list_latency_ms": 400}));
    for _ in 0..5 {
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| {
                    assert_eq!(
                        s.envoy
                            .status_on_new_connection("GET", "/admin/users", &token),
                        503
                    )
                });
            }
        });
        std::thread::sleep(Duration::from_millis(600));
    }
    let most = get(&s.idp.url("/admin/stats"), &[]).json()["status_list_most_in_flight"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(most, 1, "list fetches at once");
    s.idp
        .fault_json(json!({"status_list": "bad_signature", "status_list_latency_ms": 0}));
    // A good list again: the revocation it carries is applied everywhere.
    s.idp.set_status_list_fault("ok");
    assert!(
        eventually(Duration::from_secs(10), || statuses(&s, &token) == [401; 3]),
        "{:?}",
        statuses(&s, &token)
    );
    let other = mint(&s, "bob");
    assert_eq!(statuses(&s, &other), [200; 3]);
}

/// The change feed vouches for its state only once every list was verified: before that (here,
/// a list that cannot be fetched) answers are unconfirmed, so no filter renews trust from them
/// and a filter starting now keeps its locally decided writes closed.
#[test]
fn the_feed_is_unconfirmed_until_every_list_was_verified() {
    let idp = DevIdp::start(&["--status-list"]);
    let epochs = |server: &AuthzServerProcess| -> Value {
        let reply = get(
            &format!(
                "http://127.0.0.1:{}/admin/epochs?since=0&format=2",
                server.admin_port
            ),
            &[("authorization", &format!("Bearer {EPOCHS_TOKEN}"))],
        );
        serde_json::from_str(&reply.body).expect("json")
    };
    let with_list = |uri: &str| {
        server_yaml(
            idp.port,
            &format!(
                "epochs_token: \"{EPOCHS_TOKEN}\"\n{}",
                server_extra().replace(&list_uri(), uri)
            ),
        )
    };
    let unreachable = AuthzServerProcess::start(&with_list("http://127.0.0.1:9/statuslists/1"));
    let served = AuthzServerProcess::start(&with_list(&list_uri()));
    assert!(eventually(Duration::from_secs(5), || epochs(&served)
        ["confirmed"]
        == true));
    std::thread::sleep(Duration::from_millis(REFRESH_SECONDS * 1000 + 500));
    assert_eq!(epochs(&unreachable)["confirmed"], false);
    // Nor does a Check reply vouch for it (a filter renews no cache trust from it).
    let unconfirmed = |server: &AuthzServerProcess| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut client = tests::grpc::connect(server.grpc_port).await;
            let reply = client
                .check(tests::grpc::check_request("/account/x", None, None))
                .await
                .expect("check")
                .into_inner();
            let flag = reply
                .dynamic_metadata
                .as_ref()
                .and_then(|m| m.fields.get("authz_state_unconfirmed"))
                .and_then(|v| v.kind.clone());
            format!("{flag:?}").contains("BoolValue(true)")
        })
    };
    assert!(unconfirmed(&unreachable));
    assert!(!unconfirmed(&served));
    assert!(unreachable.logged("status_list_refused"));
}
