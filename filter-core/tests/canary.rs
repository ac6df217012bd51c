//! Route policies from the change feed as a worker applies them, as specifications: a
//! candidate decided beside the active policy on its share of callers and only counted; a
//! promoted policy enforced, reverted, or refused when this worker cannot apply it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use authz_core::canary::{Canary, Disagreement};
use authz_core::Policy;
use filter_core::{CallId, Counter, OwnedRequest, Worker};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;

mod support;
use support::{
    feed, ok_reply, remote_provider, started_with_feed, status_of, Drive, FakeHost, Idp, Store,
    ISSUER, T0,
};

fn routes(reports_scope: Option<&str>) -> Value {
    let mut reports = json!({"name": "reports", "match": {"prefix": "/reports"},
                             "tier": "authenticated"});
    if let Some(scope) = reports_scope {
        reports["require"] = json!({"scopes": [scope]});
    }
    json!([
        {"name": "admin", "match": {"prefix": "/admin"}, "tier": "privileged"},
        reports,
        {"name": "news", "match": {"prefix": "/news"}, "tier": "authenticated"}
    ])
}

fn policy() -> Policy {
    let config = json!({
        "realm": "test",
        "providers": remote_provider(),
        "routes": routes(None),
        "default": {"tier": "authenticated"},
        "key_wait_timeout_ms": 2000,
        "server": {"cluster": "authz", "timeout_ms": 100, "epochs_cluster": "authz_admin",
                   "epochs_token": "test-epochs-token-4f2a9c7e", "poll_interval_ms": 250,
                   "max_unreachable_ms": 1000, "local_revocations": ["standard_write"]}
    });
    Policy::from_json(config.to_string().as_bytes()).expect("policy")
}

/// The candidate: the reports route needs `reports:read`.
fn candidate() -> Value {
    json!({"id": "tighter-reports", "routes": routes(Some("reports:read")),
           "default": {"tier": "authenticated"}})
}

fn canary(per_million: u32) -> Value {
    json!({"candidate": candidate(), "per_million": per_million})
}

fn get(path: &str, token: &str) -> OwnedRequest {
    OwnedRequest {
        method: "GET".into(),
        path: path.into(),
        authorization: Some(format!("Bearer {token}")),
        trace_id: None,
    }
}

fn answer(version: u64, revision: u64, switches: Value) -> Value {
    let mut switches = switches;
    switches["revision"] = json!(revision);
    json!({"version": version, "policy_version": 1, "incarnation": "inc-a",
           "switches": switches})
}

/// A worker with its keys that has read the feed once with `switches`; its held request.
fn started(idp: &Idp, switches: Value) -> (Worker<FakeHost>, FakeHost, CallId) {
    let store = Rc::new(RefCell::new(Store::default()));
    started_with_feed(policy(), &store, idp, answer(1, 1, switches))
}

fn token(idp: &Idp, sub: &str, scope: &str) -> String {
    let claims = json!({"iss": ISSUER, "aud": "api", "sub": sub, "scope": scope,
                        "iat": T0 / 1000 - 10, "exp": T0 / 1000 + 3600});
    idp.key.sign(&claims).expect("sign")
}

fn status(w: &mut Worker<FakeHost>, id: u32, path: &str, token: &str) -> u16 {
    status_of(&w.request(id, get(path, token), T0 + 10).done())
}

