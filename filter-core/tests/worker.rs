//! The filter's protocol rules as specifications, on the host, without Envoy: workers of one
//! proxy sharing a store (with Envoy's compare-and-swap semantics), a clock advanced by hand,
//! and every answer a JWKS host, the ext_authz server or its epochs feed can give.

// Test helpers fail loudly; the crate's no-panic lints are for the code under test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use authz_core::ext_authz_proto::{
    CacheDirective, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpStatus,
    OkHttpResponse, RpcStatus,
};
use authz_core::{Policy, Tier};
use filter_core::{
    CallId, CallOutcome, CheckPurpose, Counter, FinalAction, Gauge, Histogram, LogLevel,
    OwnedRequest, PollOrder, Stage, Worker,
};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;

mod support;
use support::{
    feed, ok_reply, ok_reply_with, reply, status_of, Drive, FakeHost, Idp, Store, ISSUER, T0,
};

fn policy() -> Policy {
    let config = json!({
        "realm": "test",
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks",
                                           "min_refetch_interval_seconds": 1,
                                           "refresh_interval_seconds": 300,
                                           "timeout_ms": 1000}}}],
        "routes": [
            {"name": "health", "match": {"exact": "/healthz"}, "tier": "public"},
            {"name": "admin", "match": {"prefix": "/admin"}, "tier": "privileged"}
        ],
        "default": {"tier": "authenticated"},
        "key_wait_timeout_ms": 2000,
        "server": {"cluster": "authz", "timeout_ms": 100, "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "max_unreachable_ms": 1000}
    });
    match Policy::from_json(config.to_string().as_bytes()) {
        Ok(policy) => policy,
        Err(e) => panic!("test policy refused: {e:?}"),
    }
}

fn worker(store: &Rc<RefCell<Store>>) -> (Worker<FakeHost>, FakeHost) {
    let host = FakeHost::sharing(store);
    (Worker::new(policy(), host.clone(), [1, 2]), host)
}

/// Denials for `reason`, whatever the tier.
fn denials(host: &FakeHost, reason: &'static str) -> u64 {
    Tier::ALL
        .iter()
        .map(|tier| {
            host.count(Counter::Decision {
                tier: *tier,
                denied: Some(reason),
            })
        })
        .sum()
}

fn get(path: &str, token: Option<&str>) -> OwnedRequest {
    OwnedRequest {
        method: "GET".into(),
        path: path.into(),
        authorization: token.map(|t| format!("Bearer {t}")),
        trace_id: None,
    }
}

#[test]
fn two_workers_contend_for_one_fetch_and_both_get_the_keys() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut a, _) = worker(&store);
    let (mut b, b_host) = worker(&store);
    let token = idp.token("alice");

    let (fetch, _) = a
        .request(10, get("/things", Some(&token)), T0)
        .waits()
        .expect("the first worker wins the lease");
    // The second worker sees the lease in flight: it waits without fetching.
    assert!(b
        .request(20, get("/things", Some(&token)), T0)
        .waits()
        .is_none());
    assert!(
        b.wake(T0 + 10).fetches.is_empty(),
        "no second fetch while leased"
    );

    let finals = a.answer(fetch, Some(200), Some(idp.jwks()), T0 + 50).finals;
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].context_id, status_of(&finals[0])), (10, 200));
    // The other worker reads what the others stored at most once a tick (it did at +10), so
    // it picks the stored keys up at +260, without fetching: a wake-up before that (for a
    // deadline, say) does not read them.
    assert_eq!(b.poll_timeout(), Some(T0 + 260));
    assert!(b.wake(T0 + 250).is_empty());
    let woke = b.wake(T0 + 260);
    assert!(woke.fetches.is_empty());
    assert_eq!(woke.finals.len(), 1);
    assert_eq!(
        (woke.finals[0].context_id, status_of(&woke.finals[0])),
        (20, 200)
    );
    assert_eq!(b_host.count(Counter::JwksFetchOk), 0);
    assert_eq!(b_host.count(Counter::WaitedForKeys), 1);
}

#[test]
fn a_fetch_whose_request_went_away_is_dispatched_again_and_serves_the_others() {
    let store = Rc::new(RefCell::new(Store::default()));
    let old = Idp::new("k1");
    let rotated = Idp::new("k2");
    let (mut a, _) = worker(&store);
    let (fetch, _) = a
        .request(1, get("/x", Some(&old.token("a"))), T0)
        .waits()
        .expect("lease");
    a.answer(fetch, Some(200), Some(old.jwks()), T0 + 10);

    // Keys rotate: a request with the new kid makes a fetch, another waits on it.
    let token = rotated.token("b");
    let (fetch, _) = a
        .request(10, get("/x", Some(&token)), T0 + 100)
        .waits()
        .expect("lease");
    assert!(a
        .request(11, get("/x", Some(&token)), T0 + 101)
        .waits()
        .is_none());
    // The request that made the fetch ends: its answer can no longer arrive (the host says
    // so). No scheduled fetch is due, but the worker fetches again at once for the one still
    // waiting, and a late answer to the abandoned call counts for nothing.
    assert!(a.ended(10, T0 + 150).is_empty());
    assert!(a.lost(fetch, CallOutcome::Abandoned, T0 + 150).is_empty());
    let woke = a.wake(T0 + 200);
    assert_eq!(woke.fetches.len(), 1, "fetched again on the next wake-up");
    assert!(a
        .answer(fetch, Some(200), Some(rotated.jwks()), T0 + 210)
        .is_empty());
    let (again, _) = woke.fetches[0].clone();
    let finals = a
        .answer(again, Some(200), Some(rotated.jwks()), T0 + 250)
        .finals;
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].context_id, status_of(&finals[0])), (11, 200));
}

#[test]
fn waiting_requests_end_at_their_deadline_and_a_failed_fetch_keeps_them_closed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut a, _) = worker(&store);
    let token = idp.token("alice");
    let (fetch, _) = a
        .request(10, get("/things", Some(&token)), T0)
        .waits()
        .expect("lease");
    // Nothing for 1.9 s: still waiting.
    assert!(a.wake(T0 + 1_900).finals.is_empty());
    // At the 2 s deadline: fail closed (no keys at all: 503, not the client's fault).
    let finals = a.wake(T0 + 2_000).finals;
    assert_eq!(finals.len(), 1);
    assert_eq!(status_of(&finals[0]), 503);
    // A late failure answer decides nothing and leaves no keys: the next request waits too
    // (`waits` fails on a decision).
    assert!(a
        .answer(fetch, Some(500), Some(b"oops".to_vec()), T0 + 2_100)
        .finals
        .is_empty());
    let _next = a
        .request(12, get("/things", Some(&token)), T0 + 2_200)
        .waits();
}

#[test]
fn unknown_kids_draw_on_a_small_refetch_budget_so_junk_does_not_starve_a_rotation() {
    let store = Rc::new(RefCell::new(Store::default()));
    let old = Idp::new("k1");
    let junk = Idp::new("k2");
    let rotated = Idp::new("k3");
    let more_junk = Idp::new("k4");
    let flood = Idp::new("k5");
    let (mut a, host) = worker(&store);
    let (fetch, _) = a
        .request(1, get("/x", Some(&old.token("a"))), T0)
        .waits()
        .expect("lease");
    a.answer(fetch, Some(200), Some(old.jwks()), T0 + 10);
    // A kid the keys lack: one fetch.
    let (fetch, _) = a
        .request(2, get("/x", Some(&junk.token("b"))), T0 + 20)
        .waits()
        .expect("an unknown kid fetches");
    let finals = a.answer(fetch, Some(200), Some(old.jwks()), T0 + 30).finals;
    assert_eq!(status_of(&finals[0]), 401, "still unknown after the fetch");
    // That kid is proven absent: refused at once, without asking for a refetch.
    let again = a
        .request(3, get("/x", Some(&junk.token("c"))), T0 + 40)
        .done();
    assert_eq!(status_of(&again), 401);
    assert_eq!(host.count(Counter::UnknownKidRateLimited), 0);
    // A rotation right after the junk: its new kid is fetched at once, and its token passes.
    let rotated_token = rotated.token("d");
    let (fetch, _) = a
        .request(4, get("/x", Some(&rotated_token)), T0 + 50)
        .waits()
        .expect("the budget still has room");
    let both = dev_keys::jwks(&[&old.key, &rotated.key])
        .to_string()
        .into_bytes();
    let finals = a
        .answer(fetch, Some(200), Some(both.clone()), T0 + 60)
        .finals;
    assert_eq!(status_of(&finals[0]), 200);
    // The third and last of the burst.
    let (fetch, _) = a
        .request(5, get("/x", Some(&more_junk.token("e"))), T0 + 70)
        .waits()
        .expect("third");
    a.answer(fetch, Some(200), Some(both), T0 + 80);
    // Spent: a kid nobody has looked for yet is "try again" (503 + Retry-After), no fetch.
    let later = a
        .request(6, get("/x", Some(&flood.token("f"))), T0 + 90)
        .done();
    assert_eq!(status_of(&later), 503);
    assert_eq!(host.count(Counter::UnknownKidRateLimited), 1);
    assert_eq!(host.count(Counter::JwksFetchUnknownKid), 3);
    // One more per interval (1 s).
    let order = a
        .request(7, get("/x", Some(&flood.token("g"))), T0 + 1_100)
        .waits();
    assert!(order.is_some(), "refilled");
}

