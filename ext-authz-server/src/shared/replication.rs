//! Changes the primary holds but too few replicas acknowledged (`redis.min_replicas`, Redis
//! `WAIT`): with Sentinel, a failover promotes a replica, and a change only the failed primary
//! held would be lost with it.
//!
//! After each publication the server asks for `min_replicas` acknowledgements within
//! `replica_wait`. Redis replicates in order, so one acknowledged `WAIT` covers every earlier
//! write of the connection: a change that was not acknowledged is kept here until a later
//! `WAIT` (the session loop asks again every stream read) covers it. When a session ends (the
//! primary failed, or a failover moved it) the next session publishes every change still kept
//! here again, before anything else. A change published twice is harmless: a revocation is
//! the same revocation, a subject's or the policy's second bump only drops caches again.

use super::Shared;
use crate::lock;
use crate::versions::Change;
use std::time::Duration;

/// How long the session loop's `WAIT` for kept changes may take.
const CATCH_UP_WAIT: Duration = Duration::from_millis(10);

impl Shared {
    /// Whether `min_replicas` replicas acknowledged every write of the manager's connection so
    /// far, within `replica_wait` (true when `min_replicas` is 0). Counted by result.
    pub(super) async fn replicated(&self) -> bool {
        self.replicated_within(self.config.replica_wait).await
    }

    /// [`Shared::replicated`], waiting at most `wait` (at least 1 ms: `WAIT … 0` blocks).
    async fn replicated_within(&self, wait: Duration) -> bool {
        let wanted = self.config.min_replicas;
        if wanted == 0 {
            return true;
        }
        let Some(mut conn) = self.connection() else {
            return false;
        };
        let wait_ms = (wait.as_millis() as u64).max(1);
        let acknowledged = Shared::with_timeout(
            wait + self.config.op_timeout,
            redis::cmd("WAIT")
                .arg(wanted)
                .arg(wait_ms)
                .query_async::<u64>(&mut conn),
        )
        .await;
        let enough = matches!(acknowledged, Ok(n) if n >= u64::from(wanted));
        self.metrics.inc(
            "authz_shared_replication_waits_total",
            &[("result", if enough { "acknowledged" } else { "short" })],
        );
        if !enough {
            tracing::warn!(
                wanted,
                acknowledged = ?acknowledged,
                "shared_change_unreplicated: fewer replicas than redis.min_replicas hold it; published again after a reconnection"
            );
        }
        enough
    }

    /// Keeps a published change that too few replicas acknowledged.
    pub(super) fn keep_unreplicated(&self, change: Change) {
        let kept = {
            let mut kept = lock(&self.unreplicated);
            kept.push(change);
            kept.len()
        };
        self.metrics
            .set_gauge("authz_shared_unreplicated", &[], kept as f64);
    }

    /// In the session loop: one short `WAIT` for the kept changes (replicas that caught up
    /// since; it must not hold up the stream reads that confirm this instance's state);
    /// acknowledged, they are safe.
    pub(super) async fn confirm_replication(&self) {
        if lock(&self.unreplicated).is_empty() {
            return;
        }
        if self.replicated_within(CATCH_UP_WAIT).await {
            lock(&self.unreplicated).clear();
            self.metrics
                .set_gauge("authz_shared_unreplicated", &[], 0.0);
        }
    }

    /// At a session's start: the kept changes are published again (first in the outbox).
    pub(super) fn requeue_unreplicated(&self) {
        let kept: Vec<Change> = std::mem::take(&mut *lock(&self.unreplicated));
        if kept.is_empty() {
            return;
        }
        self.metrics
            .set_gauge("authz_shared_unreplicated", &[], 0.0);
        let mut outbox = lock(&self.outbox);
        let later = std::mem::take(&mut *outbox);
        *outbox = kept;
        outbox.extend(later);
    }

    /// Changes published but not yet acknowledged by enough replicas.
    pub fn unreplicated(&self) -> usize {
        lock(&self.unreplicated).len()
    }
}
