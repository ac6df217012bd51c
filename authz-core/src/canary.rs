//! Canary and dry-run of a route policy: a candidate (routes and default, in the filter's
//! syntax: rules, tiers, freshness windows) decided beside the active one on a sticky share of
//! traffic, enforced nowhere, its disagreements counted and logged; then promoted (it becomes
//! the active policy in every filter and server) or abandoned.
//!
//! The server keeps the canary and a promoted policy as two incident switches
//! ([`crate::switches::Setting::Canary`], [`crate::switches::Setting::Policy`]), so they travel
//! on every change-feed answer, are shared through the shared tier and survive restarts like
//! the other switches. This module owns what both sides compute alike:
//!
//! - which requests are in the canary ([`Canary::samples`]: a keyed hash of the subject or the
//!   token, so a caller is in or out for the whole canary on every proxy and server; requests
//!   without either are taken at the fraction by count, [`Canary::samples_nth`]);
//! - what the candidate says ([`Judged`]), and on the server, from what the active decision
//!   established ([`judge_candidate`]);
//! - whether the two disagree and how ([`compare`]).
//!
//! Pure: no clock (times are parameters), no I/O.

use crate::claims::Claims;
use crate::config::{route_table_from_config, RouteConfig, RouteTargetConfig};
use crate::decision::{Decision, DenyReason};
use crate::routes::{Route, RouteTable};
use crate::tier::Tier;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A route policy as written: the filter's `routes` and `default`, with a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// Names the policy in logs, metrics and the admin API (e.g. the policy file's revision).
    pub id: String,
    pub routes: Vec<Value>,
    pub default: Value,
}

/// The longest policy id: it appears in every disagreement's log line.
pub const MAX_ID_BYTES: usize = 64;
/// The most routes a runtime route policy may have, and its largest JSON form: it travels on
/// every change-feed answer while it is in force.
pub const MAX_ROUTES: usize = 256;
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

impl RoutePolicy {
    /// The route rules as the filter's configuration types, every problem named.
    pub fn configs(&self) -> Result<(Vec<RouteConfig>, Option<RouteTargetConfig>), Vec<String>> {
        let mut problems = Vec::new();
        if self.id.is_empty()
            || self.id.len() > MAX_ID_BYTES
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            problems.push(format!("id: 1 to {MAX_ID_BYTES} of A-Z a-z 0-9 - . _ :"));
        }
        if self.routes.len() > MAX_ROUTES {
            problems.push(format!("routes: at most {MAX_ROUTES}"));
        }
        let bytes = serde_json::to_vec(self).map_or(usize::MAX, |json| json.len());
        if bytes > MAX_POLICY_BYTES {
            problems.push(format!(
                "{bytes} bytes of JSON: at most {MAX_POLICY_BYTES} (it travels on every change-feed answer)"
            ));
        }
        let mut routes = Vec::new();
        for (i, value) in self.routes.iter().enumerate() {
            match serde_json::from_value::<RouteConfig>(value.clone()) {
                Ok(route) => routes.push(route),
                Err(e) => problems.push(format!("routes[{i}]: {e}")),
            }
        }
        let default = match serde_json::from_value::<RouteTargetConfig>(self.default.clone()) {
            Ok(default) => Some(default),
            Err(e) => {
                problems.push(format!("default: {e}"));
                None
            }
        };
        if problems.is_empty() {
            Ok((routes, default))
        } else {
            Err(problems)
        }
    }

    /// The route table, checked as the filter's loader checks its own (every problem named).
    pub fn table(&self) -> Result<RouteTable, Vec<String>> {
        let (routes, default) = self.configs()?;
        route_table_from_config(&routes, &default)
    }
}

/// What makes a request's canary membership sticky.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// The token's principal (`sub`, else `client_id`): one caller, all its tokens.
    #[default]
    Subject,
    /// The token itself.
    Token,
}

/// Parts per million: the whole.
pub const MILLION: u32 = 1_000_000;