#[test]
fn a_key_rotated_behind_the_same_kid_is_refetched_and_the_retired_key_refused_at_once() {
    let store = Rc::new(RefCell::new(Store::default()));
    let retired = Idp::new("k1");
    let current = Idp::new("k1");
    let (mut a, host) = worker(&store);
    let old_token = retired.token("a");
    let (fetch, _) = a
        .request(1, get("/x", Some(&old_token)), T0)
        .waits()
        .expect("lease");
    a.answer(fetch, Some(200), Some(retired.jwks()), T0 + 10);
    // The retired key's token is allowed, and its verification is now cached.
    let allowed = a.request(2, get("/x", Some(&old_token)), T0 + 20).done();
    assert_eq!(status_of(&allowed), 200);

    // The IdP restarts with a new key under the same kid. Its tokens fail the loaded key: one
    // refetch (rate-limited like an unknown kid), then they pass.
    let new_token = current.token("b");
    let (fetch, _) = a
        .request(3, get("/x", Some(&new_token)), T0 + 30)
        .waits()
        .expect("a signature the loaded key for its kid rejects refetches");
    let finals = a
        .answer(fetch, Some(200), Some(current.jwks()), T0 + 40)
        .finals;
    assert_eq!((finals[0].context_id, status_of(&finals[0])), (3, 200));
    // The refetched set no longer holds the retired key: its token is refused at once,
    // although its verification was cached.
    let refused = a.request(4, get("/x", Some(&old_token)), T0 + 50).done();
    assert_eq!(status_of(&refused), 401);
    // Forged signatures cannot turn into a fetch flood: within the interval, denied at once.
    let forged = dev_keys::with_flipped_signature(&new_token);
    let denied = a.request(5, get("/x", Some(&forged)), T0 + 60).done();
    assert_eq!(status_of(&denied), 401);
    assert_eq!(host.count(Counter::JwksFetchUnknownKid), 1);
    assert_eq!(host.count(Counter::UnknownKidRateLimited), 2);
}

#[test]
fn a_verification_made_outside_serves_its_token_under_the_same_keys_only() {
    let store = Rc::new(RefCell::new(Store::default()));
    let retired = Idp::new("k1");
    let current = Idp::new("k1");
    let (mut a, host) = worker(&store);
    let (fetch, _) = a
        .request(1, get("/x", Some(&retired.token("a"))), T0)
        .waits()
        .expect("lease");
    a.answer(fetch, Some(200), Some(retired.jwks()), T0 + 10);
    let outside_sample = |micros: u64| {
        host.samples
            .borrow()
            .contains(&(Histogram::Stage(Stage::JwtVerify), micros))
    };
    let at_us = |ms: u64| ms * 1000;

    // Made outside, offered, used: the host's timing is the one recorded.
    let token = retired.token("b");
    let job = a
        .verification_outside(&get("/x", Some(&token)), at_us(T0 + 20))
        .expect("not cached: to verify");
    a.offer_verified(job.run(), Some(777));
    assert_eq!(
        status_of(&a.request(2, get("/x", Some(&token)), T0 + 20).done()),
        200
    );
    assert!(outside_sample(777));
    // Now cached: nothing to verify outside; nor for a public route or one the server decides.
    assert!(a
        .verification_outside(&get("/x", Some(&token)), at_us(T0 + 21))
        .is_none());
    assert!(a
        .verification_outside(&get("/healthz", Some(&retired.token("c"))), at_us(T0 + 21))
        .is_none());
    assert!(a
        .verification_outside(&get("/admin/x", Some(&retired.token("c"))), at_us(T0 + 21))
        .is_none());

    // Offered for another token: not used (the worker verifies its own).
    let other = retired.token("d");
    let job = a
        .verification_outside(&get("/x", Some(&retired.token("e"))), at_us(T0 + 22))
        .expect("to verify");
    a.offer_verified(job.run(), Some(778));
    assert_eq!(
        status_of(&a.request(3, get("/x", Some(&other)), T0 + 22).done()),
        200
    );
    assert!(!outside_sample(778));

    // Made under keys that changed before it was offered: not used. The IdP rotated its key
    // under the same kid; the retired key's token is refused, whatever was verified outside.
    let stale = retired.token("f");
    let job = a
        .verification_outside(&get("/x", Some(&stale)), at_us(T0 + 30))
        .expect("to verify");
    let verified = job.run();
    let (fetch, _) = a
        .request(4, get("/x", Some(&current.token("g"))), T0 + 31)
        .waits()
        .expect("a signature the loaded key rejects refetches");
    a.answer(fetch, Some(200), Some(current.jwks()), T0 + 32);
    a.offer_verified(verified, Some(779));
    assert_eq!(
        status_of(&a.request(5, get("/x", Some(&stale)), T0 + 33).done()),
        401
    );
    assert!(!outside_sample(779));

    // Made in another second than the request's: not used.
    let late = current.token("h");
    let job = a
        .verification_outside(&get("/x", Some(&late)), at_us(T0 + 40))
        .expect("to verify");
    a.offer_verified(job.run(), Some(780));
    assert_eq!(
        status_of(&a.request(6, get("/x", Some(&late)), T0 + 1_040).done()),
        200
    );
    assert!(!outside_sample(780));
    // And an offer serves only the event right after it.
    let job = a
        .verification_outside(&get("/x", Some(&current.token("i"))), at_us(T0 + 1_050))
        .expect("to verify");
    a.offer_verified(job.run(), Some(781));
    a.wake(T0 + 1_050);
    a.request(7, get("/x", Some(&current.token("i"))), T0 + 1_050)
        .done();
    assert!(!outside_sample(781));
}

fn discovery_worker(store: &Rc<RefCell<Store>>) -> (Worker<FakeHost>, FakeHost) {
    let config = json!({
        "realm": "test",
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "discovery": true,
                                           "min_refetch_interval_seconds": 1,
                                           "timeout_ms": 1000}}}],
        "routes": [],
        "default": {"tier": "authenticated"},
        "key_wait_timeout_ms": 2000
    });
    let policy = Policy::from_json(config.to_string().as_bytes()).expect("policy");
    let host = FakeHost::sharing(store);
    (Worker::new(policy, host.clone(), [1, 2]), host)
}

#[test]
fn discovery_reads_the_metadata_then_the_keys_it_names() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut a, host) = discovery_worker(&store);
    let token = idp.token("alice");
    let (fetch, order) = a
        .request(1, get("/x", Some(&token)), T0)
        .waits()
        .expect("lease");
    assert_eq!(order.stage, filter_core::FetchStage::Metadata);
    assert_eq!(
        (order.authority.as_str(), order.path.as_str()),
        ("idp.test", "/.well-known/openid-configuration")
    );
    let metadata = json!({"issuer": ISSUER, "jwks_uri": "https://idp.test/oauth/keys"});
    let answered = a.answer(
        fetch,
        Some(200),
        Some(metadata.to_string().into_bytes()),
        T0 + 5,
    );
    assert!(answered.finals.is_empty());
    // The keys fetch that follows comes out of the same answer.
    let follow_ups = answered.fetches;
    assert_eq!(follow_ups.len(), 1);
    assert_eq!(follow_ups[0].1.stage, filter_core::FetchStage::Keys);
    assert_eq!(follow_ups[0].1.path, "/oauth/keys");
    let finals = a
        .answer(follow_ups[0].0, Some(200), Some(idp.jwks()), T0 + 10)
        .finals;
    assert_eq!((finals[0].context_id, status_of(&finals[0])), (1, 200));

    // A token the keys fail refetches the keys where the metadata said, without rereading it.
    let rotated = Idp::new("k2");
    let (_, order) = a
        .request(3, get("/x", Some(&rotated.token("b"))), T0 + 2_000)
        .waits()
        .expect("refetch");
    assert_eq!(order.stage, filter_core::FetchStage::Keys);
    assert_eq!(order.path, "/oauth/keys");
    assert_eq!(host.count(Counter::JwksFetchFailed), 0);
}

#[test]
fn discovery_refuses_metadata_of_another_issuer_or_keys_on_another_host() {
    for metadata in [
        json!({"issuer": "https://evil.test", "jwks_uri": "https://idp.test/keys"}),
        json!({"issuer": ISSUER, "jwks_uri": "https://evil.test/keys"}),
        json!({"issuer": ISSUER}),
    ] {
        let store = Rc::new(RefCell::new(Store::default()));
        let (mut a, host) = discovery_worker(&store);
        let token = Idp::new("k1").token("alice");
        let (fetch, _) = a
            .request(1, get("/x", Some(&token)), T0)
            .waits()
            .expect("lease");
        let answered = a.answer(
            fetch,
            Some(200),
            Some(metadata.to_string().into_bytes()),
            T0 + 5,
        );
        assert!(answered.fetches.is_empty(), "{metadata}");
        assert_eq!(host.count(Counter::JwksFetchFailed), 1);
        assert!(host.logged("metadata for https://idp.test"), "{metadata}");
        // No keys: the waiting request fails closed at its deadline.
        let finals = a.wake(T0 + 2_000).finals;
        assert_eq!(status_of(&finals[0]), 503, "{metadata}");
    }
}

/// A worker with an epochs feed that has answered once (so cached decisions are trusted), and
/// the held feed request that answer sent at once (still out).
fn polled_worker(store: &Rc<RefCell<Store>>, now: u64) -> (Worker<FakeHost>, FakeHost, CallId) {
    let (mut w, host) = worker(store);
    let (poll, order) = w.wake(now).poll().expect("a poll is due");
    // The first read is answered at once (not held): writes fail closed until it is read.
    assert_eq!(order.path, "/admin/epochs?since=0&format=2");
    assert_eq!(order.bearer, "Bearer test-epochs-token-4f2a9c7e");
    let (held, _) = w
        .answer(poll, Some(200), Some(epochs(1, 1, "inc-a", &[])), now)
        .poll()
        .expect("the state is read: a held request goes out at once");
    (w, host, held)
}

/// The policy version a worker enforces, which its Check calls are made and cached under (its
/// gauge: set whenever the version changes).
fn policy_version(host: &FakeHost) -> Option<u64> {
    host.gauges.borrow().get(&Gauge::PolicyVersion).copied()
}

fn epochs(version: u64, policy_version: u64, incarnation: &str, subjects: &[&str]) -> Vec<u8> {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|s| json!([s, T0 - 1_000, 1, T0 - 1_000]))
        .collect();
    feed(
        json!({"version": version, "policy_version": policy_version, "subjects": subjects,
                "incarnation": incarnation}),
    )
}

/// The feed answers the worker's request `poll` with `fields` (format 2) at `at`: the next
/// request, when it is due at once.
fn feed_answer(
    w: &mut Worker<FakeHost>,
    poll: CallId,
    fields: Value,
    at: u64,
) -> Option<(CallId, PollOrder)> {
    w.answer(poll, Some(200), Some(feed(fields)), at).poll()
}

