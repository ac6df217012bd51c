//! The canary's sampling, comparison and server-side judgement.

use super::*;
use serde_json::json;

fn policy(id: &str, admin_scope: &str) -> RoutePolicy {
    RoutePolicy {
        id: id.into(),
        routes: vec![
            json!({"name": "admin", "match": {"prefix": "/admin"}, "tier": "authenticated",
                   "require": {"scopes": [admin_scope]}}),
            json!({"name": "docs", "match": {"prefix": "/docs"}, "tier": "public"}),
        ],
        default: json!({"tier": "authenticated"}),
    }
}

/// Which of `user:0` … `user:39` candidate `v2` takes at 10%.
const PINNED_SAMPLE: [usize; 5] = [11, 12, 13, 18, 32];

fn canary(per_million: u32) -> Canary {
    Canary {
        candidate: policy("v2", "admin:write"),
        per_million,
        sticky: Sticky::Subject,
        log_per_million: MILLION,
        until_ms: None,
    }
}

fn claims(json: Value) -> Claims {
    Claims::from_json(json.to_string().as_bytes()).unwrap()
}

#[test]
fn a_candidate_is_read_with_the_filters_rules_and_every_problem_is_named() {
    let table = policy("v2", "admin:write").table().unwrap();
    assert_eq!(table.routes.len(), 2);
    assert_eq!(table.find("GET", "/admin/users").name, "admin");
    let bad = RoutePolicy {
        id: "has space".into(),
        routes: vec![
            json!({"name": "a", "match": {"prefix": "/a"}, "tier": "nope"}),
            json!("not an object"),
        ],
        default: json!({"tier": "authenticated", "extra": 1}),
    };
    let problems = bad.table().unwrap_err();
    assert!(
        problems.iter().any(|p| p.starts_with("id:")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("routes[1]")),
        "{problems:?}"
    );
    // Parsed ones are then checked by the filter's own route rules.
    let unknown_tier = RoutePolicy {
        id: "v3".into(),
        routes: vec![json!({"name": "a", "match": {"prefix": "/a"}, "tier": "nope"})],
        default: json!({"tier": "authenticated", "extra": 1}),
    };
    let problems = unknown_tier.table().unwrap_err();
    assert!(problems.iter().any(|p| p.contains("nope")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("extra")), "{problems:?}");
    let mut wrong = canary(0);
    wrong.log_per_million = MILLION + 1;
    wrong.candidate = unknown_tier;
    let problems = wrong.problems();
    assert!(problems.iter().any(|p| p.starts_with("per_million")));
    assert!(problems.iter().any(|p| p.starts_with("log_per_million")));
    assert!(problems
        .iter()
        .any(|p| p.starts_with("candidate.routes[0]")));
    assert!(canary(1).problems().is_empty());
}

#[test]
fn sampling_is_sticky_per_key_near_the_fraction_and_differs_per_candidate() {
    let tenth = canary(100_000);
    let keys: Vec<String> = (0..20_000).map(|i| format!("user:{i}")).collect();
    let sampled = keys.iter().filter(|k| tenth.samples(k)).count();
    assert!((1_700..=2_300).contains(&sampled), "{sampled}");
    // A fixed function of the candidate's id and the key: every filter and server (of any
    // version) takes the same callers. Pinned: changing the hash splits the sample.
    let pinned: Vec<usize> = (0..40).filter(|i| tenth.samples(&keys[*i])).collect();
    assert_eq!(
        pinned, PINNED_SAMPLE,
        "the sample of v2 at 10% among user:0..40"
    );
    // A larger share keeps everyone a smaller one took (the hash is compared to the share).
    let half = canary(500_000);
    assert!(keys
        .iter()
        .filter(|k| tenth.samples(k))
        .all(|k| half.samples(k)));
    // Another candidate, another sample.
    let mut other = canary(100_000);
    other.candidate.id = "v3".into();
    let both = keys
        .iter()
        .filter(|k| tenth.samples(k) && other.samples(k))
        .count();
    assert!(both < 400, "{both}");
    assert!(keys.iter().all(|k| canary(MILLION).samples(k)));
    // Without a key: exactly the share, by count.
    let by_count = (0..1_000_000u64).filter(|n| tenth.samples_nth(*n)).count();
    assert_eq!(by_count, 100_000);
    assert_eq!((0..10u64).filter(|n| tenth.samples_nth(*n)).count(), 1);
    assert!((0..100u64).all(|n| canary(MILLION).samples_nth(n)));
    let mut quiet = canary(MILLION);
    quiet.log_per_million = 0;
    assert!(!keys.iter().any(|k| quiet.logs(k)));
    assert!(keys.iter().all(|k| canary(MILLION).logs(k)));
}

#[test]
fn a_policy_that_would_weigh_on_every_feed_answer_is_refused() {
    let route = json!({"name": "r", "match": {"prefix": "/r"}, "tier": "authenticated"});
    let many = RoutePolicy {
        id: "big".into(),
        routes: vec![route; MAX_ROUTES + 1],
        default: json!({"tier": "authenticated"}),
    };
    let problems = many.configs().unwrap_err();
    assert!(
        problems.iter().any(|p| p.starts_with("routes: at most")),
        "{problems:?}"
    );
    let long = RoutePolicy {
        id: "long".into(),
        routes: vec![
            json!({"name": "r", "match": {"prefix": format!("/{}", "a".repeat(MAX_POLICY_BYTES))},
                            "tier": "authenticated"}),
        ],
        default: json!({"tier": "authenticated"}),
    };
    let problems = long.configs().unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains("bytes of JSON")),
        "{problems:?}"
    );
}

