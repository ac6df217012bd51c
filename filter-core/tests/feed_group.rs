//! The feed group's rules as specifications (see `filter_core::feed_share`): the workers of one
//! proxy elect one reader of the change feed through a lease in shared data, the reader shares
//! every answer, followers apply what follows what they hold and catch up on what they missed,
//! a lapsed lease is taken over, and a follower that hears only failures (or nothing) does not
//! let Check replies renew its trust in cached decisions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use authz_core::{Policy, Tier};
use filter_core::feed_share::READER_LEASE_MS;
use filter_core::{CallId, Counter, Event, FinalAction, Gauge, OwnedRequest, SharedAnswer, Worker};
use serde_json::json;
use std::cell::RefCell;
use std::rc::Rc;
use support::{feed, ok_reply, Drive, FakeHost, Out, Store};

const T0: u64 = 1_900_000_000_000;

/// Held requests of 500 ms, polling every 250 ms without them; trust for 1 s after the last
/// good answer.
fn policy() -> Policy {
    let config = json!({
        "realm": "test",
        "providers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                       "jwks": {"remote": {"cluster": "idp", "path": "/jwks"}}}],
        "routes": [{"name": "admin", "match": {"prefix": "/admin"}, "tier": "privileged"}],
        "default": {"tier": "authenticated"},
        "server": {"cluster": "authz", "epochs_cluster": "authz_admin", "timeout_ms": 100,
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "max_unreachable_ms": 1000}
    });
    Policy::from_json(config.to_string().as_bytes()).expect("policy")
}

/// A worker of the proxy `store`, joined to its feed group as `name`.
fn member(store: &Rc<RefCell<Store>>, name: &str) -> (Worker<FakeHost>, FakeHost) {
    let host = FakeHost::sharing(store);
    let mut w = Worker::new(policy(), host.clone(), [1, 2]);
    w.join_feed(name.to_owned());
    (w, host)
}

fn state(version: u64, subjects: &[&str]) -> Vec<u8> {
    let subjects: Vec<_> = subjects
        .iter()
        .map(|s| json!([s, T0 - 1_000, 1, T0 + 3_600_000]))
        .collect();
    feed(
        json!({"version": version, "policy_version": 1, "incarnation": "inc-a",
                "subjects": subjects}),
    )
}