#[test]
fn every_check_reply_shape_maps_to_one_action() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, _) = polled_worker(&store, T0);
    let request = get("/admin/users", Some("opaque-token-1"));
    let denied = |code: i32, http: Option<i32>| {
        reply(CheckResponse {
            status: Some(RpcStatus {
                code,
                message: String::new(),
            }),
            denied_response: Some(DeniedHttpResponse {
                status: http.map(|code| HttpStatus { code }),
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "WWW-Authenticate".into(),
                        value: "Bearer".into(),
                    }),
                    append_action: 0,
                }],
                body: "{\"error\":\"x\"}".into(),
            }),
            ok_response: None,
            dynamic_metadata: None,
        })
    };
    let mixed = reply(CheckResponse {
        status: Some(RpcStatus {
            code: 0,
            message: String::new(),
        }),
        ok_response: Some(OkHttpResponse::default()),
        denied_response: Some(DeniedHttpResponse::default()),
        dynamic_metadata: None,
    });
    let bare_denial = reply(CheckResponse {
        status: Some(RpcStatus {
            code: 7,
            message: String::new(),
        }),
        ..CheckResponse::default()
    });
    let cases: Vec<(&str, u32, Option<Vec<u8>>, u16)> = vec![
        ("allow with headers", 0, Some(ok_reply(0, 1, false)), 200),
        ("denial with its status", 0, Some(denied(7, Some(401))), 401),
        ("denial without a status", 0, Some(denied(7, None)), 403),
        (
            "denial with an impossible status",
            0,
            Some(denied(7, Some(99))),
            403,
        ),
        ("denial without an http response", 0, Some(bare_denial), 403),
        ("allow and deny at once", 0, Some(mixed), 503),
        ("not a CheckResponse", 0, Some(vec![0xff, 0xff, 0xff]), 503),
        ("an empty body", 0, None, 503),
        ("a gRPC error", 14, None, 503),
        ("a gRPC deadline", 4, Some(ok_reply(0, 1, false)), 503),
    ];
    // One Check call per shape (none of these replies is cached: the next goes out too).
    for (i, (name, grpc, body, want)) in cases.into_iter().enumerate() {
        let id = 10 + i as u32;
        let (call, _) = w.request(id, request.clone(), T0).check();
        let finals = w.grpc(call, grpc, body, T0).finals;
        assert_eq!(finals.len(), 1, "{name}");
        let result = &finals[0];
        assert_eq!(result.context_id, id, "{name}");
        assert_eq!(status_of(result), want, "{name}");
        if let FinalAction::Allow { headers, remove } = &result.action {
            assert_eq!(headers, &vec![("x-auth-subject".into(), "alice".into())]);
            assert_eq!(remove, &vec!["authorization".to_owned()]);
        }
        if let (FinalAction::Respond { headers, body, .. }, true) =
            (&result.action, name != "denial without an http response")
        {
            assert_eq!(headers, &vec![("www-authenticate".into(), "Bearer".into())]);
            assert_eq!(body, "{\"error\":\"x\"}");
        }
    }
    assert_eq!(host.count(Counter::ServerErrors), 5);
    // No token: decided locally, the server is never asked.
    let local = w.request(2, get("/admin/users", None), T0).done();
    assert_eq!(status_of(&local), 401);
}

#[test]
fn cached_server_decisions_are_trusted_only_while_polls_succeed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, held) = polled_worker(&store, T0);
    let request = get("/admin/users", Some("opaque-token-1"));
    let (call, _) = w.request(1, request.clone(), T0).check();
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0);
    let hit = w.request(2, request.clone(), T0 + 100).done();
    assert_eq!(status_of(&hit), 200);
    assert_eq!(
        host.count(Counter::CacheHit(authz_core::Tier::Privileged)),
        1
    );

    // Polls fail from now on (the held request, then one per interval); a Check reply (for
    // another token) does not renew trust while they do.
    w.answer(held, None, None, T0 + 300);
    for at in [T0 + 600, T0 + 900] {
        let (poll, _) = w.wake(at).poll().expect("polled every interval");
        w.answer(poll, None, None, at);
    }
    let other = get("/admin/users", Some("opaque-token-2"));
    let (other_call, _) = w.request(3, other, T0 + 950).check();
    let fresh = w
        .grpc(other_call, 0, Some(ok_reply(5_000, 1, false)), T0 + 950)
        .finals;
    assert_eq!(fresh.len(), 1);
    assert_eq!(status_of(&fresh[0]), 200);
    // Past max_unreachable_ms (1 s) after the last good poll: the cache is not used.
    let (call, _) = w.request(4, request.clone(), T0 + 1_100).check();
    assert_eq!(
        host.count(Counter::CacheUntrusted(authz_core::Tier::Privileged)),
        1
    );
    // One good poll renews trust, and the entry is served again.
    let (poll, _) = w.wake(T0 + 1_200).poll().expect("polled every interval");
    w.answer(
        poll,
        Some(200),
        Some(epochs(1, 1, "inc-a", &[])),
        T0 + 1_200,
    );
    assert_eq!(
        status_of(&w.request(5, request.clone(), T0 + 1_250).done()),
        200
    );
    // A reply whose server cannot confirm its state does not renew trust either.
    w.grpc(call, 0, Some(ok_reply(5_000, 1, true)), T0 + 2_000);
    w.request(6, request, T0 + 2_300).check();
    assert!(host.logged("epochs poll failed"));
}

#[test]
fn a_restarted_server_state_drops_what_was_learned_from_the_old_one() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, held) = polled_worker(&store, T0);
    let (held, _) = w
        .answer(held, Some(200), Some(epochs(40, 6, "inc-a", &[])), T0 + 250)
        .poll()
        .expect("held for its wait: the next held request at once");
    let request = get("/admin/users", Some("opaque-token-1"));
    let (call, _) = w.request(1, request.clone(), T0 + 260).check();
    assert_eq!(policy_version(&host), Some(6));
    w.grpc(call, 0, Some(ok_reply(5_000, 6, false)), T0 + 260);
    assert_eq!(
        status_of(&w.request(2, request.clone(), T0 + 270).done()),
        200
    );

    // The server's counters restart: versions fall back, and nothing cached survives.
    let again = w
        .answer(held, Some(200), Some(epochs(2, 1, "inc-b", &[])), T0 + 500)
        .poll();
    // That answer was about the old cursor: the new counter's whole state is asked at once.
    let (again, order) = again.expect("asks the new counter from its start");
    assert!(
        order.path.starts_with("/admin/epochs?since=0&format=2"),
        "asks the new counter from its start: {}",
        order.path
    );
    let (call, _) = w.request(3, request.clone(), T0 + 510).check();
    assert_eq!(policy_version(&host), Some(1));
    assert_eq!(host.gauges.borrow().get(&Gauge::PolicyVersion), Some(&1));
    // Until it answers, that request (from 0) is the feed's only one: a wake-up sends no other.
    assert!(w.wake(T0 + 800).poll().is_none(), "the read from 0 is out");

    // A subject's epoch change purges that subject's decisions.
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 810);
    assert_eq!(
        status_of(&w.request(4, request.clone(), T0 + 820).done()),
        200
    );
    w.answer(
        again,
        Some(200),
        Some(epochs(3, 1, "inc-b", &["alice"])),
        T0 + 900,
    );
    w.request(5, request, T0 + 910).check();
}

#[test]
fn workers_merge_policy_versions_of_the_same_server_state_only() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut a, _, a_held) = polled_worker(&store, T0);
    let (mut b, b_host, _) = polled_worker(&store, T0);
    let request = get("/admin/users", Some("opaque-token-1"));
    let (call, _) = b.request(1, request.clone(), T0).check();
    b.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0);

    // A learns policy 3 of the same state and publishes it; B adopts it on its wake-up and
    // drops what it cached under policy 1.
    let (a_held, _) = a
        .answer(
            a_held,
            Some(200),
            Some(epochs(5, 3, "inc-a", &[])),
            T0 + 250,
        )
        .poll()
        .expect("held for its wait: the next held request at once");
    b.wake(T0 + 260);
    b.request(2, request.clone(), T0 + 270).check();
    assert_eq!(policy_version(&b_host), Some(3));
    assert_eq!(b_host.gauges.borrow().get(&Gauge::PolicyVersion), Some(&3));

    // A version published about another incarnation is not adopted.
    a.answer(
        a_held,
        Some(200),
        Some(epochs(1, 9, "inc-z", &[])),
        T0 + 500,
    );
    // (A publishes what it knows on its wake-up.)
    a.wake(T0 + 505);
    b.wake(T0 + 510);
    b.request(3, request, T0 + 520).check();
    assert_eq!(policy_version(&b_host), Some(3));
}

#[test]
fn replies_under_another_policy_version_flush_or_are_used_once() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, _) = polled_worker(&store, T0);
    let request = get("/admin/users", Some("opaque-token-1"));
    let (call, _) = w.request(1, request.clone(), T0).check();
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0);
    // A reply decided under a newer policy: everything cached before goes, the reply is kept
    // under the new version.
    let other = get("/admin/other", Some("opaque-token-2"));
    let (call, _) = w.request(2, other.clone(), T0 + 10).check();
    w.grpc(call, 0, Some(ok_reply(5_000, 2, false)), T0 + 10);
    assert_eq!(host.gauges.borrow().get(&Gauge::PolicyVersion), Some(&2));
    let (call, _) = w.request(3, request.clone(), T0 + 20).check();
    assert_eq!(
        policy_version(&host),
        Some(2),
        "the entry of policy 1 was flushed"
    );
    assert_eq!(status_of(&w.request(4, other, T0 + 30).done()), 200);
    // A reply decided under an older policy than enforced is used once, not kept.
    let result = w
        .grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 40)
        .finals;
    assert_eq!(result.len(), 1);
    assert_eq!(status_of(&result[0]), 200);
    w.request(5, request, T0 + 50).check();
}

/// A worker whose `/orders` writes are `standard_write` and whose feed holds at most `cap`
/// revocations, with `local_revocations` as given (`None`: the default), started as
/// [`start_feed`] does; with the held feed request out.
fn local_worker(
    store: &Rc<RefCell<Store>>,
    idp: &Idp,
    local_revocations: Option<Value>,
    cap: usize,
) -> (Worker<FakeHost>, FakeHost, (CallId, PollOrder)) {
    let host = FakeHost::sharing(store);
    let mut w = Worker::new(local_policy(local_revocations, cap), host.clone(), [1, 2]);
    let held = start_feed(&mut w, idp, T0);
    (w, host, held)
}

