//! `authz-config candidate`: a policy file's routes and default as a canary candidate, the body
//! of the server's `POST /admin/canary` (`authz_core::canary`). The whole policy is rendered
//! first, so a candidate is only produced from a policy the filter, the server and Envoy all
//! load; the candidate is then checked as both sides check it at runtime.
//!
//! A candidate carries routes, not Envoy's routes: in `mode: native`, Envoy's routes decide
//! which requests reach the server, so a candidate that moves a route between a filter-decided
//! and a server-decided tier needs Envoy's routes re-rendered too ([`Candidate::warnings`]
//! says so); promoted without that, such a route fails closed (the filter refuses what its
//! routes send to the server; the server takes the stricter of Envoy's tier and its own).

use crate::{render_with_env, Mode, PolicyFile};
use authz_core::canary::{Canary, RoutePolicy, Sticky};
use serde_json::{json, Value};

/// A rendered candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `POST /admin/canary`'s body (`action: start`).
    pub body: Value,
    /// What an operator should know before promoting it.
    pub warnings: Vec<String>,
}

/// What the candidate is asked for with.
#[derive(Debug, Clone)]
pub struct CandidateSettings {
    pub id: String,
    pub by: String,
    pub per_million: u32,
    pub sticky: Sticky,
}

/// The candidate of `policy_text` (see the module doc); every problem named.
pub fn candidate(
    policy_text: &str,
    settings: &CandidateSettings,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Candidate, Vec<String>> {
    let rendered = render_with_env(policy_text, env)?;
    let policy: PolicyFile =
        serde_yaml::from_str(policy_text).map_err(|e| vec![format!("policy: {e}")])?;
    let routes = rendered
        .filter
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let default = rendered.filter.get("default").cloned().unwrap_or_default();
    let canary = Canary {
        candidate: RoutePolicy {
            id: settings.id.clone(),
            routes,
            default,
        },
        per_million: settings.per_million,
        sticky: settings.sticky,
        log_per_million: authz_core::canary::MILLION,
        until_ms: None,
    };
    let problems = canary.problems();
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut warnings = Vec::new();
    if policy
        .server
        .as_ref()
        .is_some_and(|s| s.mode == Mode::Native)
    {
        warnings.push("mode: native: Envoy's routes decide which requests reach the server; if this candidate moves a route between a filter-decided and a server-decided tier, render and roll out Envoy's routes with it (promoted alone, such a route fails closed)".to_owned());
    }
    Ok(Candidate {
        body: json!({"action": "start", "by": settings.by, "canary": canary}),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_million: u32) -> CandidateSettings {
        CandidateSettings {
            id: "v2".into(),
            by: "alice".into(),
            per_million,
            sticky: Sticky::Token,
        }
    }

    fn env(_: &str) -> Option<String> {
        Some("a-feed-token-of-enough-length-0123456789".into())
    }

    #[test]
    fn a_policys_routes_become_a_candidate_both_sides_accept() {
        let text = include_str!("../../config/policy.filter-mode.yaml");
        let rendered = render_with_env(text, &env).unwrap();
        let made = candidate(text, &settings(50_000), &env).unwrap();
        assert_eq!(made.body["action"], "start");
        assert_eq!(made.body["by"], "alice");
        let canary: Canary = serde_json::from_value(made.body["canary"].clone()).unwrap();
        assert_eq!(
            canary.candidate.routes,
            rendered.filter["routes"].as_array().cloned().unwrap()
        );
        assert_eq!(canary.candidate.default, rendered.filter["default"]);
        assert_eq!((canary.per_million, canary.sticky), (50_000, Sticky::Token));
        assert!(canary.problems().is_empty());
        assert!(made.warnings.is_empty(), "filter mode");
        let native = include_str!("../../config/policy.example.yaml");
        assert!(!candidate(native, &settings(1), &env)
            .unwrap()
            .warnings
            .is_empty());
        let refused = candidate(text, &settings(0), &env).unwrap_err();
        assert!(
            refused.iter().any(|p| p.starts_with("per_million")),
            "{refused:?}"
        );
        let mut bad_id = settings(1);
        bad_id.id = "has space".into();
        assert!(candidate(text, &bad_id, &env).is_err());
    }
}
