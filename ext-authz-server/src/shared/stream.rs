//! Replication of revocation-state changes through the Redis stream: recording a change made
//! here (published, or kept in the outbox while Redis is away), catching up on (re)connect,
//! republishing after Redis lost its data, following the stream, and confirming that this
//! instance's state is current.

use super::connection::{next_reconnect_delay, FIRST_RECONNECT};
use super::events::{decode, decode_subject, decode_switch, encode, with_shared_count};
use super::link::Link;
use super::{Delivery, Shared};
use crate::changes::ChangeSink;
use crate::lock;
use crate::versions::{random_incarnation, Applied, Change};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::RedisError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        Ok((seq, n, mut publisher)) => {
            let change = with_shared_count(change, n);
            let applied = sink.apply(&change, Some(seq));
            if shared.replicated(&mut publisher).await {
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
                outbox.push_back(change);
                outbox.len()
            };
            shared.outbox_added.notify_one();
            shared
                .metrics
                .set_gauge("authz_shared_outbox", &[], pending as f64);
            (applied, Delivery::Pending)
        }
    }
}

/// Entries per stream read (the catch-up and the follow).
const READ_PAGE: usize = 1000;

/// Where the stream reader is.
#[derive(Debug, Default)]
struct Cursor {
    last_seq: u64,
    incarnation: Option<String>,
    /// The last entry read: its sequence and a fingerprint of its fields. After a failover the
    /// new primary may lack the entries the old one had not passed on, and give their numbers
    /// to other changes: the entry under this number then differs (see `Shared::diverged`).
    last_entry: Option<(u64, u64)>,
    /// Set when the reader found that the store renumbered one of this instance's own
    /// publications (see `own`): everything is read and republished again.
    diverged: bool,
    /// Own publications the reader passed without finding them: lost, unless the stream was
    /// trimmed past them (`Shared::settle_missing` tells which).
    missing: std::collections::BTreeMap<u64, Change>,
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
    /// keeps the change in the outbox, and the next session publishes it). A publication whose
    /// session ended before it was answered counts as failed: its primary may no longer be
    /// one, so the change is published again (twice is harmless).
    /// Returns the number the store gave it, the store's count (see `with_shared_count`), and
    /// the connection it went through (whose `WAIT` covers it).
    async fn publish_one(&self, change: &Change) -> Result<(u64, u64, Link), String> {
        let (session, mut conn) = self.publisher().ok_or("not connected")?;
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
        // Publishing is an admin action, not on the check path: allow more than op_timeout,
        // and room for a `WAIT` of another publication ahead of it on the connection.
        let (seq, n) = Shared::with_timeout(
            self.command_budget(),
            invocation.invoke_async::<(u64, u64)>(&mut conn),
        )
        .await?;
        let mut unread = lock(&self.unread);
        if self.session.load(Ordering::SeqCst) != session {
            return Err("the session ended before the publication was answered".into());
        }
        unread.published(seq, change);
        Ok((seq, n, conn))
    }