#[test]
fn a_candidate_is_decided_beside_the_active_policy_and_only_counted() {
    let idp = Idp::new("k1");
    let (mut w, host, _) = started(&idp, json!({"canary": canary(1_000_000)}));
    let reader = token(&idp, "alice", "news:read");
    let granted = token(&idp, "bob", "reports:read");
    // Enforced by the active policy: allowed.
    assert_eq!(status(&mut w, 1, "/reports/q3", &reader), 200);
    assert_eq!(
        host.count(Counter::CanaryDisagreement(Disagreement::CandidateDenies)),
        1
    );
    assert!(host.logged(
        "canary_disagreement candidate=tighter-reports kind=candidate_denies route=reports"
    ));
    assert!(host.logged("active=allow"));
    assert!(host.logged("candidate=deny:insufficient_scope"));
    // Where the two agree: compared, not counted as a disagreement.
    assert_eq!(status(&mut w, 2, "/reports/q3", &granted), 200);
    assert_eq!(status(&mut w, 3, "/news/today", &reader), 200);
    assert_eq!(host.count(Counter::CanaryCompared), 3);
    let disagreements: u64 = Disagreement::ALL
        .iter()
        .map(|kind| host.count(Counter::CanaryDisagreement(*kind)))
        .sum();
    assert_eq!(disagreements, 1, "only the tightened route");
    // A request the active policy sends to the server is compared there, not here.
    let out = w.request(4, get("/admin/users", &reader), T0 + 10);
    assert!(!out.checks.is_empty());
    assert_eq!(host.count(Counter::CanaryCompared), 3);
    // No token: both deny alike.
    let anonymous = OwnedRequest {
        method: "GET".into(),
        path: "/reports/q3".into(),
        authorization: None,
        trace_id: None,
    };
    assert_eq!(status_of(&w.request(5, anonymous, T0 + 10).done()), 401);
    assert_eq!(host.count(Counter::CanaryCompared), 4);
    assert_eq!(
        host.count(Counter::CanaryDisagreement(Disagreement::CandidateDenies)),
        1
    );
}

#[test]
fn only_the_chosen_share_of_callers_is_compared_and_always_the_same_ones() {
    let idp = Idp::new("k1");
    let (mut w, host, _) = started(&idp, json!({"canary": canary(200_000)}));
    let parsed: Canary = serde_json::from_value(canary(200_000)).unwrap();
    let mut expected = 0;
    for i in 0..300u32 {
        let sub = format!("user-{i}");
        expected += u64::from(parsed.samples(&sub));
        let t = token(&idp, &sub, "news:read");
        // Twice each: sticky, so a caller in the sample is compared both times.
        assert_eq!(status(&mut w, 2 * i + 10, "/reports/x", &t), 200);
        assert_eq!(status(&mut w, 2 * i + 11, "/reports/x", &t), 200);
    }
    assert!((30..=90).contains(&expected), "{expected} of 300");
    assert_eq!(host.count(Counter::CanaryCompared), 2 * expected);
    assert_eq!(
        host.count(Counter::CanaryDisagreement(Disagreement::CandidateDenies)),
        2 * expected
    );
}

#[test]
fn a_promoted_policy_is_enforced_and_a_reverted_one_no_longer() {
    let idp = Idp::new("k1");
    let (mut w, host, held) = started(&idp, json!({"canary": canary(1_000_000)}));
    let reader = token(&idp, "alice", "news:read");
    assert_eq!(status(&mut w, 1, "/reports/q3", &reader), 200);
    let promoted = json!({"policy": candidate()});
    let (held, _) = w
        .answer(held, Some(200), Some(feed(answer(2, 2, promoted))), T0 + 20)
        .poll()
        .expect("held again");
    assert_eq!(status(&mut w, 2, "/reports/q3", &reader), 403);
    assert_eq!(status(&mut w, 3, "/news/today", &reader), 200);
    assert!(host.logged("route policy now enforced: tighter-reports"));
    // The canary ended with the promotion: nothing more is compared.
    let compared = host.count(Counter::CanaryCompared);
    assert_eq!(status(&mut w, 4, "/news/today", &reader), 200);
    assert_eq!(host.count(Counter::CanaryCompared), compared);
    // An answer from a lagging server (a lower revision) does not undo it.
    let (held, _) = w
        .answer(
            held,
            Some(200),
            Some(feed(answer(3, 1, json!({})))),
            T0 + 30,
        )
        .poll()
        .expect("held again");
    assert_eq!(status(&mut w, 5, "/reports/q3", &reader), 403);
    // Reverted: the configured routes again.
    w.answer(
        held,
        Some(200),
        Some(feed(answer(4, 3, json!({})))),
        T0 + 40,
    );
    assert_eq!(status(&mut w, 6, "/reports/q3", &reader), 200);
}

