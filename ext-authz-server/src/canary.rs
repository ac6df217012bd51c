//! The canary on the server: a check in the candidate's sample (`authz_core::canary`) is judged
//! by the candidate too, from what the active decision established about its token (no second
//! IdP call), counted and, at the canary's log share, logged with both verdicts. The active
//! verdict is the one answered.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `authz_canary_compared_total` | counter | checks judged by both policies |
//! | `authz_canary_disagreements_total` | counter | `route` (the active one), `kind` (`candidate_denies`, `candidate_allows`, `other_denial`, `tier`), `reason` (the denying side's reason; `-` for `tier`) |
//!
//! Not compared: a filter's check after the answer (the filter compared that request when it
//! answered it), and a check whose active route needs no token while the candidate's does (the
//! token was never looked at; the filter compares the requests it decides itself).

use crate::check::{identify_in, CheckService, Identified, Trace};
use crate::route_policies::CanaryTable;
use authz_core::canary::{compare, judge_candidate, Judged, Outcome, Sticky, TokenState};
use authz_core::decision::bearer_token;
use authz_core::Verdict;
use envoy_types::ext_authz::v3::pb::CheckRequest;

impl CheckService {
    /// Judges `request` by the candidate as well, when it is in the canary's sample.
    pub(crate) fn compare_with_candidate(
        &self,
        canary: &CanaryTable,
        request: &CheckRequest,
        id: &Identified<'_>,
        verdict: &Verdict,
        trace: &Trace,
    ) {
        if id.background {
            return;
        }
        let key = match canary.canary.sticky {
            Sticky::Subject => trace.subject.clone(),
            Sticky::Token => id.authorization.and_then(bearer_token).map(str::to_owned),
        };
        if !canary.takes(key.as_deref()) {
            return;
        }
        let Ok(candidate_id) = identify_in(&self.config, &canary.table, request) else {
            return;
        };
        let active_denial = match verdict {
            Verdict::Deny(reason) => Some(reason),
            Verdict::Allow { .. } => None,
        };
        let token = match (&trace.established, active_denial) {
            _ if !id.tier.requires_token() => TokenState::NotLooked,
            (Some(claims), _) => TokenState::Established(claims),
            (None, Some(reason)) => TokenState::Refused(reason),
            (None, None) => TokenState::NotLooked,
        };
        let Some(candidate_judged) = judge_candidate(
            candidate_id.route,
            candidate_id.tier,
            &candidate_id.match_path,
            token,
            active_denial,
        ) else {
            return;
        };
        self.metrics.inc("authz_canary_compared_total", &[]);
        let active = Outcome {
            route: &id.route.name,
            tier: id.tier,
            judged: match active_denial {
                Some(reason) => Judged::Deny(reason.as_str()),
                None => Judged::Allow,
            },
        };
        let candidate = Outcome {
            route: &candidate_id.route.name,
            tier: candidate_id.tier,
            judged: candidate_judged,
        };
        let Some(kind) = compare(&active, &candidate) else {
            return;
        };
        let reason = match (candidate.judged, active.judged) {
            (Judged::Deny(reason), _) | (_, Judged::Deny(reason)) => reason,
            _ => "-",
        };
        self.metrics.inc(
            "authz_canary_disagreements_total",
            &[
                ("route", active.route),
                ("kind", kind.as_str()),
                ("reason", reason),
            ],
        );
        if canary.logs(key.as_deref()) {
            tracing::info!(
                candidate = %canary.canary.candidate.id,
                kind = kind.as_str(),
                route = %active.route,
                tier = %active.tier,
                active = %active.judged.label(),
                candidate_route = %candidate.route,
                candidate_tier = %candidate.tier,
                candidate_verdict = %candidate.judged.label(),
                method = %id.method,
                path = %authz_core::routes::path_only(&id.match_path),
                token = %trace.token_label,
                "canary_disagreement"
            );
        }
    }
}
