//! Route policies at runtime (`authz_core::canary`) as one worker applies them: a promoted
//! policy replaces the configured routes and default; a candidate in dry-run is decided
//! beside the active policy on its sticky share of the requests this worker decides locally,
//! and only counted and logged. Both arrive with the incident switches on the change feed
//! (`switches::take_switches`), so within the feed's bound.
//!
//! - Promoted: the routes are checked as the configuration's own are (the settings that need
//!   the server link included). One this worker cannot apply makes it refuse every request
//!   (503) until one it can apply arrives: enforcing the older policy instead could allow what
//!   the promoted one refuses. Reverted (`policy: null`): the configured routes again. Cached
//!   server decisions are dropped on every change (they were made under the other routes).
//! - Candidate: one this worker cannot apply is not run (counted in `authz_proxy_canary_refused_total`,
//!   logged): a dry run that cannot start here shows before it is promoted. Requests the
//!   active policy sends to the server are compared by the server, not here.
//!
//! A worker that has not read its feed yet enforces its configured routes: render a promoted
//! policy into the configuration (`authz-config`) to make it permanent.
//!
//! What it does not do: decide a request (`worker` does, and calls [`compare_on_sample`]).

use crate::commands::OwnedRequest;
use crate::host::{Host, LogLevel};
use crate::metrics::{Counter, Gauge};
use crate::worker::Worker;
use authz_core::canary::{compare, Canary, Judged, Outcome, RoutePolicy, Sticky};
use authz_core::routes::RouteTable;
use authz_core::switches::Switches;
use authz_core::{Decision, Policy, VerifiedToken, VerifyFailure};
use std::sync::Arc;

/// The route policies one worker holds besides the configured one.
pub(crate) struct RoutePolicies {
    /// The configured routes and default, enforced again when a promotion is reverted.
    configured: RouteTable,
    /// The promoted policy the feed last named (applied, or refused).
    promoted: Option<Box<RoutePolicy>>,
    /// The promoted policy could not be applied: every request is refused until one can.
    pub refused_promotion: bool,
    /// The canary the feed last named (running, or refused).
    seen_canary: Option<Box<Canary>>,
    /// The candidate in dry-run here.
    pub run: Option<CanaryRun>,
}

/// A candidate running in dry-run.
pub(crate) struct CanaryRun {
    pub canary: Canary,
    /// The active policy with the candidate's routes.
    pub candidate: Policy,
    /// Requests without a sampling key seen so far (taken at the share by count).
    keyless: u64,
    /// Disagreements without a sampling key so far (logged at the log share by count).
    keyless_disagreements: u64,
}

impl RoutePolicies {
    pub fn new(configured: RouteTable) -> RoutePolicies {
        RoutePolicies {
            configured,
            promoted: None,
            refused_promotion: false,
            seen_canary: None,
            run: None,
        }
    }
}

impl CanaryRun {
    /// The request's sampling key, if it has one: its bearer token, or the subject of the
    /// token the active decision verified.
    fn key(
        &self,
        request: &OwnedRequest,
        verified: Option<&Result<Arc<VerifiedToken>, VerifyFailure>>,
    ) -> Option<String> {
        match self.canary.sticky {
            Sticky::Token => request.bearer().map(str::to_owned),
            Sticky::Subject => verified
                .and_then(|v| v.as_ref().ok())
                .and_then(|v| v.claims.principal())
                .map(|p| p.key()),
        }
    }

    /// Whether the request is in the canary, and its key.
    pub fn takes(
        &mut self,
        request: &OwnedRequest,
        verified: Option<&Result<Arc<VerifiedToken>, VerifyFailure>>,
    ) -> Option<Option<String>> {
        let key = self.key(request, verified);
        let taken = match &key {
            Some(key) => self.canary.samples(key),
            None => {
                let n = self.keyless;
                self.keyless = self.keyless.wrapping_add(1);
                self.canary.samples_nth(n)
            }
        };
        taken.then_some(key)
    }
}