/// The one feed request `out` asks for: its call and `since`, and whether it is held.
fn asked(out: &Out) -> (CallId, u64, bool) {
    let (call, order) = out.poll().expect("a feed request");
    let since = order
        .path
        .split("since=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .and_then(|v| v.parse().ok())
        .expect("since");
    (call, since, order.path.contains("wait_ms="))
}

/// The one shared answer `out` carries, with whom it goes to (sorted).
fn shared(out: &Out) -> (Vec<String>, Vec<u8>) {
    assert_eq!(out.shared.len(), 1, "{out:?}");
    let (mut to, message) = out.shared[0].clone();
    to.sort();
    (to, message)
}

fn deliver(w: &mut Worker<FakeHost>, message: &[u8], at: u64) -> Out {
    w.event(
        Event::SharedFeedAnswer {
            message: message.to_vec(),
        },
        at,
    )
}

fn revocations(host: &FakeHost) -> Option<u64> {
    host.gauges.borrow().get(&Gauge::Revocations).copied()
}

/// Three members woken at T0: `a` reads (its held request, since 1, is out: returned), `b` and
/// `c` caught up on their own (state version 1) and follow.
fn group(store: &Rc<RefCell<Store>>) -> ([(Worker<FakeHost>, FakeHost); 3], CallId) {
    let mut members = [member(store, "a"), member(store, "b"), member(store, "c")];
    let mut asks = Vec::new();
    for (w, _) in members.iter_mut() {
        asks.push(asked(&w.wake(T0)));
    }
    // The first to wake takes the lease; the others catch up once (never held).
    assert!(asks.iter().all(|(_, since, held)| *since == 0 && !held));
    for (i, (w, _)) in members.iter_mut().enumerate().skip(1) {
        let after = w.answer(asks[i].0, Some(200), Some(state(1, &[])), T0 + 5);
        assert!(after.poll().is_none(), "a follower holds no request");
        assert!(after.shared.is_empty(), "a follower shares nothing");
    }
    let out = members[0]
        .0
        .answer(asks[0].0, Some(200), Some(state(1, &[])), T0 + 10);
    let (to, _) = shared(&out);
    assert_eq!(to, ["b", "c"]);
    let (held, since, is_held) = asked(&out);
    assert_eq!(since, 1);
    assert!(is_held, "the reader holds its next request");
    (members, held)
}

#[test]
fn one_member_reads_and_the_others_apply_what_it_shares() {
    let store = Rc::new(RefCell::new(Store::default()));
    let ([(mut a, a_host), (mut b, b_host), (mut c, c_host)], held) = group(&store);
    // A revocation: the held request answers, the reader shares it, both followers apply it.
    let out = a.answer(held, Some(200), Some(state(2, &["mallory"])), T0 + 300);
    let (to, message) = shared(&out);
    assert_eq!(to, ["b", "c"]);
    assert_eq!(revocations(&a_host), Some(1));
    for (w, host) in [(&mut b, &b_host), (&mut c, &c_host)] {
        let applied = deliver(w, &message, T0 + 301);
        assert!(applied.poll().is_none(), "it follows: nothing to catch up");
        assert_eq!(revocations(host), Some(1));
    }
    // Followers never ask while the reader renews its lease and shares its answers (held
    // requests the server answers with nothing when their wait runs out), however long.
    let (mut held, _, _) = asked(&out);
    for at in (T0 + 400..T0 + 10_000).step_by(250) {
        assert!(b.wake(at).poll().is_none());
        assert!(c.wake(at).poll().is_none());
        a.wake(at);
        if (at - T0) % 500 == 400 {
            let out = a.answer(held, Some(200), Some(state(2, &["mallory"])), at);
            held = asked(&out).0;
            let (_, message) = shared(&out);
            assert!(deliver(&mut b, &message, at).poll().is_none());
            assert!(deliver(&mut c, &message, at).poll().is_none());
        }
    }
    assert_eq!(b_host.count(Counter::PollOk), 1, "its one catch-up read");
    // A shared answer in an unknown format is refused, not misread.
    let mut bad = message.clone();
    bad[0] ^= 1;
    deliver(&mut b, &bad, T0 + 10_000);
    assert!(b_host.logged("unknown format"));
}

#[test]
fn a_lapsed_lease_is_taken_and_the_new_reader_reads_at_once() {
    let store = Rc::new(RefCell::new(Store::default()));
    let ([(mut a, _), (mut b, b_host), (mut c, _)], _) = group(&store);
    // `a` is gone (its VM crashed): no renewal. Until its lease lapses nobody else reads.
    assert!(b.wake(T0 + READER_LEASE_MS - 1).poll().is_none());
    let took = b.wake(T0 + READER_LEASE_MS + 1);
    let (_, since, held) = asked(&took);
    assert_eq!((since, held), (1, true), "from what it holds, held at once");
    assert!(b_host.logged("this worker reads the feed for the proxy"));
    assert!(c.wake(T0 + 20 + READER_LEASE_MS + 2).poll().is_none());
    // `a` comes back late: it follows the new reader.
    assert!(a.wake(T0 + 20 + READER_LEASE_MS + 3).poll().is_none());
}

#[test]
fn a_follower_that_missed_an_answer_catches_up_and_again_if_it_misses_one_meanwhile() {
    let store = Rc::new(RefCell::new(Store::default()));
    let ([_, (mut b, b_host), _], _) = group(&store);
    let answer = |since: u64, version: u64, subjects: &[&str]| {
        SharedAnswer {
            since,
            incarnation: Some("inc-a".into()),
            status: Some(200),
            body: Some(state(version, subjects)),
        }
        .encode()
    };
    // `b` holds version 1; an answer asked from 5 does not follow it.
    let out = deliver(&mut b, &answer(5, 6, &["x"]), T0 + 100);
    assert_eq!(revocations(&b_host), None, "not applied");
    let (catch_up, since, held) = asked(&out);
    assert_eq!((since, held), (1, false));
    // Another is skipped while the catch-up is out.
    assert!(deliver(&mut b, &answer(6, 7, &["y"]), T0 + 110)
        .poll()
        .is_none());
    let out = b.answer(catch_up, Some(200), Some(state(6, &["x"])), T0 + 120);
    assert_eq!(revocations(&b_host), Some(1));
    let (_, since, held) = asked(&out);
    assert_eq!((since, held), (6, false), "caught up again at once");
    // A catch-up that fails (the server is down) is tried again at the poll interval, not in
    // a loop.
    let (again, _, _) = asked(&out);
    assert!(b.answer(again, None, None, T0 + 130).poll().is_none());
    for at in [T0 + 131, T0 + 200, T0 + 300] {
        assert!(b.wake(at).poll().is_none(), "at +{}", at - T0);
    }
    let (again, since, _) = asked(&b.wake(T0 + 120 + 250));
    assert_eq!(since, 6);
    // So is one the server refuses or cannot confirm.
    assert!(b.answer(again, Some(503), None, T0 + 380).poll().is_none());
    assert!(b.wake(T0 + 400).poll().is_none());
    // Of another server state, or from the start: never mistaken for a continuation.
    let other = SharedAnswer {
        since: 1,
        incarnation: Some("inc-b".into()),
        status: Some(200),
        body: Some(state(2, &[])),
    };
    assert_eq!(SharedAnswer::decode(&other.encode()), Some(other));
}

#[test]
fn shared_failures_or_silence_keep_check_replies_from_renewing_trust() {
    let store = Rc::new(RefCell::new(Store::default()));
    let ([(mut a, _), (mut b, b_host), _], held) = group(&store);
    let request = OwnedRequest {
        method: "GET".into(),
        path: "/admin/users".into(),
        authorization: Some("Bearer opaque-token-1".into()),
        trace_id: None,
    };
    let (call, _) = b.request(1, request.clone(), T0 + 20).check();
    b.grpc(call, 0, Some(ok_reply(60_000, 1, false)), T0 + 20);
    assert!(matches!(
        b.request(2, request.clone(), T0 + 30).done().action,
        FinalAction::Allow { .. }
    ));
    // The reader's requests fail; it shares the failures.
    let (_, failure) = shared(&a.answer(held, None, None, T0 + 50));
    deliver(&mut b, &failure, T0 + 51);
    // A Check reply for another token does not renew trust meanwhile…
    let other = OwnedRequest {
        authorization: Some("Bearer opaque-token-2".into()),
        ..request.clone()
    };
    let (call, _) = b.request(3, other, T0 + 900).check();
    b.grpc(call, 0, Some(ok_reply(60_000, 1, false)), T0 + 900);
    // …so past max_unreachable_ms after the last good answer the cache is not used.
    b.request(4, request.clone(), T0 + 1_100).check();
    assert_eq!(b_host.count(Counter::CacheUntrusted(Tier::Privileged)), 1);

    // The same with silence: a follower that hears nothing from its reader for longer than an
    // answer can take does not count its feed as working.
    let store = Rc::new(RefCell::new(Store::default()));
    let ([(mut a, _), (mut b, b_host), _], _) = group(&store);
    let (call, _) = b.request(1, request.clone(), T0 + 20).check();
    b.grpc(call, 0, Some(ok_reply(60_000, 1, false)), T0 + 20);
    // Silent for longer than a held request (0.5 s), its margin (2 s) and a lease (2 s), and
    // still within the privileged tier's 5 s cap on the cached entry.
    let late = T0 + 4_700;
    let other = OwnedRequest {
        authorization: Some("Bearer opaque-token-2".into()),
        ..request.clone()
    };
    let (call, _) = b.request(3, other, late).check();
    b.grpc(call, 0, Some(ok_reply(60_000, 1, false)), late);
    b.request(4, request.clone(), late + 10).check();
    assert_eq!(b_host.count(Counter::CacheUntrusted(Tier::Privileged)), 1);
    // And it reads on its own (at the interval), never holding a request, while the reader
    // (alive: it renews its lease, it just shares nothing) holds its own.
    a.wake(late + 15);
    let (_, since, held) = asked(&b.wake(late + 20));
    assert_eq!((since, held), (1, false));

    // The same while it knows it is behind: a gap seen, its catch-up out.
    let store = Rc::new(RefCell::new(Store::default()));
    let ([_, (mut b, b_host), _], _) = group(&store);
    let (call, _) = b.request(1, request.clone(), T0 + 20).check();
    b.grpc(call, 0, Some(ok_reply(60_000, 1, false)), T0 + 20);
    let ahead = SharedAnswer {
        since: 7,
        incarnation: Some("inc-a".into()),
        status: Some(200),
        body: Some(state(8, &[])),
    };
    asked(&deliver(&mut b, &ahead.encode(), T0 + 30));
    let other = OwnedRequest {
        authorization: Some("Bearer opaque-token-2".into()),
        ..request.clone()
    };
    let (call, _) = b.request(3, other, T0 + 900).check();
    b.grpc(call, 0, Some(ok_reply(60_000, 1, false)), T0 + 900);
    b.request(4, request, T0 + 1_100).check();
    assert_eq!(b_host.count(Counter::CacheUntrusted(Tier::Privileged)), 1);
}