/// Wakes a new worker with a feed at `at` and answers what it asks for: the feed's first
/// request with the whole state (version 1 of `inc-a`), and the keys fetch the same wake-up
/// makes with `idp`'s keys (none when the keys are in the store already). The held request
/// the feed's answer sends at once (out).
fn start_feed(w: &mut Worker<FakeHost>, idp: &Idp, at: u64) -> (CallId, PollOrder) {
    let woke = w.wake(at);
    let (poll, _) = woke.poll().expect("a first poll");
    for (fetch, _) in &woke.fetches {
        w.answer(*fetch, Some(200), Some(idp.jwks()), at);
    }
    w.answer(poll, Some(200), Some(epochs(1, 1, "inc-a", &[])), at)
        .poll()
        .expect("the state is read: a held request goes out at once")
}

/// The policy of [`local_worker`].
fn local_policy(local_revocations: Option<Value>, cap: usize) -> Policy {
    let mut config = json!({
        "realm": "test",
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "routes": [{"name": "orders", "match": {"prefix": "/orders", "methods": ["POST"]},
                    "tier": "standard_write"}],
        "default": {"tier": "authenticated"},
        "server": {"cluster": "authz", "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "max_unreachable_ms": 1000, "max_revocations": cap}
    });
    if let Some(tiers) = local_revocations {
        config["server"]["local_revocations"] = tiers;
    }
    Policy::from_json(config.to_string().as_bytes()).expect("policy")
}

#[test]
fn a_new_worker_fails_writes_closed_until_it_has_read_the_whole_state_once() {
    let store = Rc::new(RefCell::new(Store::default()));
    let mut w = Worker::new(local_policy(None, 1_000), FakeHost::sharing(&store), [1, 2]);
    let idp = Idp::new("k1");
    let writer = idp.token("dave");
    assert_eq!(
        decide_local(&mut w, &idp, 1, post("/orders", &writer), T0),
        503,
        "no revocation read yet"
    );
    assert_eq!(
        decide_local(&mut w, &idp, 2, get("/x", Some(&writer)), T0),
        200
    );
    let (poll, _) = w.wake(T0 + 10).poll().expect("a first poll");
    let (poll, _) = feed_answer(
        &mut w,
        poll,
        json!({"version": 4, "policy_version": 1, "incarnation": "inc-a", "more": true,
               "confirmed": false}),
        T0 + 10,
    )
    .expect("the next page at once");
    assert_eq!(
        decide_local(&mut w, &idp, 3, post("/orders", &writer), T0 + 11),
        503,
        "a first page is not the state"
    );
    feed_answer(
        &mut w,
        poll,
        json!({"version": 9, "policy_version": 1, "incarnation": "inc-a"}),
        T0 + 20,
    );
    assert_eq!(
        decide_local(&mut w, &idp, 4, post("/orders", &writer), T0 + 21),
        200
    );
}

fn post(path: &str, token: &str) -> OwnedRequest {
    OwnedRequest {
        method: "POST".into(),
        path: path.into(),
        authorization: Some(format!("Bearer {token}")),
        trace_id: None,
    }
}

/// Decides `request` at `at_ms`, loading `idp`'s keys first if the worker waits for them.
fn decide_local(
    w: &mut Worker<FakeHost>,
    idp: &Idp,
    id: u32,
    request: OwnedRequest,
    at_ms: u64,
) -> u16 {
    let out = w.request(id, request, at_ms);
    assert!(
        out.checks.is_empty(),
        "a local route called the server: {out:?}"
    );
    if !out.finals.is_empty() {
        return status_of(&out.done());
    }
    let (fetch, _) = out.waits().expect("a keys fetch");
    let finals = w.answer(fetch, Some(200), Some(idp.jwks()), at_ms).finals;
    finals
        .first()
        .map(status_of)
        .expect("decided with the keys")
}

fn token_with(idp: &Idp, claims: Value) -> String {
    let mut all = json!({"iss": ISSUER, "aud": "api", "iat": T0 / 1000 - 10,
                         "exp": T0 / 1000 + 3600});
    for (k, v) in claims.as_object().expect("object") {
        all[k] = v.clone();
    }
    idp.key.sign(&all).expect("sign")
}

#[test]
fn local_routes_refuse_tokens_revoked_by_hash_jti_or_subject_including_cached_ones() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host, (held, _)) = local_worker(&store, &idp, None, 1_000);
    let by_hash = idp.token("alice");
    let by_jti = token_with(&idp, json!({"sub": "bob", "jti": "j-bob"}));
    let by_subject = token_with(&idp, json!({"sub": "carol"}));
    let bystander = idp.token("dave");
    for (i, t) in [&by_hash, &by_jti, &by_subject, &bystander]
        .iter()
        .enumerate()
    {
        let id = i as u32 + 1;
        assert_eq!(
            decide_local(&mut w, &idp, id, get("/items", Some(t)), T0),
            200
        );
        assert_eq!(
            decide_local(&mut w, &idp, id + 10, post("/orders", t), T0),
            200
        );
    }
    assert!(
        host.count(Counter::TokenCacheHit) > 0,
        "verifications are cached"
    );

    let digest =
        authz_core::token_hash::digest_hex(&authz_core::token_hash::token_digest(&by_hash));
    let answer = feed(json!({
        "version": 4, "policy_version": 1, "incarnation": "inc-a",
        "tokens": [[digest, (T0 / 1000 + 3600) * 1000, T0 + 100]],
        "jtis": [["j-bob", null, T0 + 100]],
        "subjects": [["carol", T0, 1, T0 + 100]],
    }));
    w.answer(held, Some(200), Some(answer), T0 + 130);
    for (i, t) in [&by_hash, &by_jti, &by_subject].iter().enumerate() {
        let id = i as u32 + 20;
        assert_eq!(
            decide_local(&mut w, &idp, id, get("/items", Some(t)), T0 + 140),
            401
        );
        assert_eq!(
            decide_local(&mut w, &idp, id + 10, post("/orders", t), T0 + 140),
            401
        );
    }
    assert_eq!(
        decide_local(&mut w, &idp, 40, get("/items", Some(&bystander)), T0 + 140),
        200
    );
    // A login after the subject's revocation passes.
    let fresh = token_with(&idp, json!({"sub": "carol", "iat": T0 / 1000 + 1}));
    assert_eq!(
        decide_local(&mut w, &idp, 41, get("/items", Some(&fresh)), T0 + 1_500),
        200
    );
    assert_eq!(denials(&host, "revoked"), 6);
    assert_eq!(host.gauges.borrow().get(&Gauge::Revocations), Some(&3));
    // The propagation lag of each change: applied 30 ms after the server learned it.
    let lags: Vec<u64> = host
        .samples
        .borrow()
        .iter()
        .filter(|(h, _)| *h == Histogram::RevocationLag)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(lags, vec![30_000, 30_000, 30_000], "µs");
    // Revocations leave when their tokens would have expired (plus the grace).
    w.wake((T0 / 1000 + 3600) * 1000 + authz_core::revocations::FORGET_GRACE_MS);
    assert_eq!(host.gauges.borrow().get(&Gauge::Revocations), Some(&2));
}

#[test]
fn a_tier_left_out_of_local_revocations_ignores_them() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, _, (held, _)) = local_worker(&store, &idp, Some(json!(["standard_write"])), 1_000);
    let token = idp.token("alice");
    feed_answer(
        &mut w,
        held,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a",
                         "subjects": [["alice", T0, 1, T0]]}),
        T0 + 10,
    );
    assert_eq!(
        decide_local(&mut w, &idp, 1, get("/items", Some(&token)), T0 + 20),
        200
    );
    assert_eq!(
        decide_local(&mut w, &idp, 2, post("/orders", &token), T0 + 20),
        401
    );
    // And with none listed, nothing local is refused.
    let (mut off, _, (held, _)) = local_worker(&store, &idp, Some(json!([])), 1_000);
    feed_answer(
        &mut off,
        held,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a",
                         "subjects": [["alice", T0, 1, T0]]}),
        T0 + 10,
    );
    assert_eq!(
        decide_local(&mut off, &idp, 3, post("/orders", &token), T0 + 20),
        200
    );
}

#[test]
fn past_the_revocation_cap_writes_fail_closed_and_reads_keep_what_is_held() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host, (held, _)) = local_worker(&store, &idp, None, 2);
    let token = idp.token("alice");
    let tokens: Vec<Value> = (1..=3u8)
        .map(|i| {
            json!([
                authz_core::token_hash::digest_hex(&[i; 32]),
                T0 + 60_000 * u64::from(i),
                T0
            ])
        })
        .collect();
    feed_answer(
        &mut w,
        held,
        json!({"version": 3, "policy_version": 1, "incarnation": "inc-a",
                         "tokens": tokens}),
        T0,
    );
    assert_eq!(host.count(Counter::RevocationsDropped), 1);
    assert_eq!(
        decide_local(&mut w, &idp, 1, get("/items", Some(&token)), T0 + 10),
        200
    );
    assert_eq!(
        decide_local(&mut w, &idp, 2, post("/orders", &token), T0 + 10),
        503
    );
    assert_eq!(denials(&host, "revocations_incomplete"), 1);
    // Once the dropped revocation's token would have expired, writes pass again.
    let later = T0 + 60_000 + authz_core::revocations::FORGET_GRACE_MS;
    assert_eq!(
        decide_local(&mut w, &idp, 3, post("/orders", &token), later),
        200
    );
}

