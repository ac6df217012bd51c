//! The route policies this server decides with: the configured one, or a promoted one, and a
//! candidate in dry-run beside it (`authz_core::canary`), kept as incident switches
//! (`canary`, `policy`) and rebuilt here whenever those switches change, wherever the change
//! was made (the admin API, another instance through the shared tier, the switches file).
//!
//! A promoted policy this server cannot read (written by a newer server, say) makes every
//! check fail closed until one it can read arrives: deciding with the older policy could allow
//! what the promoted one refuses. A candidate it cannot read is not run (logged).
//!
//! What it does not do: decide (`check` does, and asks [`RoutePolicies::enforced`] and
//! [`RoutePolicies::canary`] once per check).

use authz_core::canary::Canary;
use authz_core::routes::RouteTable;
use authz_core::switches::Switches;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A candidate running in dry-run: its settings and its route table.
#[derive(Debug)]
pub struct CanaryTable {
    pub canary: Canary,
    pub table: RouteTable,
    /// Checks without a sampling key seen (taken at the share by count).
    keyless: AtomicU64,
    /// Disagreements without a sampling key (logged at the log share by count).
    keyless_disagreements: AtomicU64,
}

impl CanaryTable {
    /// Whether a check with `key` (its subject or token, by the canary's `sticky`) is in the
    /// canary; checks without one are taken at the share by count.
    pub fn takes(&self, key: Option<&str>) -> bool {
        match key {
            Some(key) => self.canary.samples(key),
            None => self
                .canary
                .samples_nth(self.keyless.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Whether a disagreement of a check with `key` is logged.
    pub fn logs(&self, key: Option<&str>) -> bool {
        match key {
            Some(key) => self.canary.logs(key),
            None => self
                .canary
                .logs_nth(self.keyless_disagreements.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    /// The promoted table (`None`: the configured one is enforced).
    promoted: Option<Arc<RouteTable>>,
    /// A promoted policy that could not be read: every check fails closed.
    refused: bool,
    canary: Option<Arc<CanaryTable>>,
    /// What the tables were built from (rebuilt only when it changes).
    built_from: (
        Option<Box<authz_core::canary::RoutePolicy>>,
        Option<Box<Canary>>,
    ),
}

/// The route tables of the moment.
#[derive(Debug)]
pub struct RoutePolicies {
    configured: Arc<RouteTable>,
    held: RwLock<Held>,
}

impl RoutePolicies {
    pub fn new(configured: RouteTable) -> RoutePolicies {
        RoutePolicies {
            configured: Arc::new(configured),
            held: RwLock::new(Held::default()),
        }
    }

    /// The table to decide with, or `None` while a promoted policy could not be read.
    pub fn enforced(&self) -> Option<Arc<RouteTable>> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        if held.refused {
            return None;
        }
        Some(
            held.promoted
                .clone()
                .unwrap_or_else(|| self.configured.clone()),
        )
    }

    /// The candidate in dry-run at `now_ms`, if any.
    pub fn canary(&self, now_ms: u64) -> Option<Arc<CanaryTable>> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.canary.clone().filter(|c| c.canary.on_at(now_ms))
    }

    /// Rebuilds the tables from the switches in force.
    pub fn update(&self, switches: &Switches) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        let wanted = (switches.policy.clone(), switches.canary.clone());
        if held.built_from == wanted {
            return;
        }
        if held.built_from.0 != wanted.0 {
            match &switches.policy {
                None => {
                    held.promoted = None;
                    held.refused = false;
                    tracing::warn!("route_policy_enforced: the configured one");
                }
                Some(policy) => match policy.table() {
                    Ok(table) => {
                        held.promoted = Some(Arc::new(table));
                        held.refused = false;
                        tracing::warn!(policy = %policy.id, "route_policy_enforced");
                    }
                    Err(problems) => {
                        held.refused = true;
                        tracing::error!(policy = %policy.id, problems = %problems.join("; "), "route_policy_refused: every check fails closed until a readable one is promoted or the promotion is reverted");
                    }
                },
            }
        }
        if held.built_from.1 != wanted.1 {
            held.canary = match &switches.canary {
                None => None,
                Some(canary) => match canary.candidate.table() {
                    Ok(table) => {
                        tracing::info!(candidate = %canary.candidate.id, per_million = canary.per_million, "canary_started");
                        Some(Arc::new(CanaryTable {
                            canary: (**canary).clone(),
                            table,
                            keyless: AtomicU64::new(0),
                            keyless_disagreements: AtomicU64::new(0),
                        }))
                    }
                    Err(problems) => {
                        tracing::error!(candidate = %canary.candidate.id, problems = %problems.join("; "), "canary_refused: not run");
                        None
                    }
                },
            };
        }
        held.built_from = wanted;
    }
}