    fn apply_entries(&self, sink: &dyn ChangeSink, entries: &[StreamId], cursor: &mut Cursor) {
        for entry in entries {
            match decode(entry) {
                Some((seq, change)) => {
                    let (kind, _, _) = encode(&change);
                    if !lock(&self.unread).read(seq, &change) {
                        cursor.diverged = true;
                    }
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
        let mut missing = lock(&self.unread).read_through(cursor.last_seq);
        cursor.missing.append(&mut missing);
    }

    /// Own publications the reader passed without finding them: when the stream still reaches
    /// back to them, the store skipped their numbers (a divergence: everything is read and
    /// republished); trimmed past them (`stream_max_len`), there is no evidence either way,
    /// so they alone are published again (harmless if they were there).
    async fn settle_missing(&self, conn: &mut Link, cursor: &mut Cursor) -> Result<(), RedisError> {
        let Some(&last_missing) = cursor.missing.keys().next_back() else {
            return Ok(());
        };
        // Taken only once the question is answered: on an error they stay for the next try.
        let reaches_back = self.reaches_back_to(conn, last_missing).await?;
        let missing = std::mem::take(&mut cursor.missing);
        if reaches_back {
            cursor.diverged = true;
        } else {
            tracing::warn!(
                changes = missing.len(),
                "shared_own_publications_trimmed: published again"
            );
            lock(&self.outbox).extend(missing.into_values());
            self.outbox_added.notify_one();
        }
        Ok(())
    }

    /// After the store lost changes (a new incarnation, a sequence below ours) or renumbered
    /// them (a failover): raises the sequence above ours, queues everything this instance
    /// knows for publishing again, and reads the stream from the start.
    async fn start_over(
        &self,
        conn: &mut Link,
        cursor: &mut Cursor,
        reason: &'static str,
        store_version: Option<u64>,
    ) -> Result<(), RedisError> {
        let ours = self.versions.change_version();
        self.metrics
            .inc("authz_shared_resyncs_total", &[("reason", reason)]);
        tracing::warn!(
            our_version = ours,
            store_version,
            reason,
            "shared_store_lost"
        );
        let _: u64 = self
            .floor
            .key(&self.keys.seq)
            .arg(ours)
            .invoke_async(conn)
            .await?;
        // Everything known replaces the outbox (whose changes were all applied here first, so
        // the export holds them): a store that keeps losing its data does not pile up copies.
        *lock(&self.outbox) = self.versions.export().into();
        lock(&self.unread).restart();
        cursor.last_seq = 0;
        cursor.last_entry = None;
        cursor.diverged = false;
        cursor.missing.clear();
        self.outbox_added.notify_one();
        Ok(())
    }

    /// Reads the stream from the cursor to its end.
    async fn catch_up(
        &self,
        sink: &dyn ChangeSink,
        conn: &mut Link,
        cursor: &mut Cursor,
    ) -> Result<(), RedisError> {
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.keys.events)
                .arg(format!("({}-1", cursor.last_seq))
                .arg("+")
                .arg("COUNT")
                .arg(READ_PAGE)
                .query_async(conn)
                .await?;
            self.apply_entries(sink, &page.ids, cursor);
            if page.ids.len() < READ_PAGE {
                return Ok(());
            }
        }
    }

    /// Loads the snapshot, catches up on the stream, republishes after a data loss, and
    /// flushes the outbox.
    /// `vouched_ms`: when the sentinels were asked for this primary (see `confirm_read`).
    async fn resync(
        &self,
        sink: &dyn ChangeSink,
        conn: &mut Link,
        cursor: &mut Cursor,
        vouched_ms: u64,
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
            self.start_over(conn, cursor, reason, remote_seq).await?;
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
        self.catch_up(sink, conn, cursor).await?;
        self.settle_missing(conn, cursor).await?;
        if cursor.diverged {
            // A publication of ours the store lost or renumbered, found while catching up.
            self.start_over(conn, cursor, "diverged", remote_seq)
                .await?;
            self.catch_up(sink, conn, cursor).await?;
        }
        // The outbox is published by the session's publishing loop, beside the reader.
        self.confirm_read(self.clock.now_ms(), vouched_ms);
        Ok(())
    }

    /// Whether the store no longer holds the last entry this instance read under its number
    /// (a failover to a replica that lacked it, whose next changes took that number): the
    /// stream past it cannot be trusted to continue what was read, so everything is read and
    /// republished again. An entry trimmed away (`stream_max_len`) is no evidence either way.
    async fn diverged(&self, conn: &mut Link, cursor: &Cursor) -> Result<bool, RedisError> {
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
        self.reaches_back_to(conn, seq).await
    }

    /// Whether the stream still reaches back to `seq` (its first entry is at or before it, or
    /// it is empty), so an entry missing under `seq` was lost; trimmed past it
    /// (`stream_max_len`), a missing entry is no evidence either way.
    async fn reaches_back_to(&self, conn: &mut Link, seq: u64) -> Result<bool, RedisError> {
        let first: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.events)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(match first.ids.first() {
            Some(entry) => seq_of(&entry.id).is_none_or(|first_seq| first_seq <= seq),
            None => true,
        })
    }