#[test]
fn a_policy_bump_drops_cached_verifications_of_local_routes() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host, (held, _)) = local_worker(&store, &idp, None, 100);
    let token = idp.token("alice");
    assert_eq!(
        decide_local(&mut w, &idp, 1, get("/items", Some(&token)), T0),
        200
    );
    let misses = host.count(Counter::TokenCacheMiss);
    assert_eq!(
        decide_local(&mut w, &idp, 2, get("/items", Some(&token)), T0),
        200
    );
    assert_eq!(host.count(Counter::TokenCacheMiss), misses, "cached");
    feed_answer(
        &mut w,
        held,
        json!({"version": 2, "policy_version": 2, "incarnation": "inc-a",
                         "policy_changed_at_ms": T0}),
        T0 + 10,
    );
    assert_eq!(
        decide_local(&mut w, &idp, 3, get("/items", Some(&token)), T0 + 20),
        200
    );
    assert_eq!(
        host.count(Counter::TokenCacheMiss),
        misses + 1,
        "verified again"
    );
}

#[test]
fn held_requests_follow_each_other_and_a_failure_falls_back_to_polling_until_one_answers() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, (held, poll)) = local_worker(&store, &Idp::new("k1"), None, 100);
    // The first answer came back at once (it carried the whole state): the first held request
    // went out with it, and no other is sent while it is out.
    assert!(
        poll.path.contains("&wait_ms=500&incarnation=inc-a"),
        "{}",
        poll.path
    );
    assert_eq!(poll.timeout.as_millis(), 2_500);
    assert!(w.wake(T0 + 300).poll().is_none(), "one at a time");
    // A held request that answers with a change: the next one is due at once.
    let next = feed_answer(
        &mut w,
        held,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a",
                         "subjects": [["x", T0, 1, T0 + 310]]}),
        T0 + 320,
    );
    let (next, order) = next.expect("the next held request goes out at once");
    assert!(order
        .path
        .starts_with("/admin/epochs?since=2&format=2&wait_ms=500"));
    // Held for its whole wait with nothing: again at once.
    let (held, _) = w
        .answer(
            next,
            Some(200),
            Some(feed(
                json!({"version": 2, "policy_version": 1, "incarnation": "inc-a"}),
            )),
            T0 + 820,
        )
        .poll()
        .expect("again at once");
    assert_eq!(host.count(Counter::PollHeld), 2);
    assert_eq!(host.gauges.borrow().get(&Gauge::PushConnected), Some(&1));
    // While a request is held, wake-ups start none.
    assert!(w.wake(T0 + 1_300).poll().is_none());
    // It fails: the feed is polled plainly, every interval, until an answer.
    assert!(w.answer(held, None, None, T0 + 1_400).poll().is_none());
    assert_eq!(host.gauges.borrow().get(&Gauge::PushConnected), Some(&0));
    let (plain, order) = w.wake(T0 + 1_500).poll().expect("a plain poll");
    assert!(!order.path.contains("wait_ms"), "{}", order.path);
    assert_eq!(order.timeout.as_millis(), 2_000);
    // It fails too (the server is down): the next waits for the interval.
    assert!(w.answer(plain, None, None, T0 + 1_510).poll().is_none());
    assert!(
        w.wake(T0 + 1_600).poll().is_none(),
        "not before the interval"
    );
    let (plain, order) = w.wake(T0 + 1_750).poll().expect("a plain poll");
    assert!(!order.path.contains("wait_ms"), "{}", order.path);
    let back = feed_answer(
        &mut w,
        plain,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a"}),
        T0 + 1_760,
    );
    assert!(
        back.as_ref()
            .is_some_and(|(_, p)| p.path.contains("wait_ms=500")),
        "back to held requests at once"
    );
    // A server that answers held requests at once with nothing is polled at the interval.
    let (back, _) = back.unwrap();
    assert!(feed_answer(
        &mut w,
        back,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a"}),
        T0 + 1_770
    )
    .is_none());
}

#[test]
fn a_fresh_route_asks_the_server_and_keeps_its_decision_only_briefly() {
    let store = Rc::new(RefCell::new(Store::default()));
    let config = json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "routes": [
            {"name": "orders", "match": {"prefix": "/orders", "methods": ["POST"]},
             "tier": "standard_write", "fresh_cache_ms": 500},
            {"name": "notes", "match": {"prefix": "/notes"}, "tier": "standard_write"}
        ],
        "default": {"tier": "authenticated"},
        "server": {"cluster": "authz", "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "max_unreachable_ms": 5000},
        "cache": {"tier_max_ms": {"standard_write": 30000}}
    });
    let policy = Policy::from_json(config.to_string().as_bytes()).expect("policy");
    let host = FakeHost::sharing(&store);
    let mut w = Worker::new(policy, host.clone(), [1, 2]);
    let idp = Idp::new("k1");
    start_feed(&mut w, &idp, T0);
    let token = idp.token("alice");
    // The same tier without the option is decided locally.
    assert_eq!(
        decide_local(&mut w, &idp, 1, post("/notes/1", &token), T0),
        200
    );
    assert_eq!(host.count(Counter::ServerCalls), 0);
    let (call, order) = w.request(2, post("/orders/1", &token), T0).check();
    assert_eq!(order.tier, authz_core::Tier::StandardWrite);
    assert_eq!(order.purpose, CheckPurpose::Decide { context_id: 2 });
    // The server allows for 10 s; the route keeps it 500 ms (its `fresh_cache_ms`).
    let allowed = w.grpc(call, 0, Some(ok_reply(10_000, 1, false)), T0).finals;
    assert_eq!(allowed.len(), 1);
    assert_eq!(status_of(&allowed[0]), 200);
    assert_eq!(
        status_of(&w.request(3, post("/orders/1", &token), T0 + 400).done()),
        200
    );
    let (call, _) = w.request(4, post("/orders/1", &token), T0 + 600).check();
    // The server unreachable: the write fails closed, it is not decided locally.
    let failed = w.grpc(call, 14, None, T0 + 600).finals;
    assert_eq!(failed.len(), 1);
    assert_eq!(status_of(&failed[0]), 503);
}

#[test]
fn fresh_routes_are_refused_where_they_cannot_mean_anything() {
    let base = json!({
        "providers": [{"issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "routes": [
            {"name": "a", "match": {"prefix": "/a"}, "tier": "privileged", "fresh_cache_ms": 100},
            {"name": "b", "match": {"prefix": "/b"}, "tier": "standard_write", "fresh_cache_ms": 90000}
        ],
        "default": {"tier": "authenticated"}
    });
    let Err(authz_core::Error::InvalidConfig(problems)) =
        Policy::from_json(base.to_string().as_bytes())
    else {
        panic!("accepted");
    };
    let text = problems.join("\n");
    assert!(
        text.contains("routes[0].fresh_cache_ms: only authenticated and standard_write"),
        "{text}"
    );
    assert!(
        text.contains("routes[1].fresh_cache_ms: must be between 0 and 60000"),
        "{text}"
    );
    assert!(
        text.contains("routes[0].fresh_cache_ms: asks the server, so it needs \"server\""),
        "{text}"
    );
}

#[test]
fn a_feed_request_is_due_when_poll_timeout_says_so_so_an_early_wake_does_not_put_it_off_an_interval(
) {
    let store = Rc::new(RefCell::new(Store::default()));
    let config = json!({
        "providers": [{"issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "default": {"tier": "authenticated"},
        "server": {"cluster": "authz", "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "push_wait_ms": 0}
    });
    let policy = Policy::from_json(config.to_string().as_bytes()).expect("policy");
    let mut w = Worker::new(policy, FakeHost::sharing(&store), [1, 2]);
    let (first, order) = w.wake(T0).poll().expect("a first poll");
    assert!(!order.path.contains("wait_ms"), "push off: {}", order.path);
    w.answer(first, Some(200), Some(epochs(1, 1, "inc-a", &[])), T0 + 5);
    assert!(w.wake(T0 + 150).poll().is_none(), "not before the interval");
    // A wake-up 2 ms early sends nothing, but the worker names the exact time the request is
    // due (the last one's start plus the interval), and a wake-up then sends it: it is not put
    // off to a later wake-up (a doubled interval).
    assert!(w.wake(T0 + 248).poll().is_none(), "not before it is due");
    assert_eq!(w.poll_timeout(), Some(T0 + 250));
    assert!(w.wake(T0 + 250).poll().is_some());
}

/// An allow from the server decided at `change_version`.
fn ok_reply_at(ttl_ms: u64, change_version: u64) -> Vec<u8> {
    ok_reply_with(CacheDirective {
        ttl_ms,
        policy_version: 1,
        change_version,
        subject: Some("alice".into()),
        ..CacheDirective::default()
    })
}

#[test]
fn a_reply_decided_before_changes_this_worker_applied_is_not_kept_and_revoked_tokens_are_refused() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, held) = polled_worker(&store, T0);
    let revoked = get("/admin/users", Some("opaque-token-1"));
    let bystander = get("/admin/users", Some("opaque-token-2"));
    // Both Check calls go out; then the feed pushes a revocation of the first token.
    let (revoked_call, _) = w.request(1, revoked, T0).check();
    let (bystander_call, _) = w.request(2, bystander.clone(), T0).check();
    let digest = authz_core::token_hash::digest_hex(&authz_core::token_hash::revocation_digest(
        "opaque-token-1",
    ));
    feed_answer(
        &mut w,
        held,
        json!({"version": 5, "policy_version": 1, "incarnation": "inc-a",
               "tokens": [[digest, (T0 / 1000 + 3600) * 1000, T0 + 5]]}),
        T0 + 10,
    );
    // The replies were decided at change version 1, before the revocation.
    let late = w
        .grpc(revoked_call, 0, Some(ok_reply_at(5_000, 1)), T0 + 20)
        .finals;
    assert_eq!(late.len(), 1);
    assert_eq!(
        status_of(&late[0]),
        401,
        "an in-flight allow of a revoked token"
    );
    let used_once = w
        .grpc(bystander_call, 0, Some(ok_reply_at(5_000, 1)), T0 + 20)
        .finals;
    assert_eq!(used_once.len(), 1);
    assert_eq!(status_of(&used_once[0]), 200);
    // An old reply is not kept: asked again.
    let (call, _) = w.request(4, bystander.clone(), T0 + 30).check();
    // Control: a reply that saw the changes is kept.
    w.grpc(call, 0, Some(ok_reply_at(5_000, 5)), T0 + 40);
    assert_eq!(status_of(&w.request(5, bystander, T0 + 50).done()), 200);
    assert_eq!(
        host.count(Counter::CacheHit(authz_core::Tier::Privileged)),
        1
    );
}

#[test]
fn a_token_revoked_by_its_signed_part_is_refused_in_every_signature_encoding() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, _host, (held, _)) = local_worker(&store, &idp, None, 1_000);
    let token = idp.token("alice");
    let other_form = dev_keys::with_malleated_ecdsa_signature(&token).expect("ES256");
    assert_ne!(token, other_form);
    // Both forms verify: that is the hole a denylist of raw tokens leaves.
    assert_eq!(
        decide_local(&mut w, &idp, 1, get("/items", Some(&token)), T0),
        200
    );
    assert_eq!(
        decide_local(&mut w, &idp, 2, get("/items", Some(&other_form)), T0),
        200
    );
    // Revoked by its token's bytes only (`token_hash`): that form alone is refused.
    let by_bytes =
        authz_core::token_hash::digest_hex(&authz_core::token_hash::token_digest(&token));
    let (next, _) = feed_answer(
        &mut w,
        held,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a",
               "tokens": [[by_bytes, (T0 / 1000 + 3600) * 1000, T0 + 5]]}),
        T0 + 10,
    )
    .expect("a change pushed: the next held request at once");
    assert_eq!(
        decide_local(&mut w, &idp, 3, get("/items", Some(&token)), T0 + 20),
        401
    );
    assert_eq!(
        decide_local(&mut w, &idp, 4, get("/items", Some(&other_form)), T0 + 20),
        200
    );
    // Revoked as the server records `{"token": …}`: every form, on reads and writes.
    let signed =
        authz_core::token_hash::digest_hex(&authz_core::token_hash::revocation_digest(&token));
    feed_answer(
        &mut w,
        next,
        json!({"version": 3, "policy_version": 1, "incarnation": "inc-a",
               "tokens": [[signed, (T0 / 1000 + 3600) * 1000, T0 + 25]]}),
        T0 + 30,
    );
    for (i, form) in [&token, &other_form].iter().enumerate() {
        let id = 10 + i as u32 * 2;
        assert_eq!(
            decide_local(&mut w, &idp, id, get("/items", Some(form)), T0 + 40),
            401
        );
        assert_eq!(
            decide_local(&mut w, &idp, id + 1, post("/orders", form), T0 + 40),
            401
        );
    }
}

