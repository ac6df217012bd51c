//! The incident switches as a worker applies them from its change feed, as specifications: a
//! flush, a cache cap, fail-closed, asynchronous verification off, a key refetch, and what a
//! worker assumes before it knows them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use authz_core::Policy;
use filter_core::{CallId, Counter, OwnedRequest, Worker};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;

mod support;
use support::{
    feed, ok_reply, remote_provider, started_with_feed, status_of, Drive, FakeHost, Idp, Store, T0,
};

fn policy() -> Policy {
    let config = json!({
        "realm": "test",
        "providers": remote_provider(),
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin"}, "tier": "privileged"},
            {"name": "news", "match": {"prefix": "/news", "methods": ["GET"]},
             "tier": "authenticated", "background_check_ms": 1000}
        ],
        "default": {"tier": "authenticated"},
        "key_wait_timeout_ms": 2000,
        "server": {"cluster": "authz", "timeout_ms": 100, "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "max_unreachable_ms": 1000}
    });
    Policy::from_json(config.to_string().as_bytes()).expect("policy")
}

fn get(path: &str, token: &str) -> OwnedRequest {
    OwnedRequest {
        method: "GET".into(),
        path: path.into(),
        authorization: Some(format!("Bearer {token}")),
        trace_id: None,
    }
}

/// A feed answer of state version `version` carrying `switches`.
fn answer(version: u64, switches: Value) -> Value {
    json!({"version": version, "policy_version": 1, "incarnation": "inc-a",
           "switches": switches})
}

/// A worker that has its keys and has read the feed's state once with `switches`; the held
/// request it sent next.
fn started(
    store: &Rc<RefCell<Store>>,
    idp: &Idp,
    switches: Value,
) -> (Worker<FakeHost>, FakeHost, CallId) {
    started_with_feed(policy(), store, idp, answer(1, switches))
}

/// Asks the server-tier route and answers the Check with an allow kept 5 s.
fn decided_by_server(w: &mut Worker<FakeHost>, id: u32, token: &str, at: u64) -> u16 {
    let (call, _) = w.request(id, get("/admin/users", token), at).check();
    status_of(&w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), at).done())
}

/// Whether the server-tier route is answered from the cache.
fn cached(w: &mut Worker<FakeHost>, id: u32, token: &str, at: u64) -> bool {
    let out = w.request(id, get("/admin/users", token), at);
    if out.checks.is_empty() {
        assert_eq!(status_of(&out.done()), 200);
        true
    } else {
        false
    }
}

#[test]
fn a_flush_drops_the_caches_once_per_flush() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host, held) = started(&store, &idp, json!({}));
    let token = idp.token("alice");
    assert_eq!(decided_by_server(&mut w, 1, &token, T0 + 1), 200);
    assert!(cached(&mut w, 2, &token, T0 + 2));
    let (held, _) = w
        .answer(
            held,
            Some(200),
            Some(feed(answer(2, json!({"flushed_at_ms": 77})))),
            T0 + 3,
        )
        .poll()
        .expect("held again");
    assert!(!cached(&mut w, 3, &token, T0 + 4), "flushed");
    assert_eq!(host.count(Counter::SwitchFlush), 1);
    // The same flush on later answers is not acted on again.
    let (call, _) = w.request(4, get("/admin/users", &token), T0 + 5).check();
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 5);
    w.answer(
        held,
        Some(200),
        Some(feed(answer(3, json!({"flushed_at_ms": 77})))),
        T0 + 6,
    );
    assert!(cached(&mut w, 5, &token, T0 + 7));
    assert_eq!(host.count(Counter::SwitchFlush), 1);
}

#[test]
fn a_cache_cap_ages_out_what_was_cached_before_it_and_bounds_what_is_cached_after() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, _, held) = started(&store, &idp, json!({}));
    let token = idp.token("alice");
    assert_eq!(decided_by_server(&mut w, 1, &token, T0 + 1), 200);
    let capped = json!({"cache_max_ms": {"privileged": {"max_ms": 100, "until_ms": T0 + 10_000}}});
    w.answer(held, Some(200), Some(feed(answer(2, capped))), T0 + 50);
    assert!(cached(&mut w, 2, &token, T0 + 100), "99 ms old");
    assert!(
        !cached(&mut w, 3, &token, T0 + 101),
        "100 ms old: past the cap"
    );
    // Stored now under the cap (the server said 5 s): reused for 100 ms only.
    let (call, _) = w.request(4, get("/admin/users", &token), T0 + 200).check();
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 200);
    assert!(cached(&mut w, 5, &token, T0 + 299));
    assert!(!cached(&mut w, 6, &token, T0 + 300));
    // Past the switch's expiry the tier's own cap rules again.
    let (call, _) = w
        .request(7, get("/admin/users", &token), T0 + 10_000)
        .check();
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 10_000);
    assert!(cached(&mut w, 8, &token, T0 + 10_150));
}

