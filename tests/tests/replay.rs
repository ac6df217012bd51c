//! The replay harness (see `tests::replay`): a bounded run with the change feed pushed, two
//! server replicas sharing Redis and one of them restarted while a revocation is issued, must
//! show no violation; the same traffic with the feed off (neither pushed nor polled), with
//! locally decided tiers ignoring revocations, with replicas that do not share a state, or with
//! reads not checked after the answer (a token the IdP revoked), must show violations, which
//! proves the checker can fail.

use std::time::Duration;
use tests::replay::{run_replay, ReplayPlan, Report, SecondReplica};

fn caught(report: &Report, name: &str) -> bool {
    report
        .violations
        .iter()
        .any(|v| v.starts_with(&format!("{name}:")))
}

#[test]
fn mixed_traffic_never_sees_a_stale_allow_past_the_documented_bounds() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 250,
        duration: Duration::from_millis(10_500),
        idp_down_at: Some(Duration::from_millis(3_500)),
        max_unreachable_ms: 2_000,
        push_wait_ms: 1_000,
        local_revocations: true,
        restart_server_at: Some(Duration::from_millis(5_000)),
        second_replica: SecondReplica::Shared,
        background_checks: true,
    });
    report.print();
    assert!(
        report.requests > 500,
        "too little traffic: {}",
        report.requests
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn the_checker_catches_stale_allows_when_the_feed_is_neither_pushed_nor_polled() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 0,
        duration: Duration::from_millis(3_500),
        idp_down_at: None,
        max_unreachable_ms: 60_000,
        push_wait_ms: 0,
        local_revocations: true,
        restart_server_at: None,
        second_replica: SecondReplica::None,
        background_checks: false,
    });
    report.print();
    for name in [
        "revoked-token",
        "revoked-subject",
        "local-revoked-token",
        "local-revoked-writer",
    ] {
        assert!(
            caught(&report, name),
            "the checker missed {name}: {:#?}",
            report.violations
        );
    }
}

#[test]
fn the_checker_catches_a_token_the_idp_revoked_when_reads_are_not_checked_after_the_answer() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 250,
        duration: Duration::from_millis(4_500),
        idp_down_at: None,
        max_unreachable_ms: 2_000,
        push_wait_ms: 1_000,
        local_revocations: true,
        restart_server_at: None,
        second_replica: SecondReplica::None,
        background_checks: false,
    });
    report.print();
    assert!(
        caught(&report, "idp-revoked-read"),
        "the checker missed a token the IdP revoked: {:#?}",
        report.violations
    );
}

#[test]
fn the_checker_catches_stale_allows_when_local_tiers_ignore_revocations() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 250,
        duration: Duration::from_millis(3_500),
        idp_down_at: None,
        max_unreachable_ms: 2_000,
        push_wait_ms: 1_000,
        local_revocations: false,
        restart_server_at: None,
        second_replica: SecondReplica::None,
        background_checks: false,
    });
    report.print();
    assert!(
        caught(&report, "local-revoked-token") && caught(&report, "local-revoked-writer"),
        "the checker missed local stale allows: {:#?}",
        report.violations
    );
    assert!(
        !caught(&report, "revoked-token"),
        "server tiers honour revocations either way: {:#?}",
        report.violations
    );
}

#[test]
fn the_checker_catches_stale_allows_when_replicas_do_not_share_a_state() {
    let report = run_replay(&ReplayPlan {
        poll_interval_ms: 250,
        duration: Duration::from_millis(4_000),
        idp_down_at: None,
        max_unreachable_ms: 2_000,
        push_wait_ms: 1_000,
        local_revocations: true,
        restart_server_at: None,
        second_replica: SecondReplica::Unshared,
        background_checks: true,
    });
    report.print();
    assert!(
        caught(&report, "revoked-token") || caught(&report, "revoked-subject"),
        "a replica that never heard of a revocation answers: {:#?}",
        report.violations
    );
}