#[test]
fn a_canary_expires() {
    let mut c = canary(1);
    assert!(c.on_at(u64::MAX));
    c.until_ms = Some(100);
    assert!(c.on_at(99));
    assert!(!c.on_at(100));
}

fn outcome(route: &str, tier: Tier, judged: Judged) -> Outcome<'_> {
    Outcome {
        route,
        tier,
        judged,
    }
}

#[test]
fn disagreements_are_told_apart() {
    let allow = |tier| outcome("r", tier, Judged::Allow);
    let deny = |reason| outcome("r", Tier::Authenticated, Judged::Deny(reason));
    let server = outcome("r", Tier::Privileged, Judged::AskServer);
    let a = Tier::Authenticated;
    assert_eq!(compare(&allow(a), &allow(a)), None);
    assert_eq!(
        compare(&allow(a), &allow(Tier::StandardWrite)),
        Some(Disagreement::Tier)
    );
    assert_eq!(
        compare(&allow(a), &deny("insufficient_scope")),
        Some(Disagreement::CandidateDenies)
    );
    assert_eq!(
        compare(&deny("missing_token"), &allow(a)),
        Some(Disagreement::CandidateAllows)
    );
    assert_eq!(compare(&deny("expired"), &deny("expired")), None);
    assert_eq!(
        compare(&deny("expired"), &deny("missing_token")),
        Some(Disagreement::OtherDenial)
    );
    assert_eq!(compare(&allow(a), &server), Some(Disagreement::Tier));
    assert_eq!(compare(&deny("expired"), &server), Some(Disagreement::Tier));
    assert_eq!(compare(&server, &allow(a)), Some(Disagreement::Tier));
    assert_eq!(compare(&server, &server), None);
    let labels: Vec<&str> = Disagreement::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(
        labels,
        [
            "candidate_denies",
            "candidate_allows",
            "other_denial",
            "tier"
        ]
    );
}

#[test]
fn the_server_judges_the_candidate_from_what_the_active_decision_established() {
    let table = policy("v2", "admin:write").table().unwrap();
    let admin = table.find("GET", "/admin/x");
    let docs = table.find("GET", "/docs/x");
    let reader = claims(json!({"sub": "alice", "scope": "admin:read"}));
    let writer = claims(json!({"sub": "bob", "scope": "admin:write"}));
    let established = TokenState::Established(&reader);
    let judge =
        |route, token, denial| judge_candidate(route, route_tier(route), "/admin/x", token, denial);
    fn route_tier(route: &Route) -> Tier {
        route.tier
    }
    // The candidate's requirement is not met by an established token.
    assert_eq!(
        judge(admin, established, None),
        Some(Judged::Deny("insufficient_scope"))
    );
    assert_eq!(
        judge(admin, TokenState::Established(&writer), None),
        Some(Judged::Allow)
    );
    // The active route's requirement failed, the candidate's holds: the candidate allows.
    assert_eq!(
        judge(
            admin,
            TokenState::Established(&writer),
            Some(&DenyReason::InsufficientScope)
        ),
        Some(Judged::Allow)
    );
    // Any other denial stands for the candidate too.
    assert_eq!(
        judge(
            admin,
            TokenState::Established(&writer),
            Some(&DenyReason::RateLimited)
        ),
        Some(Judged::Deny("rate_limited"))
    );
    let revoked = DenyReason::Revoked;
    assert_eq!(
        judge(admin, TokenState::Refused(&revoked), Some(&revoked)),
        Some(Judged::Deny("revoked"))
    );
    // A public candidate route allows whatever the token; a token never looked at cannot be
    // judged.
    assert_eq!(
        judge(docs, TokenState::NotLooked, None),
        Some(Judged::Allow)
    );
    assert_eq!(judge(admin, TokenState::NotLooked, None), None);
}

#[test]
fn a_proxy_decision_reads_as_a_verdict() {
    let allow = Decision::Allow {
        route: "fresh".into(),
        tier: Tier::Authenticated,
        upstream_headers: Vec::new(),
        subject: None,
        token: None,
    };
    assert_eq!(Judged::of_decision(&allow, |_| false), Judged::Allow);
    assert_eq!(
        Judged::of_decision(&allow, |r| r == "fresh"),
        Judged::AskServer
    );
    let server = Decision::Deny {
        route: "p".into(),
        tier: Tier::Privileged,
        reason: DenyReason::ServerRequired,
    };
    assert_eq!(Judged::of_decision(&server, |_| false), Judged::AskServer);
    let scope = Decision::Deny {
        route: "p".into(),
        tier: Tier::Authenticated,
        reason: DenyReason::InsufficientScope,
    };
    assert_eq!(
        Judged::of_decision(&scope, |_| false).label(),
        "deny:insufficient_scope"
    );
}