#[test]
fn a_route_checked_after_the_answer_is_checked_before_it_while_async_verification_is_off() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    // Before its first answer a worker knows no switches: checked first.
    let host = FakeHost::sharing(&store);
    let mut fresh = Worker::new(policy(), host, [1, 2]);
    let out = fresh.request(1, get("/news/1", &token), T0);
    let (_, order) = out.check();
    assert!(order.as_after_answer, "asked as a check after the answer");

    let off = json!({"async_verification_off": {"until_ms": null}});
    let (mut w, _, held) = started(&store, &idp, off);
    let (call, order) = w.request(2, get("/news/1", &token), T0 + 1).check();
    assert!(order.as_after_answer);
    assert_eq!(order.tier, authz_core::Tier::Authenticated);
    let refused = support::reply(authz_core::ext_authz_proto::CheckResponse {
        status: Some(authz_core::ext_authz_proto::RpcStatus {
            code: 7,
            message: String::new(),
        }),
        denied_response: Some(authz_core::ext_authz_proto::DeniedHttpResponse {
            status: Some(authz_core::ext_authz_proto::HttpStatus { code: 401 }),
            headers: vec![],
            body: String::new(),
        }),
        ok_response: None,
        dynamic_metadata: None,
    });
    assert_eq!(
        status_of(&w.grpc(call, 0, Some(refused), T0 + 2).done()),
        401,
        "the server's refusal decides the request"
    );
    // Switched back on: answered at once again.
    w.answer(held, Some(200), Some(feed(answer(2, json!({})))), T0 + 3);
    let out = w.request(3, get("/news/1", &token), T0 + 4);
    assert_eq!(status_of(&out.done()), 200);
}

#[test]
fn a_demanded_refetch_holds_the_keys_back_until_a_new_fetch_succeeds() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let (mut a, a_host, a_held) = started(&store, &idp, json!({}));
    let (mut b, _, b_held) = started(&store, &idp, json!({}));
    assert_eq!(
        status_of(&a.request(1, get("/x", &token), T0 + 1).done()),
        200
    );
    let refetch = json!({"jwks_refetch_at_ms": 5_000});
    a.answer(
        a_held,
        Some(200),
        Some(feed(answer(2, refetch.clone()))),
        T0 + 10,
    );
    assert_eq!(a_host.count(Counter::SwitchJwksRefetch), 1);
    // The keys held are not used: the request waits, and the refetch goes out at once.
    let out = a.request(2, get("/x", &token), T0 + 11);
    let (fetch, _) = out.waits().expect("the demanded fetch");
    // A worker that learns of it while the fetch is out holds its keys back too.
    b.answer(
        b_held,
        Some(200),
        Some(feed(answer(2, refetch.clone()))),
        T0 + 12,
    );
    assert!(
        b.request(3, get("/x", &token), T0 + 12).waits().is_none(),
        "waits for the fetch in flight"
    );
    let settled = a.answer(fetch, Some(200), Some(idp.jwks()), T0 + 20);
    assert_eq!(settled.finals.len(), 1);
    assert_eq!(status_of(&settled.finals[0]), 200);
    // The other worker uses the new keys from its next look at the store.
    let woke = b.wake(T0 + 300);
    assert!(woke.fetches.is_empty(), "met: no second fetch");
    assert_eq!(woke.finals.len(), 1, "its waiting request is decided");
    assert_eq!(
        status_of(&b.request(4, get("/x", &token), T0 + 301).done()),
        200
    );
    // A worker that starts after the refetch was met does not hold its keys back.
    let (mut c, _, _) = started(&store, &idp, refetch);
    assert_eq!(
        status_of(&c.request(5, get("/x", &token), T0 + 400).done()),
        200
    );
}

#[test]
fn a_refetch_that_fails_keeps_the_old_keys_out_and_requests_fail_closed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let (mut w, _, held) = started(&store, &idp, json!({}));
    w.answer(
        held,
        Some(200),
        Some(feed(answer(2, json!({"jwks_refetch_at_ms": 9})))),
        T0 + 10,
    );
    let (fetch, _) = w
        .request(1, get("/x", &token), T0 + 11)
        .waits()
        .expect("fetch");
    w.answer(fetch, Some(503), None, T0 + 20);
    // Still held back: a later request waits, and at the deadline it is refused.
    let out = w.request(2, get("/x", &token), T0 + 30);
    assert!(
        out.finals.is_empty(),
        "not decided with the old keys: {out:?}"
    );
    let late = w.wake(T0 + 11 + 2_001);
    assert!(late.finals.iter().all(|f| status_of(f) == 503), "{late:?}");
    assert!(!late.finals.is_empty());
}