    /// Publishes what was recorded while Redis could not take it, in order; stops at the
    /// first failure and keeps the rest. One `WAIT` covers the batch. A change leaves the
    /// outbox only once published, so a flush cut short (the session ends while it awaits)
    /// loses nothing: at worst a change is published twice, which is harmless.
    async fn flush_outbox(&self, sink: &dyn ChangeSink) {
        let mut published = 0;
        let mut publisher = None;
        loop {
            let Some(change) = lock(&self.outbox).front().cloned() else {
                break;
            };
            match self.publish_one(&change).await {
                Ok((seq, n, conn)) => {
                    {
                        // Only this loop takes from the front; others add at the back.
                        let mut outbox = lock(&self.outbox);
                        if outbox.front() == Some(&change) {
                            outbox.pop_front();
                        }
                    }
                    sink.apply(&with_shared_count(change, n), Some(seq));
                    published += 1;
                    publisher = Some(conn);
                }
                Err(e) => {
                    self.error("publish", &e);
                    break;
                }
            }
        }
        self.metrics
            .set_gauge("authz_shared_outbox", &[], self.pending() as f64);
        if let Some(mut publisher) = publisher {
            if !self.replicated(&mut publisher).await {
                self.keep_unreplicated(published);
            }
        }
    }

    /// One connected session: resync, then follow the stream until an error, or until the
    /// sentinels name another primary.
    async fn session(
        &self,
        sink: &dyn ChangeSink,
        cursor: &mut Cursor,
        session: u64,
    ) -> Result<(), RedisError> {
        // Asked now (before the sentinels are): the state read from this primary is confirmed
        // at most as of this moment, until they vouch for it again.
        let vouched_ms = AtomicU64::new(self.clock.now_ms());
        let (mut conn, session_primary, primary) = self.open_session(session).await?;
        self.resync(sink, &mut conn, cursor, vouched_ms.load(Ordering::Relaxed))
            .await?;
        self.mark_synced();
        tracing::info!(
            version = self.versions.change_version(),
            policy_version = self.versions.policy_version(),
            "shared_tier_synced"
        );
        let read_ms = AtomicU64::new(self.clock.now_ms());
        let moved = self.watch_primary(&session_primary, &vouched_ms, &read_ms);
        tokio::pin!(moved);
        let publishing = self.keep_publishing(sink, &primary, session);
        tokio::pin!(publishing);
        let mut behind = false;
        loop {
            let mut xread = redis::cmd("XREAD");
            if !behind {
                xread.arg("BLOCK").arg(self.config.block.as_millis() as u64);
            }
            // After a full page, the next read does not wait: an empty answer confirms at once.
            xread
                .arg("COUNT")
                .arg(READ_PAGE)
                .arg("STREAMS")
                .arg(&self.keys.events)
                .arg(format!("{}-1", cursor.last_seq));
            let read = xread.query_async::<Option<StreamReadReply>>(&mut conn);
            let reply = tokio::select! {
                reply = read => reply?,
                () = &mut moved => {
                    tracing::warn!(primary = %session_primary, "shared_primary_moved");
                    return Err(RedisError::from((
                        redis::ErrorKind::IoError,
                        "the primary moved",
                    )));
                }
                never = &mut publishing => match never {},
            };
            let read_at_ms = self.clock.now_ms();
            let mut entries = 0;
            if let Some(reply) = reply {
                for key in &reply.keys {
                    entries += key.ids.len();
                    self.apply_entries(sink, &key.ids, cursor);
                }
            }
            // Current as of this read once its entries are applied, and only if it reached the
            // end of the stream (a full page leaves more to read).
            behind = entries >= READ_PAGE;
            if !behind {
                read_ms.store(read_at_ms, Ordering::Relaxed);
                self.confirm_read(read_at_ms, vouched_ms.load(Ordering::Relaxed));
            }
            self.settle_missing(&mut conn, cursor).await?;
            if cursor.diverged {
                self.start_over(&mut conn, cursor, "diverged", None).await?;
            }
        }
    }

