//! Replication of revocation-state changes through the Redis stream: recording a change made
//! here (published, or kept in the outbox while Redis is away), catching up on (re)connect,
//! republishing after Redis lost its data, following the stream, and confirming that this
//! instance's state is current.

use super::connection::{next_reconnect_delay, PrimaryCheck, FIRST_RECONNECT};
use super::events::{decode, decode_subject, decode_switch, encode, with_shared_count};
use super::{Delivery, Shared};
use crate::changes::ChangeSink;
use crate::lock;
use crate::versions::{random_incarnation, Applied, Change};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::RedisError;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Records a change made through this instance's admin API: published to every instance
/// when there is a shared tier, applied here at once either way.
pub async fn record(
    sink: &dyn ChangeSink,
    shared: Option<&Shared>,
    change: Change,
) -> (Applied, Delivery) {
    let Some(shared) = shared else {
        return (sink.apply(&change, None), Delivery::Local);
    };
    match shared.publish_one(&change).await {
        Ok((seq, n)) => {
            let change = with_shared_count(change, n);
            let applied = sink.apply(&change, Some(seq));
            if shared.replicated().await {
                (applied, Delivery::Published)
            } else {
                shared.keep_unreplicated(1);
                (applied, Delivery::Unreplicated)
            }
        }
        Err(e) => {
            shared.error("publish", &e);
            let applied = sink.apply(&change, None);
            let pending = {
                let mut outbox = lock(&shared.outbox);
                outbox.push(change);
                outbox.len()
            };
            shared
                .metrics
                .set_gauge("authz_shared_outbox", &[], pending as f64);
            (applied, Delivery::Pending)
        }
    }
}

/// Where the stream reader is.
#[derive(Debug, Default)]
struct Cursor {
    last_seq: u64,
    incarnation: Option<String>,
    /// The last entry read: its sequence and a fingerprint of its fields. After a failover the
    /// new primary may lack the entries the old one had not passed on, and give their numbers
    /// to other changes: the entry under this number then differs (see `Shared::diverged`).
    last_entry: Option<(u64, u64)>,
}

/// A fingerprint of a stream entry's fields (in key order).
fn fingerprint(entry: &StreamId) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut fields: Vec<(&String, String)> = entry
        .map
        .iter()
        .map(|(k, v)| (k, format!("{v:?}")))
        .collect();
    fields.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    fields.hash(&mut hasher);
    hasher.finish()
}