#[test]
fn a_policy_this_worker_cannot_apply_is_not_run_and_not_enforced_over_a_refusal() {
    let idp = Idp::new("k1");
    // Checked after the answer needs authenticated in server.local_revocations, which this
    // worker's configuration lacks: the server cannot know that.
    let mut unusable = candidate();
    unusable["routes"][2] = json!({"name": "news", "match": {"prefix": "/news", "methods": ["GET"]},
                                  "tier": "authenticated", "background_check_ms": 5000});
    let (mut w, host, held) = started(
        &idp,
        json!({"canary": {"candidate": unusable.clone(), "per_million": 1_000_000}}),
    );
    let reader = token(&idp, "alice", "news:read");
    assert_eq!(host.count(Counter::CanaryRefused), 1);
    assert!(host.logged("cannot be applied here, not run"));
    assert_eq!(status(&mut w, 1, "/reports/q3", &reader), 200);
    assert_eq!(host.count(Counter::CanaryCompared), 0);
    // Promoted anyway: every request is refused rather than decided by the older policy.
    let (held, _) = w
        .answer(
            held,
            Some(200),
            Some(feed(answer(2, 2, json!({"policy": unusable})))),
            T0 + 20,
        )
        .poll()
        .expect("held again");
    assert_eq!(status(&mut w, 2, "/news/today", &reader), 503);
    assert_eq!(status(&mut w, 3, "/reports/q3", &reader), 503);
    assert_eq!(host.count(Counter::CanaryRefused), 2);
    w.answer(
        held,
        Some(200),
        Some(feed(answer(3, 3, json!({})))),
        T0 + 30,
    );
    assert_eq!(status(&mut w, 4, "/news/today", &reader), 200);
}

#[test]
fn a_promotion_drops_the_decisions_cached_under_the_other_routes() {
    let idp = Idp::new("k1");
    let (mut w, _, held) = started(&idp, json!({}));
    let t = token(&idp, "alice", "admin");
    let (call, _) = w.request(1, get("/admin/users", &t), T0 + 10).check();
    let decided = w.grpc(call, 0, Some(ok_reply(5_000, 1, false)), T0 + 10);
    assert_eq!(status_of(&decided.done()), 200);
    assert!(
        w.request(2, get("/admin/users", &t), T0 + 11)
            .checks
            .is_empty(),
        "cached"
    );
    // The same policy version on the feed: only the promotion itself drops the decision.
    w.answer(
        held,
        Some(200),
        Some(feed(answer(2, 2, json!({"policy": candidate()})))),
        T0 + 12,
    );
    assert!(
        !w.request(3, get("/admin/users", &t), T0 + 13)
            .checks
            .is_empty(),
        "decided under the other routes: asked again"
    );
}

#[test]
fn a_request_waiting_for_keys_is_refused_once_a_promotion_cannot_be_applied() {
    let idp = Idp::new("k1");
    let rotated = Idp::new("k2");
    let (mut w, _, held) = started(&idp, json!({}));
    // A new kid: the request waits for a refetch.
    let (fetch, _) = w
        .request(1, get("/news/today", &rotated.token("bob")), T0 + 10)
        .waits()
        .expect("a refetch");
    let mut unusable = candidate();
    unusable["routes"][2] = json!({"name": "news", "match": {"prefix": "/news", "methods": ["GET"]},
                                  "tier": "authenticated", "background_check_ms": 5000});
    w.answer(
        held,
        Some(200),
        Some(feed(answer(2, 2, json!({"policy": unusable})))),
        T0 + 20,
    );
    let decided = w
        .answer(fetch, Some(200), Some(rotated.jwks()), T0 + 30)
        .done();
    assert_eq!(status_of(&decided), 503, "not decided by the older routes");
}