    /// A session's publishing, beside its reader (so the reader's confirmations never wait
    /// for a publication or a `WAIT`): publishes the outbox whenever changes are kept there,
    /// through a new publisher connection to `primary` if the current one fails, and asks the
    /// replicas about unreplicated changes. It never ends the session: a primary that refuses
    /// writes but answers reads (`NOREPLICAS`, `OOM`) is retried with backoff, while the
    /// reader keeps confirming the state; a primary that is gone ends the session through the
    /// reader.
    async fn keep_publishing(
        &self,
        sink: &dyn ChangeSink,
        primary: &redis::Client,
        session: u64,
    ) -> std::convert::Infallible {
        let mut backoff = FIRST_RECONNECT;
        let mut stalled = false;
        loop {
            let _ = tokio::time::timeout(self.config.block, self.outbox_added.notified()).await;
            if self.pending() > 0 {
                self.flush_outbox(sink).await;
            }
            if self.pending() > 0 {
                // The publisher failed (an idle timeout, a killed client): a new one.
                match self.reopen_publisher(primary, session).await {
                    Ok(()) => self.flush_outbox(sink).await,
                    Err(e) => self.error("publisher", &e),
                }
            }
            if self.pending() > 0 {
                if !stalled {
                    tracing::error!(
                        pending = self.pending(),
                        "shared_publishing_stalled: the primary answers reads but takes no publication; changes made here stay here until it does"
                    );
                    stalled = true;
                }
                backoff = next_reconnect_delay(backoff, false);
                tokio::time::sleep(backoff).await;
            } else {
                stalled = false;
                backoff = FIRST_RECONNECT;
            }
            self.confirm_replication().await;
        }
    }

    /// Confirms this instance's state as current as of the older of its last stream read
    /// (`read_ms`) and, with Sentinel, the last time a majority of the sentinels vouched for
    /// the primary it reads from (`vouched_ms`): so the state is never confirmed for longer
    /// than `max_unconfirmed_ms` past either. Called after each read and each vouch.
    pub(super) fn confirm_read(&self, read_ms: u64, vouched_ms: u64) {
        let as_of = if self.vouched() {
            read_ms.min(vouched_ms)
        } else {
            read_ms
        };
        self.confirm_as_of(as_of);
    }
}

/// Keeps the instance in sync with the shared tier until the process ends: connects,
/// resynchronises, follows the stream, and starts over (with backoff) after any error.
pub async fn run(shared: Arc<Shared>, sink: Arc<dyn ChangeSink>) {
    let mut cursor = Cursor::default();
    let mut backoff = FIRST_RECONNECT;
    loop {
        let started_ms = shared.clock.now_ms();
        let session = shared.session.load(Ordering::SeqCst);
        let result = shared.session(sink.as_ref(), &mut cursor, session).await;
        // No publication between sessions: the primary may have moved (an admin call keeps
        // its change in the outbox, and the next session publishes it there; one answered
        // after this point counts as failed, see `publish_one`).
        *shared.publisher.write().unwrap_or_else(|p| p.into_inner()) = None;
        {
            let _unread = lock(&shared.unread);
            shared.session.fetch_add(1, Ordering::SeqCst);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::events::tests::entry;

    struct VersionsSink(crate::versions::Versions);

    impl ChangeSink for VersionsSink {
        fn apply(&self, change: &Change, seq: Option<u64>) -> Applied {
            self.0.apply(change, seq)
        }
    }

    fn jti_entry(seq: u64, jti: &str) -> StreamId {
        entry(
            &format!("{seq}-1"),
            &[("kind", "jti"), ("value", jti), ("at", "0"), ("n", "0")],
        )
    }

    /// The reader finds another change under the number one of our publications got: the
    /// cursor is marked diverged, so everything is republished. It never finds that number:
    /// the number is kept for `settle_missing` (lost, or trimmed away).
    #[test]
    fn reading_past_an_own_publication_that_is_not_there_marks_a_divergence() {
        let shared = crate::shared::tests::shared();
        let sink = VersionsSink(crate::versions::Versions::shared());
        let mut cursor = Cursor::default();
        let ours = Change::RevokeJti("ours".into(), None);
        lock(&shared.unread).published(3, &ours);
        shared.apply_entries(
            &sink,
            &[jti_entry(2, "x"), jti_entry(3, "ours")],
            &mut cursor,
        );
        assert!(!cursor.diverged, "read back under its number");

        lock(&shared.unread).published(4, &ours);
        shared.apply_entries(&sink, &[jti_entry(4, "someone else's")], &mut cursor);
        assert!(cursor.diverged, "renumbered");

        let mut cursor = Cursor::default();
        lock(&shared.unread).published(6, &ours);
        shared.apply_entries(&sink, &[jti_entry(7, "y")], &mut cursor);
        assert!(!cursor.diverged, "6 skipped: lost, or trimmed away");
        assert_eq!(
            cursor.missing.keys().collect::<Vec<_>>(),
            vec![&6],
            "left to settle_missing"
        );
    }
}