/// The sequence number of a stream entry id (`SEQ-1`).
fn seq_of(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl Shared {
    /// Publishes a change through the session's publisher connection (no retry: a failure
    /// keeps the change in the outbox, and the next session publishes it).
    async fn publish_one(&self, change: &Change) -> Result<(u64, u64), String> {
        let mut conn = self.publisher().ok_or("not connected")?;
        let (kind, value, at) = encode(change);
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(&self.keys.seq)
            .key(&self.keys.events)
            .key(&self.keys.subjects)
            .key(&self.keys.policy)
            .key(&self.keys.switches)
            .arg(kind)
            .arg(value)
            .arg(at)
            .arg(self.config.stream_max_len)
            .arg(&self.origin)
            .arg(match change {
                Change::Switch(switch) => switch.setting.slot(),
                _ => String::new(),
            });
        // Publishing is an admin action, not on the check path: allow more than op_timeout.
        Shared::with_timeout(
            self.config.op_timeout.max(Duration::from_secs(1)),
            invocation.invoke_async::<(u64, u64)>(&mut conn),
        )
        .await
    }

    fn apply_entries(&self, sink: &dyn ChangeSink, entries: &[StreamId], cursor: &mut Cursor) {
        for entry in entries {
            match decode(entry) {
                Some((seq, change)) => {
                    let (kind, _, _) = encode(&change);
                    sink.apply(&change, Some(seq));
                    self.metrics
                        .inc("authz_shared_events_total", &[("kind", kind)]);
                    self.versions.advance_to(seq);
                    if seq >= cursor.last_seq {
                        cursor.last_entry = Some((seq, fingerprint(entry)));
                    }
                    cursor.last_seq = cursor.last_seq.max(seq);
                }
                None => self.error("decode", &format!("unreadable stream entry {}", entry.id)),
            }
        }
    }

    /// Loads the snapshot, catches up on the stream, republishes after a data loss, and
    /// flushes the outbox.
    async fn resync(
        &self,
        sink: &dyn ChangeSink,
        conn: &mut MultiplexedConnection,
        cursor: &mut Cursor,
    ) -> Result<(), RedisError> {
        let _: Option<String> = redis::cmd("SET")
            .arg(&self.keys.incarnation)
            .arg(random_incarnation())
            .arg("NX")
            .query_async(conn)
            .await?;
        let incarnation: String = redis::cmd("GET")
            .arg(&self.keys.incarnation)
            .query_async(conn)
            .await?;
        let remote_seq: Option<u64> = redis::cmd("GET")
            .arg(&self.keys.seq)
            .query_async(conn)
            .await?;
        let ours = self.versions.change_version();
        let lost = cursor
            .incarnation
            .as_ref()
            .is_some_and(|i| *i != incarnation)
            || remote_seq.unwrap_or(0) < ours;
        let diverged = !lost && self.diverged(conn, cursor).await?;
        if lost || diverged {
            let reason = if lost { "store_lost" } else { "diverged" };
            self.metrics
                .inc("authz_shared_resyncs_total", &[("reason", reason)]);
            tracing::warn!(
                our_version = ours,
                store_version = remote_seq,
                reason,
                "shared_store_lost"
            );
            let _: u64 = self
                .floor
                .key(&self.keys.seq)
                .arg(ours)
                .invoke_async(conn)
                .await?;
            lock(&self.outbox).extend(self.versions.export());
            cursor.last_seq = 0;
            cursor.last_entry = None;
        } else {
            self.metrics
                .inc("authz_shared_resyncs_total", &[("reason", "connect")]);
        }
        self.versions.set_incarnation(&incarnation);
        cursor.incarnation = Some(incarnation);

        let policy: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(&self.keys.policy)
            .query_async(conn)
            .await?;
        if let (Some(version), Some(seq)) = (policy.get("version"), policy.get("seq")) {
            sink.apply(
                &Change::BumpPolicy {
                    version: Some(*version),
                },
                Some(*seq),
            );
        }
        let subjects: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.subjects)
            .query_async(conn)
            .await?;
        for (subject, value) in &subjects {
            if let Some((seq, change)) = decode_subject(subject, value) {
                sink.apply(&change, Some(seq));
            }
        }
        // The switches in force: the stream may have been trimmed past their changes.
        let switches: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.switches)
            .query_async(conn)
            .await?;
        for (slot, value) in &switches {
            match decode_switch(value) {
                Some((seq, change)) => {
                    sink.apply(&change, Some(seq));
                }
                None => self.error("decode", &format!("unreadable switch {slot}")),
            }
        }
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.keys.events)
                .arg(format!("({}-1", cursor.last_seq))
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            self.apply_entries(sink, &page.ids, cursor);
            if page.ids.len() < 1000 {
                break;
            }
        }
        self.flush_outbox(sink).await;
        self.confirm();
        Ok(())
    }

    /// Whether the store no longer holds the last entry this instance read under its number
    /// (a failover to a replica that lacked it, whose next changes took that number): the
    /// stream past it cannot be trusted to continue what was read, so everything is read and
    /// republished again. An entry trimmed away (`stream_max_len`) is no evidence either way.
    async fn diverged(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &Cursor,
    ) -> Result<bool, RedisError> {
        let Some((seq, read)) = cursor.last_entry else {
            return Ok(false);
        };
        let id = format!("{seq}-1");
        let at: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.events)
            .arg(&id)
            .arg(&id)
            .query_async(conn)
            .await?;
        if let Some(entry) = at.ids.first() {
            return Ok(fingerprint(entry) != read);
        }
        let first: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.events)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(match first.ids.first() {
            // Trimmed past it: the stream now starts after it.
            Some(entry) => seq_of(&entry.id).is_none_or(|first_seq| first_seq <= seq),
            None => true,
        })
    }

    /// Publishes what was recorded while Redis could not take it, in order; stops at the
    /// first failure and keeps the rest. One `WAIT` covers the batch.
    async fn flush_outbox(&self, sink: &dyn ChangeSink) {
        let outbox: Vec<Change> = std::mem::take(&mut *lock(&self.outbox));
        let mut unsent = Vec::new();
        let mut published = Vec::new();
        for (i, change) in outbox.iter().enumerate() {
            match self.publish_one(change).await {
                Ok((seq, n)) => {
                    let change = with_shared_count(change.clone(), n);
                    sink.apply(&change, Some(seq));
                    published.push(change);
                }
                Err(e) => {
                    self.error("publish", &e);
                    unsent.extend(outbox[i..].iter().cloned());
                    break;
                }
            }
        }
        let left = {
            let mut outbox = lock(&self.outbox);
            unsent.append(&mut outbox);
            *outbox = unsent;
            outbox.len()
        };
        self.metrics
            .set_gauge("authz_shared_outbox", &[], left as f64);
        if !published.is_empty() && !self.replicated().await {
            self.keep_unreplicated(published.len());
        }
    }

    /// One connected session: resync, then follow the stream until an error, or until the
    /// sentinels name another primary.
    async fn session(&self, sink: &dyn ChangeSink, cursor: &mut Cursor) -> Result<(), RedisError> {
        let primary = self.primary().await?;
        let session_primary = primary.get_connection_info().addr.to_string();
        let mut conn = self.reader(&primary).await?;
        self.connect_publisher(&primary).await?;
        self.ensure_manager(&primary).await?;
        self.resync(sink, &mut conn, cursor).await?;
        self.mark_synced();
        tracing::info!(
            version = self.versions.change_version(),
            policy_version = self.versions.policy_version(),
            "shared_tier_synced"
        );
        let check_every = self.primary_check_every().as_millis() as u64;
        let mut checked_ms = self.clock.now_ms();
        let mut vouched_ms = checked_ms;
        loop {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(self.config.block.as_millis() as u64)
                .arg("COUNT")
                .arg(1000)
                .arg("STREAMS")
                .arg(&self.keys.events)
                .arg(format!("{}-1", cursor.last_seq))
                .query_async(&mut conn)
                .await?;
            let now_ms = self.clock.now_ms();
            if now_ms.saturating_sub(checked_ms) >= check_every {
                checked_ms = now_ms;
                match self.check_primary(&session_primary).await {
                    PrimaryCheck::Same => vouched_ms = now_ms,
                    PrimaryCheck::Moved => {
                        tracing::warn!(primary = %session_primary, "shared_primary_moved");
                        return Err(RedisError::from((
                            redis::ErrorKind::IoError,
                            "the sentinels name another primary",
                        )));
                    }
                    PrimaryCheck::Unknown => {}
                }
            }
            // Only while the sentinels vouch for this primary (always, for one Redis).
            if now_ms.saturating_sub(vouched_ms) <= self.config.max_unconfirmed_ms {
                self.confirm();
            }
            if let Some(reply) = reply {
                for key in &reply.keys {
                    self.apply_entries(sink, &key.ids, cursor);
                }
            }
            if self.pending() > 0 {
                self.flush_outbox(sink).await;
                if self.pending() > 0 {
                    // The publisher failed while the reader lives (an idle timeout, a killed
                    // client): a new session reconnects both rather than keep changes local.
                    return Err(RedisError::from((
                        redis::ErrorKind::IoError,
                        "publishing failed: reconnecting",
                    )));
                }
            }
            self.confirm_replication().await;
        }
    }
}

/// Keeps the instance in sync with the shared tier until the process ends: connects,
/// resynchronises, follows the stream, and starts over (with backoff) after any error.
pub async fn run(shared: Arc<Shared>, sink: Arc<dyn ChangeSink>) {
    let mut cursor = Cursor::default();
    let mut backoff = FIRST_RECONNECT;
    loop {
        let started_ms = shared.clock.now_ms();
        let result = shared.session(sink.as_ref(), &mut cursor).await;
        // No publication between sessions: the primary may have moved (an admin call keeps
        // its change in the outbox, and the next session publishes it there).
        *shared.publisher.write().unwrap_or_else(|p| p.into_inner()) = None;
        // Whether this session ever confirmed our state: read before the reset below (reading
        // it after always said no, so the backoff never reset and every later Redis blip cost
        // seconds of fail-closed 503s).
        let session_confirmed = shared.confirmed_at_ms.load(Ordering::Relaxed) >= started_ms;
        shared.confirmed_at_ms.store(0, Ordering::Relaxed);
        if let Err(e) = result {
            shared.error("session", &e);
        }
        backoff = next_reconnect_delay(backoff, session_confirmed);
        tokio::time::sleep(backoff).await;
    }
}