#[test]
fn switches_that_cannot_be_read_are_counted_and_the_refusing_ones_assumed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let (mut w, host, held) = started(&store, &idp, json!({}));
    assert_eq!(
        status_of(&w.request(1, get("/news/1", &token), T0 + 1).done()),
        200
    );
    w.answer(
        held,
        Some(200),
        Some(feed(answer(2, json!({"fail_closed": {"platinum": {}}})))),
        T0 + 2,
    );
    assert_eq!(host.count(Counter::SwitchesUnreadable), 1);
    assert!(host.logged("switches"));
    let (_, order) = w.request(2, get("/news/1", &token), T0 + 3).check();
    assert!(order.as_after_answer);
}

#[test]
fn an_answer_from_a_lagging_server_does_not_roll_the_switches_back() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let off = json!({"revision": 5, "async_verification_off": {"until_ms": null}});
    let (mut w, _, held) = started(&store, &idp, off);
    let checked_first = |w: &mut Worker<FakeHost>, id: u32, at: u64| {
        !w.request(id, get("/news/1", &token), at).checks.is_empty()
    };
    assert!(checked_first(&mut w, 1, T0 + 1));
    // A replica that has not read the change yet (a lower revision), then one older than
    // switches (no member): neither undoes it.
    let (held, _) = w
        .answer(
            held,
            Some(200),
            Some(feed(answer(2, json!({"revision": 3})))),
            T0 + 2,
        )
        .poll()
        .expect("held again");
    assert!(checked_first(&mut w, 2, T0 + 3));
    let old_server = json!({"version": 3, "policy_version": 1, "incarnation": "inc-a"});
    let (held, _) = w
        .answer(held, Some(200), Some(feed(old_server)), T0 + 4)
        .poll()
        .expect("held again");
    assert!(checked_first(&mut w, 3, T0 + 5));
    // The change that lifts it (a higher revision) does.
    w.answer(
        held,
        Some(200),
        Some(feed(answer(4, json!({"revision": 6})))),
        T0 + 6,
    );
    assert!(!checked_first(&mut w, 4, T0 + 7));
}

#[test]
fn a_new_server_state_is_read_whatever_its_revisions() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let off = json!({"revision": 50, "async_verification_off": {"until_ms": null}});
    let (mut w, _, held) = started(&store, &idp, off);
    // The server restarted without shared state: a new incarnation, revisions from 0.
    let restarted = json!({"version": 1, "policy_version": 1, "incarnation": "inc-b",
                           "switches": {"revision": 2}});
    let (again, _) = w
        .answer(held, Some(200), Some(feed(restarted.clone())), T0 + 1)
        .poll()
        .expect("read again from 0");
    w.answer(again, Some(200), Some(feed(restarted)), T0 + 2);
    assert_eq!(
        status_of(&w.request(1, get("/news/1", &token), T0 + 3).done()),
        200,
        "the new state's switches are in force"
    );
}

#[test]
fn a_worker_that_has_not_read_the_switch_yet_holds_its_keys_back_once_it_sees_the_demand() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let (mut a, _, a_held) = started(&store, &idp, json!({}));
    let (mut b, _, _) = started(&store, &idp, json!({}));
    let refetch = json!({"jwks_refetch_at_ms": 5_000});
    a.answer(a_held, Some(200), Some(feed(answer(2, refetch))), T0 + 10);
    // B's feed has not brought the switch; its next look at the shared record does.
    b.wake(T0 + 300);
    let out = b.request(1, get("/x", &token), T0 + 301);
    assert!(
        out.finals.is_empty(),
        "not verified with the old keys: {out:?}"
    );
}

#[test]
fn switches_are_dropped_once_the_servers_have_had_none_for_a_minute() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let token = idp.token("alice");
    let off = json!({"revision": 5, "async_verification_off": {"until_ms": null}});
    let (mut w, _, held) = started(&store, &idp, off);
    let without =
        |version: u64| json!({"version": version, "policy_version": 1, "incarnation": "inc-a"});
    let (held, _) = w
        .answer(held, Some(200), Some(feed(without(2))), T0 + 10)
        .poll()
        .expect("held again");
    assert!(!w
        .request(1, get("/news/1", &token), T0 + 11)
        .checks
        .is_empty());
    let later = T0 + 10 + filter_core::ABSENT_SWITCHES_DROPPED_AFTER_MS;
    w.answer(held, Some(200), Some(feed(without(3))), later);
    assert_eq!(
        status_of(&w.request(2, get("/news/1", &token), later + 1).done()),
        200,
        "rolled back: the held switches are gone"
    );
}