#[test]
fn a_restarted_server_state_keeps_revocations_and_writes_fail_closed_until_it_is_read_confirmed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host, (held, _)) = local_worker(&store, &idp, None, 1_000);
    let revoked = idp.token("alice");
    let bystander = idp.token("dave");
    let digest =
        authz_core::token_hash::digest_hex(&authz_core::token_hash::revocation_digest(&revoked));
    let (mut poll, _) = feed_answer(
        &mut w,
        held,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a",
               "tokens": [[digest, (T0 / 1000 + 3600) * 1000, T0 + 5]]}),
        T0 + 10,
    )
    .expect("a change pushed: the next held request at once");
    assert_eq!(
        decide_local(&mut w, &idp, 1, get("/items", Some(&revoked)), T0 + 20),
        401
    );
    // A replica with a new state answers, still resyncing: unconfirmed and empty (and a
    // `confirmed` it does not send counts as false).
    for (i, answer) in [
        json!({"format": 2, "version": 1, "policy_version": 1, "incarnation": "inc-b", "confirmed": false}),
        json!({"format": 2, "version": 1, "policy_version": 1, "incarnation": "inc-b"}),
    ]
    .into_iter()
    .enumerate()
    {
        let at = T0 + 100 + i as u64 * 100;
        let body = answer.to_string().into_bytes();
        (poll, _) = w
            .answer(poll, Some(200), Some(body), at)
            .poll()
            .expect("the new state is read on at once");
        assert_eq!(
            decide_local(&mut w, &idp, 10 + i as u32, get("/items", Some(&revoked)), at + 1),
            401,
            "a revocation survives a restarted server state"
        );
        assert_eq!(
            decide_local(&mut w, &idp, 20 + i as u32, post("/orders", &bystander), at + 1),
            503,
            "writes fail closed until the new state is read confirmed"
        );
        assert_eq!(
            decide_local(&mut w, &idp, 30 + i as u32, get("/items", Some(&bystander)), at + 1),
            200,
            "reads keep what is held"
        );
    }
    feed_answer(
        &mut w,
        poll,
        json!({"version": 1, "policy_version": 1, "incarnation": "inc-b"}),
        T0 + 400,
    );
    assert_eq!(
        decide_local(&mut w, &idp, 40, post("/orders", &bystander), T0 + 410),
        200
    );
    assert_eq!(
        decide_local(&mut w, &idp, 41, get("/items", Some(&revoked)), T0 + 410),
        401
    );
    assert!(host.logged("revocation(s) kept"));
}

#[test]
fn a_state_read_in_pages_is_asked_for_at_once_and_vouches_for_nothing_until_the_last() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, _host, (held, _)) = local_worker(&store, &idp, None, 1_000);
    let (first, second, bystander) = (idp.token("alice"), idp.token("bob"), idp.token("dave"));
    let row = |token: &str| {
        let digest = authz_core::token_hash::revocation_digest(token);
        json!([
            authz_core::token_hash::digest_hex(&digest),
            (T0 / 1000 + 3600) * 1000,
            T0
        ])
    };
    // A restarted server state, read from 0 in two pages.
    feed_answer(
        &mut w,
        held,
        json!({"version": 1, "policy_version": 1, "incarnation": "inc-a"}),
        T0 + 10,
    );
    let (poll, _) = w
        .wake(T0 + 250)
        .poll()
        .expect("the next request at the interval");
    let (poll, _) = w
        .answer(
            poll,
            Some(200),
            Some(feed(
                json!({"version": 1, "policy_version": 1, "incarnation": "inc-b"}),
            )),
            T0 + 260,
        )
        .poll()
        .expect("the new state is asked for from 0 at once");
    let (poll, next) = feed_answer(
        &mut w,
        poll,
        json!({"version": 7, "policy_version": 1, "incarnation": "inc-b", "more": true,
               "confirmed": false, "tokens": [row(&first)]}),
        T0 + 270,
    )
    .expect("the next page is asked for at once");
    assert!(next.path.contains("since=7"), "{}", next.path);
    assert_eq!(
        decide_local(&mut w, &idp, 1, get("/items", Some(&first)), T0 + 271),
        401,
        "a page's revocations apply at once"
    );
    assert_eq!(
        decide_local(&mut w, &idp, 2, post("/orders", &bystander), T0 + 271),
        503,
        "writes fail closed until the last page"
    );
    // A server that says `confirmed` on a page it marks `more` is not believed either.
    let (poll, _) = feed_answer(
        &mut w,
        poll,
        json!({"version": 8, "policy_version": 1, "incarnation": "inc-b", "more": true,
               "tokens": []}),
        T0 + 280,
    )
    .expect("the next page is asked for at once");
    assert_eq!(
        decide_local(&mut w, &idp, 3, post("/orders", &bystander), T0 + 281),
        503
    );
    feed_answer(
        &mut w,
        poll,
        json!({"version": 9, "policy_version": 1, "incarnation": "inc-b",
               "tokens": [row(&second)]}),
        T0 + 290,
    );
    assert_eq!(
        decide_local(&mut w, &idp, 4, post("/orders", &bystander), T0 + 291),
        200
    );
    assert_eq!(
        decide_local(&mut w, &idp, 5, get("/items", Some(&second)), T0 + 291),
        401
    );
}

#[test]
fn a_reply_to_a_call_made_before_a_revocation_was_applied_is_not_kept_even_at_the_same_version() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, held) = polled_worker(&store, T0);
    let request = get("/admin/users", Some("opaque-token-1"));
    let (call, _) = w.request(1, request.clone(), T0 + 5).check();
    // A replica stamps a revocation of alice it learned out of order at version 5; another
    // replica, which has not read it, answers the call at version 5 too.
    feed_answer(
        &mut w,
        held,
        json!({"version": 5, "policy_version": 1, "incarnation": "inc-a",
               "subjects": [["alice", T0 + 8, 1, T0 + 8]]}),
        T0 + 10,
    );
    let late = w.grpc(call, 0, Some(ok_reply_at(5_000, 5)), T0 + 20).finals;
    assert_eq!(late.len(), 1);
    assert_eq!(
        status_of(&late[0]),
        401,
        "alice was revoked while the call was out"
    );
    // A call made after the revocation was applied: its reply is kept.
    let (call, _) = w.request(3, request.clone(), T0 + 30).check();
    let fresh = w.grpc(call, 0, Some(ok_reply_at(5_000, 5)), T0 + 40).finals;
    assert_eq!(fresh.len(), 1);
    assert_eq!(status_of(&fresh[0]), 200, "a login after the revocation");
    assert_eq!(status_of(&w.request(4, request, T0 + 50).done()), 200);
    assert_eq!(
        host.count(Counter::CacheHit(authz_core::Tier::Privileged)),
        1
    );
}

#[test]
fn a_revoked_client_takes_its_users_tokens_with_it_and_a_user_named_like_it_stays() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, _host, (held, _)) = local_worker(&store, &idp, None, 1_000);
    let client_token = token_with(&idp, json!({"client_id": "app"}));
    let users_token = token_with(&idp, json!({"sub": "carol", "client_id": "app"}));
    let namesake = token_with(&idp, json!({"sub": "app", "client_id": "other"}));
    for (i, t) in [&client_token, &users_token, &namesake].iter().enumerate() {
        assert_eq!(
            decide_local(&mut w, &idp, i as u32 + 1, get("/items", Some(t)), T0),
            200
        );
    }
    // Revoking the user "app" leaves the client "app" alone.
    let (next, _) = feed_answer(
        &mut w,
        held,
        json!({"version": 2, "policy_version": 1, "incarnation": "inc-a",
               "subjects": [["app", T0, 1, T0 + 5]]}),
        T0 + 10,
    )
    .expect("a change pushed: the next held request at once");
    assert_eq!(
        decide_local(&mut w, &idp, 10, get("/items", Some(&namesake)), T0 + 20),
        401
    );
    assert_eq!(
        decide_local(
            &mut w,
            &idp,
            11,
            get("/items", Some(&client_token)),
            T0 + 20
        ),
        200
    );
    assert_eq!(
        decide_local(&mut w, &idp, 12, get("/items", Some(&users_token)), T0 + 20),
        200
    );
    // Revoking the client: its own tokens and the user tokens issued to it.
    feed_answer(
        &mut w,
        next,
        json!({"version": 3, "policy_version": 1, "incarnation": "inc-a",
               "subjects": [[authz_core::principal::client_key("app"), T0, 2, T0 + 25]]}),
        T0 + 30,
    );
    assert_eq!(
        decide_local(
            &mut w,
            &idp,
            13,
            get("/items", Some(&client_token)),
            T0 + 40
        ),
        401
    );
    assert_eq!(
        decide_local(&mut w, &idp, 14, get("/items", Some(&users_token)), T0 + 40),
        401
    );
}