/// Counts (and, at the canary's log share, logs) how the candidate's decision compares with
/// the active one for a sampled request.
pub(crate) fn compare_on_sample<H: Host>(
    host: &H,
    run: &mut CanaryRun,
    active_policy: &Policy,
    request: &OwnedRequest,
    key: Option<&str>,
    active: &Decision,
    candidate: &Decision,
) {
    host.count(Counter::CanaryCompared);
    let active = outcome(active, |name| asks_server(&active_policy.routes, name));
    let candidate = outcome(candidate, |name| asks_server(&run.candidate.routes, name));
    let Some(kind) = compare(&active, &candidate) else {
        return;
    };
    host.count(Counter::CanaryDisagreement(kind));
    let logged = match key {
        Some(key) => run.canary.logs(key),
        None => {
            let n = run.keyless_disagreements;
            run.keyless_disagreements = n.wrapping_add(1);
            run.canary.logs_nth(n)
        }
    };
    if logged {
        host.log(
            LogLevel::Info,
            &format!(
                "jwt_authz canary_disagreement candidate={} kind={} route={} tier={} active={} candidate_route={} candidate_tier={} candidate={} method={} path={} token={}",
                run.canary.candidate.id,
                kind.as_str(),
                active.route,
                active.tier,
                active.judged.label(),
                candidate.route,
                candidate.tier,
                candidate.judged.label(),
                request.method,
                authz_core::routes::path_only(&request.path),
                request.token_label()
            ),
        );
    }
}

/// Whether route `name` of `table` asks the server first (`fresh_cache_ms`).
fn asks_server(table: &RouteTable, name: &str) -> bool {
    table
        .named(name)
        .is_some_and(|r| r.fresh_cache_ms.is_some())
}

fn outcome(decision: &Decision, asks_server: impl Fn(&str) -> bool) -> Outcome<'_> {
    let (route, tier) = match decision {
        Decision::Allow { route, tier, .. }
        | Decision::Deny { route, tier, .. }
        | Decision::AwaitKeys { route, tier, .. } => (route.as_str(), *tier),
    };
    Outcome {
        route,
        tier,
        judged: Judged::of_decision(decision, asks_server),
    }
}

impl<H: Host> Worker<H> {
    /// Takes the route policies of the switches a feed answer carried.
    pub(crate) fn take_route_policies(&mut self, read: &Switches) {
        if read.policy != self.route_policies.promoted {
            self.enforce(read.policy.clone());
        }
        if read.canary != self.route_policies.seen_canary {
            self.start_canary(read.canary.clone());
        }
    }

    /// Enforces `promoted` (or, for `None`, the configured routes again).
    fn enforce(&mut self, promoted: Option<Box<RoutePolicy>>) {
        let table = match &promoted {
            None => Ok(self.route_policies.configured.clone()),
            Some(policy) => self.policy.route_table_of(policy),
        };
        let name = promoted
            .as_ref()
            .map_or("the configured one", |p| p.id.as_str());
        match table {
            Ok(table) => {
                let background = table.routes.iter().any(|r| r.background_check_ms.is_some());
                self.policy.routes = table;
                self.background.set_enabled(background);
                self.caches.decisions.clear();
                self.host.set_gauge(Gauge::CacheEntries, 0);
                self.route_policies.refused_promotion = false;
                self.host.log(
                    LogLevel::Warn,
                    &format!("jwt_authz route policy now enforced: {name}"),
                );
            }
            Err(problems) => {
                self.route_policies.refused_promotion = true;
                self.host.count(Counter::CanaryRefused);
                self.host.log(
                    LogLevel::Error,
                    &format!(
                        "jwt_authz promoted route policy {name} cannot be applied here: {}; every request is refused (503) until one that can is promoted or the promotion is reverted",
                        problems.join("; ")
                    ),
                );
            }
        }
        self.route_policies.promoted = promoted;
    }

    /// Runs `canary` in dry-run (or stops the one running, for `None`).
    fn start_canary(&mut self, canary: Option<Box<Canary>>) {
        self.route_policies.run = None;
        self.route_policies.seen_canary = canary.clone();
        let Some(canary) = canary else {
            self.host.log(LogLevel::Info, "jwt_authz canary stopped");
            return;
        };
        match self.policy.route_table_of(&canary.candidate) {
            Ok(table) => {
                let mut candidate = self.policy.clone();
                candidate.routes = table;
                self.host.log(
                    LogLevel::Info,
                    &format!(
                        "jwt_authz canary started: candidate {} on {} per million of callers (by {:?})",
                        canary.candidate.id, canary.per_million, canary.sticky
                    ),
                );
                self.route_policies.run = Some(CanaryRun {
                    canary: *canary,
                    candidate,
                    keyless: 0,
                    keyless_disagreements: 0,
                });
            }
            Err(problems) => {
                self.host.count(Counter::CanaryRefused);
                self.host.log(
                    LogLevel::Error,
                    &format!(
                        "jwt_authz canary candidate {} cannot be applied here, not run: {}",
                        canary.candidate.id,
                        problems.join("; ")
                    ),
                );
            }
        }
    }
}