/// A candidate in dry-run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub candidate: RoutePolicy,
    /// The share of traffic decided by both, in parts per million (1 to 1000000).
    pub per_million: u32,
    #[serde(default)]
    pub sticky: Sticky,
    /// The share of disagreements logged with both verdicts, in parts per million (default:
    /// every one; counters count them all).
    #[serde(default = "every_one")]
    pub log_per_million: u32,
    /// The dry run stops by itself at this time (server clock, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

fn every_one() -> u32 {
    MILLION
}

impl Canary {
    /// What is wrong with it, every problem named (the candidate's rules included).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MILLION).contains(&self.per_million) {
            problems.push(format!("per_million: must be between 1 and {MILLION}"));
        }
        if self.log_per_million > MILLION {
            problems.push(format!("log_per_million: must be at most {MILLION}"));
        }
        if let Err(rules) = self.candidate.table() {
            problems.extend(rules.into_iter().map(|p| format!("candidate.{p}")));
        }
        problems
    }

    /// Whether the dry run is on at `now_ms`.
    pub fn on_at(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| now_ms < until)
    }

    /// Whether the caller named by `key` (its subject or token, by [`Canary::sticky`]) is in
    /// the canary: the same answer for the same key on every proxy and server, for the whole
    /// canary, and an answer that differs per candidate.
    pub fn samples(&self, key: &str) -> bool {
        bucket(&self.candidate.id, b"sample", key) < self.per_million
    }

    /// Whether the `n`-th request without a key (0-based, counted by the caller) is in the
    /// canary: exactly `per_million` in a million, spread evenly.
    pub fn samples_nth(&self, n: u64) -> bool {
        share_takes(self.per_million, n)
    }

    /// Whether a disagreement of the caller named by `key` is logged.
    pub fn logs(&self, key: &str) -> bool {
        bucket(&self.candidate.id, b"log", key) < self.log_per_million
    }

    /// Whether the `n`-th disagreement without a key (0-based, counted by the caller) is
    /// logged: `log_per_million` in a million.
    pub fn logs_nth(&self, n: u64) -> bool {
        share_takes(self.log_per_million, n)
    }
}

/// Whether the `n`-th of a sequence is among `per_million` in a million, spread evenly.
pub fn share_takes(per_million: u32, n: u64) -> bool {
    let share = u64::from(per_million);
    let million = u64::from(MILLION);
    (n.saturating_add(1)).saturating_mul(share) / million > n.saturating_mul(share) / million
}

/// A number in `0..MILLION` from the candidate's id, a purpose and a key (SHA-256).
fn bucket(id: &str, purpose: &[u8], key: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(id.as_bytes())
        .chain_update([0])
        .chain_update(purpose)
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 4];
    for (slot, byte) in first.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    u32::from_be_bytes(first) % MILLION
}

/// What one policy says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    Allow,
    /// Denied, for this reason (a [`DenyReason::as_str`] label).
    Deny(&'static str),
    /// The policy sends the request to the ext_authz server (a server-decided tier, or a route
    /// with `fresh_cache_ms`): the proxy cannot tell the server's verdict.
    AskServer,
}

impl Judged {
    /// What a proxy's local decision says. `fresh_cache` tells whether a route (by name) asks
    /// the server first.
    pub fn of_decision(decision: &Decision, asks_server: impl Fn(&str) -> bool) -> Judged {
        match decision {
            Decision::Allow { route, .. } if asks_server(route) => Judged::AskServer,
            Decision::Allow { .. } => Judged::Allow,
            Decision::Deny {
                reason: DenyReason::ServerRequired,
                ..
            } => Judged::AskServer,
            Decision::Deny { reason, .. } => Judged::Deny(reason.as_str()),
            Decision::AwaitKeys { failure, .. } => {
                Judged::Deny(DenyReason::Token(failure.clone()).as_str())
            }
        }
    }

    /// `allow`, `deny:<reason>` or `server`, for log lines.
    pub fn label(&self) -> String {
        match self {
            Judged::Allow => "allow".into(),
            Judged::Deny(reason) => format!("deny:{reason}"),
            Judged::AskServer => "server".into(),
        }
    }
}