#[test]
fn the_incarnation_a_server_names_is_percent_encoded_in_the_next_request() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, _host, (held, _)) = local_worker(&store, &Idp::new("k1"), None, 1_000);
    let odd = json!({"version": 1, "policy_version": 1, "incarnation": "a b&wait_ms=0#"});
    // A new incarnation: its state is read again at once (not held), then held requests name
    // it.
    let (reread, order) =
        feed_answer(&mut w, held, odd.clone(), T0 + 10).expect("read again at once");
    assert!(!order.path.contains("incarnation="), "{}", order.path);
    let next = feed_answer(&mut w, reread, odd, T0 + 20);
    let (_, poll) = next.or_else(|| w.wake(T0 + 1_000).poll()).expect("a poll");
    assert!(
        poll.path.ends_with("&incarnation=a%20b%26wait_ms%3D0%23"),
        "{}",
        poll.path
    );
}

#[test]
fn opaque_tokens_on_local_routes_go_to_the_server_when_the_provider_issues_them() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut plain, _, _) = local_worker(&store, &idp, None, 1_000);
    let opaque = get("/items", Some("ory_at_Zm9vYmFy.c2lnbmF0dXJl"));
    // Without the setting: not a JWT, refused locally (401).
    assert_eq!(decide_local(&mut plain, &idp, 1, opaque.clone(), T0), 401);
    let mut config = json!({
        "realm": "test",
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "routes": [{"name": "health", "match": {"exact": "/healthz"}, "tier": "public"}],
        "default": {"tier": "authenticated"},
        "server": {"cluster": "authz", "opaque_tokens": true}
    });
    config["server"]["timeout_ms"] = json!(500);
    let policy = Policy::from_json(config.to_string().as_bytes()).expect("policy");
    let mut w = Worker::new(policy, FakeHost::sharing(&store), [1, 2]);
    let (call, order) = w.request(2, opaque.clone(), T0).check();
    assert_eq!(order.tier, authz_core::Tier::Authenticated);
    let allowed = w
        .grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 5)
        .finals;
    assert_eq!(allowed.len(), 1);
    assert_eq!(status_of(&allowed[0]), 200);
    // Cached for the route's tier, like a server tier's decision.
    assert_eq!(status_of(&w.request(3, opaque, T0 + 10).done()), 200);
    // JWTs stay local; public routes stay public.
    let jwt = idp.token("alice");
    assert_eq!(
        decide_local(&mut w, &idp, 4, get("/items", Some(&jwt)), T0 + 20),
        200
    );
    let public = w
        .request(5, get("/healthz", Some("opaque")), T0 + 30)
        .done();
    assert_eq!(status_of(&public), 200);
}

#[test]
fn a_refused_feed_credential_is_an_error_naming_it_and_counted() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host) = worker(&store);
    let (poll, order) = w.wake(T0).poll().expect("a poll is due");
    assert!(order.bearer.starts_with("Bearer "));
    w.answer(poll, Some(401), Some(b"{}".to_vec()), T0 + 5);
    assert_eq!(host.count(Counter::PollUnauthorized), 1);
    assert_eq!(host.count(Counter::PollFailed), 1);
    assert!(host
        .logs
        .borrow()
        .iter()
        .any(|(level, line)| *level == LogLevel::Error && line.contains("server.epochs_token")));
}

#[test]
fn a_feed_read_over_its_rate_waits_what_the_server_says_and_other_refusals_poll_on() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host) = worker(&store);
    let (poll, first) = w.wake(T0).poll().expect("a poll is due");
    // The first read of the state is over this feed secret's catch-up rate.
    let refusal = br#"{"error": "over rate", "retry_after_ms": 0}"#.to_vec();
    assert!(w
        .answer(poll, Some(429), Some(refusal), T0 + 5)
        .poll()
        .is_none());
    assert_eq!(host.count(Counter::PollFailed), 1);
    for at in [T0 + 255, T0 + 505, T0 + 1_000] {
        assert!(w.wake(at).poll().is_none(), "asked again at {at}");
    }
    let (poll, again) = w
        .wake(T0 + 1_005)
        .poll()
        .expect("asked again after a second");
    assert_eq!(again.path, first.path, "the same read");
    // The server says how long to wait (bounded to 10 s).
    let refusal = br#"{"error": "over rate", "retry_after_ms": 3000}"#.to_vec();
    w.answer(poll, Some(429), Some(refusal), T0 + 1_010);
    assert!(w.wake(T0 + 4_000).poll().is_none());
    let (poll, _) = w.wake(T0 + 4_010).poll().expect("asked again after 3 s");
    let refusal = br#"{"retry_after_ms": 3600000}"#.to_vec();
    w.answer(poll, Some(429), Some(refusal), T0 + 5_000);
    let (poll, _) = w.wake(T0 + 15_000).poll().expect("at most 10 s");
    // Another failure, or a 429 that names no wait (too many held requests: polling plainly
    // is never refused for that), is retried at the interval, as before.
    w.answer(poll, Some(503), None, T0 + 15_010);
    let (poll, _) = w
        .wake(T0 + 15_260)
        .poll()
        .expect("asked again at the interval");
    let held_limit = br#"{"error": "too many held feed requests"}"#.to_vec();
    w.answer(poll, Some(429), Some(held_limit), T0 + 15_270);
    assert!(w.wake(T0 + 15_520).poll().is_some());
}

/// A denial from the server, with `token_revoked` in its directive as given.
fn denied_reply(status: i32, token_revoked: bool) -> Vec<u8> {
    reply(CheckResponse {
        status: Some(RpcStatus {
            code: 16,
            message: String::new(),
        }),
        denied_response: Some(DeniedHttpResponse {
            status: Some(HttpStatus { code: status }),
            headers: vec![],
            body: String::new(),
        }),
        ok_response: None,
        dynamic_metadata: Some(
            CacheDirective {
                token_revoked,
                ..CacheDirective::default()
            }
            .to_metadata(),
        ),
    })
}

#[test]
fn a_background_check_revokes_only_what_the_server_says_it_revoked_and_a_failure_nothing() {
    let store = Rc::new(RefCell::new(Store::default()));
    let host = FakeHost::sharing(&store);
    let mut config = json!({
        "realm": "test",
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "routes": [{"name": "news", "match": {"prefix": "/news", "methods": ["GET"]},
                    "tier": "authenticated", "background_check_ms": 1000}],
        "default": {"tier": "authenticated"},
        "server": {"cluster": "authz", "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "max_unreachable_ms": 1000}
    });
    let policy = Policy::from_json(config.to_string().as_bytes()).expect("policy");
    let mut w = Worker::new(policy, host.clone(), [1, 2]);
    let idp = Idp::new("k1");
    start_feed(&mut w, &idp, T0);
    let token = idp.token("alice");
    let mut now = T0;
    // Answered at once; one check per window, sent from a wake-up.
    let ask = |w: &mut Worker<FakeHost>, id: u32, at: u64| {
        decide_local(w, &idp, id, get("/news/1", Some(&token)), at)
    };
    assert_eq!(ask(&mut w, 1, now), 200);
    assert!(
        w.poll_timeout().is_some_and(|at| at <= now),
        "a queued check asks for a wake-up at once"
    );
    assert_eq!(ask(&mut w, 2, now + 10), 200);
    now += 250;
    let checks = w.wake(now).checks;
    assert_eq!(checks.len(), 1, "one check for two requests in a window");
    let (call, order) = &checks[0];
    assert_eq!(order.cluster, "authz");
    assert_eq!(order.purpose, CheckPurpose::AfterAnswer);
    // A failure, and a refusal the server did not revoke for: nothing changes.
    w.grpc(*call, 14, None, now + 5);
    assert_eq!(ask(&mut w, 3, now + 10), 200);
    now += 1_000;
    assert_eq!(ask(&mut w, 4, now), 200);
    let checks = w.wake(now + 1).checks;
    assert_eq!(checks.len(), 1, "the next window");
    w.grpc(checks[0].0, 0, Some(denied_reply(401, false)), now + 5);
    assert_eq!(ask(&mut w, 5, now + 10), 200, "a 401 alone revokes nothing");
    assert_eq!(host.count(Counter::BackgroundFailed), 2);
    // The server says it revoked the token: refused here at once.
    now += 1_000;
    assert_eq!(ask(&mut w, 6, now), 200);
    let checks = w.wake(now + 1).checks;
    w.grpc(checks[0].0, 0, Some(denied_reply(401, true)), now + 5);
    assert_eq!(ask(&mut w, 10, now + 10), 401);
    assert_eq!(host.count(Counter::BackgroundRevoked), 1);
    assert!(host.logged("allowed, then revoked"));
    assert!(host.logged("route=news method=GET path=/news/1"));
    // A route without the option asks nothing.
    config["routes"][0]["background_check_ms"] = Value::Null;
    let plain = Policy::from_json(config.to_string().as_bytes()).expect("policy");
    let mut w = Worker::new(plain, FakeHost::sharing(&store), [1, 2]);
    start_feed(&mut w, &idp, T0);
    assert_eq!(ask(&mut w, 1, T0), 200);
    assert!(w.wake(T0 + 250).checks.is_empty());
}

#[test]
fn a_request_waits_for_its_check_and_a_check_that_cannot_start_fails_closed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host) = worker(&store);
    let token = Idp::new("k1").token("alice");
    let (call, order) = w.request(7, get("/admin/x", Some(&token)), T0).check();
    assert_eq!(order.purpose, CheckPurpose::Decide { context_id: 7 });
    assert_eq!(
        (order.cluster.as_str(), order.tier.as_str()),
        ("authz", "privileged")
    );
    assert_eq!(order.request.path, "/admin/x");
    // The host could not make the call: the request is refused, as when the call fails.
    let finals = w.lost(call, CallOutcome::NotStarted, T0 + 1).finals;
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].context_id, status_of(&finals[0])), (7, 503));
    assert_eq!(host.count(Counter::ServerErrors), 1);
    // An answer to a call the worker does not have out (answered already, or never asked)
    // does nothing.
    assert!(w
        .grpc(call, 0, Some(ok_reply(1_000, 1, false)), T0 + 2)
        .is_empty());
    assert!(w.grpc(CallId(999), 0, None, T0 + 2).is_empty());
    // A request that ends while its call is out: the late answer decides nothing.
    let (call, _) = w.request(8, get("/admin/x", Some(&token)), T0 + 3).check();
    assert!(w.ended(8, T0 + 4).is_empty());
    assert!(w
        .grpc(call, 0, Some(ok_reply(1_000, 1, false)), T0 + 5)
        .is_empty());
}

