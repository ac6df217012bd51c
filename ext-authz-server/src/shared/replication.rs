//! Changes the primary holds but too few replicas acknowledged (`redis.min_replicas`, Redis
//! `WAIT`): with Sentinel, a failover promotes a replica, and a change only the failed primary
//! held is missing there. Such changes are not lost: every instance that holds one finds, at
//! its next session, that the store is behind it or no longer holds the last entry it read
//! under that number (`stream::Shared::diverged`), and republishes everything it knows. This
//! module tells the operator how exposed the fleet is meanwhile: the admin API's
//! `"unreplicated"` (instead of `"published"`) and the `authz_shared_unreplicated` gauge.
//!
//! Publications and their `WAIT` go through the session's own connection (the publisher), so
//! a `WAIT` never holds up the check path's commands, and a `WAIT` always follows the writes it
//! vouches for on the same connection. After a publication (or a batch of them, from the
//! outbox) the server asks for `min_replicas` acknowledgements within `replica_wait`. Redis
//! replicates in order, so one acknowledged `WAIT` covers every earlier write of the
//! connection: a change that was not acknowledged is counted here until a later `WAIT` (the
//! session loop asks again, briefly, every stream read) covers it.

use super::link::Link;
use super::Shared;
use crate::lock;
use std::time::Duration;

/// How long the session loop's `WAIT` for kept changes may take.
const CATCH_UP_WAIT: Duration = Duration::from_millis(10);

impl Shared {
    /// Whether `min_replicas` replicas acknowledged every write to the primary `publisher`
    /// went to, so far (a probe write, then `WAIT` on that connection: the one a publication
    /// went through, so the answer is about the node that holds it), within `replica_wait`
    /// (true when `min_replicas` is 0). Counted by result.
    pub(super) async fn replicated(&self, publisher: &mut Link) -> bool {
        self.replicated_within(publisher, self.config.replica_wait)
            .await
    }

    /// [`Shared::replicated`], waiting at most `wait` (at least 1 ms: `WAIT … 0` blocks).
    async fn replicated_within(&self, conn: &mut Link, wait: Duration) -> bool {
        let wanted = self.config.min_replicas;
        if wanted == 0 {
            return true;
        }
        let wait_ms = (wait.as_millis() as u64).max(1);
        let acknowledged = Shared::with_timeout(
            wait + self.config.op_timeout,
            redis::pipe()
                .cmd("INCR")
                .arg(&self.keys.replication_probe)
                .ignore()
                .cmd("WAIT")
                .arg(wanted)
                .arg(wait_ms)
                .query_async::<(u64,)>(conn),
        )
        .await
        .map(|(n,)| n);
        let enough = matches!(acknowledged, Ok(n) if n >= u64::from(wanted));
        self.metrics.inc(
            "authz_shared_replication_waits_total",
            &[("result", if enough { "acknowledged" } else { "short" })],
        );
        if !enough {
            tracing::warn!(
                wanted,
                acknowledged = ?acknowledged,
                "shared_change_unreplicated: fewer replicas than redis.min_replicas acknowledged it; a failover now finds it missing, and the instances that hold it republish it"
            );
        }
        enough
    }

    /// Counts published changes that too few replicas acknowledged.
    pub(super) fn keep_unreplicated(&self, changes: usize) {
        let kept = {
            let mut kept = lock(&self.unreplicated);
            *kept = kept.saturating_add(changes);
            *kept
        };
        self.metrics
            .set_gauge("authz_shared_unreplicated", &[], kept as f64);
    }

    /// In the session loop: one short `WAIT` (after a probe write) for the counted changes
    /// (replicas that caught up since; it must not hold up the stream reads that confirm
    /// this instance's state); acknowledged, they are on the replicas.
    pub(super) async fn confirm_replication(&self) {
        // Only what was counted before the WAIT is covered by it: a change counted meanwhile
        // (published by an admin call after the probe) stays counted.
        let covered = *lock(&self.unreplicated);
        if covered == 0 {
            return;
        }
        let Some((_, mut publisher)) = self.publisher() else {
            return;
        };
        if self.replicated_within(&mut publisher, CATCH_UP_WAIT).await {
            let left = {
                let mut kept = lock(&self.unreplicated);
                *kept = kept.saturating_sub(covered);
                *kept
            };
            self.metrics
                .set_gauge("authz_shared_unreplicated", &[], left as f64);
        }
    }

    /// Published changes not yet acknowledged by enough replicas.
    pub fn unreplicated(&self) -> usize {
        *lock(&self.unreplicated)
    }
}