/// One policy's view of a request: the route it matched, its tier, its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<'a> {
    pub route: &'a str,
    pub tier: Tier,
    pub judged: Judged,
}

/// How the candidate differs from the active policy on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disagreement {
    /// The active policy allows, the candidate denies.
    CandidateDenies,
    /// The active policy denies, the candidate allows.
    CandidateAllows,
    /// Both deny, for different reasons.
    OtherDenial,
    /// The candidate decides the request at another tier (or sends it to the server) with the
    /// same or an unknown verdict.
    Tier,
}

impl Disagreement {
    pub const ALL: [Disagreement; 4] = [
        Disagreement::CandidateDenies,
        Disagreement::CandidateAllows,
        Disagreement::OtherDenial,
        Disagreement::Tier,
    ];

    /// The label in metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Disagreement::CandidateDenies => "candidate_denies",
            Disagreement::CandidateAllows => "candidate_allows",
            Disagreement::OtherDenial => "other_denial",
            Disagreement::Tier => "tier",
        }
    }
}

/// Whether and how `candidate` disagrees with `active` on one request. Two denials for the same
/// reason agree whatever their tiers; two allows at different tiers do not (the upstream sees
/// another tier, and the tier decides freshness and fallbacks).
pub fn compare(active: &Outcome<'_>, candidate: &Outcome<'_>) -> Option<Disagreement> {
    match (active.judged, candidate.judged) {
        (Judged::Allow, Judged::Allow) => {
            (active.tier != candidate.tier).then_some(Disagreement::Tier)
        }
        (Judged::Allow, Judged::Deny(_)) => Some(Disagreement::CandidateDenies),
        (Judged::Deny(_), Judged::Allow) => Some(Disagreement::CandidateAllows),
        (Judged::Deny(a), Judged::Deny(b)) => (a != b).then_some(Disagreement::OtherDenial),
        (Judged::AskServer, Judged::AskServer) => None,
        (Judged::AskServer, _) | (_, Judged::AskServer) => Some(Disagreement::Tier),
    }
}

/// What the active decision established about the token, for judging the candidate on the
/// server without asking the IdP again.
#[derive(Debug, Clone, Copy)]
pub enum TokenState<'a> {
    /// The active route needs no token: it was not looked at.
    NotLooked,
    /// Refused before its claims could be used (missing, invalid, inactive, revoked, ...).
    Refused(&'a DenyReason),
    /// Verified or introspected, active, for this API, not revoked: its claims.
    Established(&'a Claims),
}

/// Whether a denial is a route's requirement not met (the reasons a candidate with other
/// requirements can answer otherwise).
pub fn is_requirement(reason: &DenyReason) -> bool {
    matches!(
        reason,
        DenyReason::InsufficientScope | DenyReason::ClaimMismatch | DenyReason::TenantMismatch
    )
}

/// The candidate's verdict on the server: its route (`route`, at `tier`) judged from what the
/// active decision established (`token`) and how it ended (`active_denial`, if denied).
/// `None` when it cannot be judged without looking at a token the active decision never looked
/// at. A denial that is not about the route's requirements (a step-up, a rate limit, a
/// Status List, ...) stands for the candidate too.
pub fn judge_candidate(
    route: &Route,
    tier: Tier,
    match_path: &str,
    token: TokenState<'_>,
    active_denial: Option<&DenyReason>,
) -> Option<Judged> {
    if !tier.requires_token() {
        return Some(Judged::Allow);
    }
    match token {
        TokenState::NotLooked => None,
        TokenState::Refused(reason) => Some(Judged::Deny(reason.as_str())),
        TokenState::Established(claims) => Some(match route.require.check(claims, match_path) {
            Err(unmet) => Judged::Deny(DenyReason::from(unmet).as_str()),
            Ok(()) => match active_denial {
                Some(reason) if !is_requirement(reason) => Judged::Deny(reason.as_str()),
                _ => Judged::Allow,
            },
        }),
    }
}

#[cfg(test)]
mod tests;