#[test]
fn poll_timeout_names_a_waiting_request_s_deadline_and_a_wake_then_settles_it() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, _) = worker(&store);
    assert_eq!(w.poll_timeout(), Some(0), "never woken: at once");
    assert_eq!(w.wake(T0).fetches.len(), 1, "the first keys are fetched");
    assert_eq!(
        w.poll_timeout(),
        Some(T0 + 250),
        "other workers' shared data is read again within the tick"
    );
    let token = Idp::new("k1").token("alice");
    let fetch = w
        .request(10, get("/things", Some(&token)), T0 + 100)
        .waits();
    assert!(fetch.is_none(), "it waits on the fetch out");
    w.wake(T0 + 1_900);
    // The key wait is 2 s: the request's deadline comes before the next periodic wake-up.
    assert_eq!(w.poll_timeout(), Some(T0 + 2_100));
    assert!(
        w.wake(T0 + 2_099).finals.is_empty(),
        "a wake before it decides nothing"
    );
    let finals = w.wake(T0 + 2_100).finals;
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].context_id, status_of(&finals[0])), (10, 503));
}

#[test]
fn check_calls_and_waits_for_keys_are_timed() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host) = worker(&store);
    host.clocked.set(true);
    // Fifteen requests decided at once; the sixteenth (in the timed share) waits for keys.
    for id in 1..16 {
        assert_eq!(
            status_of(&w.request(id, get("/healthz", None), T0).done()),
            200
        );
    }
    let token = idp.token("alice");
    let (fetch, _) = w
        .request(16, get("/things", Some(&token)), T0)
        .waits()
        .expect("the first request fetches");
    let settled = w.answer(fetch, Some(200), Some(idp.jwks()), T0 + 40);
    assert_eq!(settled.finals.len(), 1);
    // The seventeenth (not in the share) waits for a Check call.
    let (call, _) = w
        .request(17, get("/admin/users", Some("opaque-token-1")), T0 + 50)
        .check();
    w.grpc(call, 0, Some(ok_reply(0, 0, false)), T0 + 57);
    let samples = host.samples.borrow();
    let has = |h: Histogram, v: u64| samples.contains(&(h, v));
    // The stages that take time are timed for every request.
    assert!(has(Histogram::Stage(Stage::KeyWait), 40_000), "{samples:?}");
    assert!(
        has(Histogram::Stage(Stage::CheckCall), 7_000),
        "{samples:?}"
    );
    // The decision only for the request in the share: seen → decided, by outcome and tier.
    let allowed = true;
    let decision = |tier: Tier| Histogram::Decision { tier, allowed };
    assert!(has(decision(Tier::Authenticated), 40_000), "{samples:?}");
    assert!(
        !samples
            .iter()
            .any(|(h, _)| *h == decision(Tier::Privileged)),
        "{samples:?}"
    );
}

#[test]
fn one_in_timed_every_request_decided_at_once_is_timed_and_the_others_read_no_clock() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let (mut w, host) = worker(&store);
    let token = idp.token("alice");
    let (fetch, _) = w
        .request(1, get("/things", Some(&token)), T0)
        .waits()
        .expect("the first request fetches");
    w.answer(fetch, Some(200), Some(idp.jwks()), T0 + 40);
    host.clocked.set(true);
    host.samples.borrow_mut().clear();
    let n = 4 * filter_core::metrics::TIMED_EVERY;
    for i in 0..n {
        let id = 100 + i as u32;
        assert_eq!(
            status_of(&w.request(id, get("/things", Some(&token)), T0 + 100).done()),
            200
        );
    }
    let samples = host.samples.borrow();
    let of = |h: Histogram| samples.iter().filter(|(s, _)| *s == h).count() as u64;
    let decisions = of(Histogram::Decision {
        tier: Tier::Authenticated,
        allowed: true,
    });
    // The first request (the one that waited) is the first of the count: 4 more in 64.
    assert_eq!(decisions, 4, "{samples:?}");
    assert_eq!(of(Histogram::Stage(Stage::TokenParse)), 4);
    assert_eq!(of(Histogram::Stage(Stage::TokenCache)), 4);
    assert_eq!(samples.len(), 12, "nothing else: {samples:?}");
}

#[test]
fn a_denial_is_logged_with_the_requests_trace_and_the_policy_version() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host) = worker(&store);
    let headers = [
        (":method", "GET"),
        (":path", "/x"),
        (
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ),
    ];
    let read = filter_core::read_request(
        headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        &policy(),
    );
    let request = read.request.expect("readable");
    assert_eq!(
        request.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(status_of(&w.request(1, request, T0).done()), 401);
    assert!(host.logged(
        "jwt_authz deny status=401 reason=missing_token source=local tier=authenticated route=default method=GET path=/x token=- policy_version=0 data_age_ms=- zone=- trace_id=4bf92f3577b34da6a3ce929d0e0e4736"
    ));
}

#[test]
fn allows_are_logged_at_the_policys_share_and_denials_always() {
    let store = Rc::new(RefCell::new(Store::default()));
    let idp = Idp::new("k1");
    let host = FakeHost::sharing(&store);
    let mut logging = policy();
    logging.log_allows_per_million = 250_000;
    let mut w = Worker::new(logging, host.clone(), [1, 2]);
    let (fetch, _) = w
        .request(1, get("/x", Some(&idp.token("a"))), T0)
        .waits()
        .expect("keys");
    w.answer(fetch, Some(200), Some(idp.jwks()), T0 + 1);
    for id in 2..10 {
        assert_eq!(
            status_of(
                &w.request(id, get("/x", Some(&idp.token("a"))), T0 + 2)
                    .done()
            ),
            200
        );
    }
    let allow_lines = |host: &FakeHost| {
        host.logs
            .borrow()
            .iter()
            .filter(|(level, line)| {
                *level == LogLevel::Info && line.starts_with("jwt_authz allow status=200 reason=ok source=local tier=authenticated route=default")
            })
            .count()
    };
    // Nine allows (the one that waited for keys included), a quarter of them logged.
    assert_eq!(allow_lines(&host), 2);
    assert_eq!(
        status_of(&w.request(20, get("/x", None), T0 + 3).done()),
        401
    );
    assert!(host.logged("jwt_authz deny status=401 reason=missing_token source=local"));
    // The default: no allow at info.
    let (mut quiet, quiet_host) = worker(&store);
    quiet.wake(T0 + 4);
    assert_eq!(
        status_of(
            &quiet
                .request(1, get("/x", Some(&idp.token("a"))), T0 + 5)
                .done()
        ),
        200
    );
    assert_eq!(allow_lines(&quiet_host), 0);
}

#[test]
fn decision_lines_carry_the_age_of_the_data_behind_them_and_the_proxys_zone() {
    let store = Rc::new(RefCell::new(Store::default()));
    let (mut w, host, _held) = polled_worker(&store, T0);
    w.set_locality(Some("eu-west-1/eu-west-1b".into()));
    let mut spaced = Worker::new(policy(), FakeHost::sharing(&store), [1, 2]);
    spaced.set_locality(Some("zone a reason=ok".into()));
    let spaced_host = spaced.host.clone();
    spaced.request(1, get("/x", None), T0);
    assert!(
        spaced_host.logged("zone=zone_a_reason_ok trace_id=-"),
        "a locality cannot add fields to the line"
    );
    let line = |host: &FakeHost, part: &str| {
        host.logs
            .borrow()
            .iter()
            .rev()
            .find(|(_, l)| l.contains(part))
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    };
    // The server's own answer: 0 ms old.
    let request = get("/admin/users", Some("opaque-token-1"));
    let (call, _) = w.request(1, request.clone(), T0 + 10).check();
    w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 10);
    // A cached decision: as old as the entry (stored 10 ms after T0, served at T0 + 340).
    assert_eq!(status_of(&w.request(2, request, T0 + 340).done()), 200);
    let hit = line(&host, "source=hit");
    assert!(
        hit.contains("data_age_ms=330 zone=eu-west-1/eu-west-1b"),
        "{hit}"
    );
    // A local decision: how long ago the feed was last applied (at T0; the Check reply at
    // T0 + 10 renewed cache trust but brought no revocations).
    assert_eq!(
        status_of(&w.request(3, get("/x", None), T0 + 700).done()),
        401
    );
    let local = line(&host, "reason=missing_token");
    assert!(
        local.contains("source=local tier=authenticated")
            && local.contains("data_age_ms=700 zone=eu-west-1/eu-west-1b"),
        "{local}"
    );
    // Without a feed: no age to give.
    let (mut bare, bare_host) = worker(&store);
    let mut no_feed = bare.policy.clone();
    no_feed.server = None;
    bare = Worker::new(no_feed, bare_host.clone(), [1, 2]);
    assert_eq!(status_of(&bare.request(1, get("/x", None), T0).done()), 401);
    let bare_line = line(&bare_host, "reason=missing_token");
    assert!(bare_line.contains("data_age_ms=- zone=- "), "{bare_line}");
}
