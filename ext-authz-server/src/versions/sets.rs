//! The containers of the revocation state: revoked keys (token hashes, `jti`s) and revoked
//! subjects, each indexed by the stamp of its last change, so that "what changed since N"
//! reads only the answer, not the whole set. No versions, no feed, no clock: `versions` owns
//! those.

use super::{Expiry, EXPIRY_GRACE_MS};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

/// At most this many revoked keys of each kind are held (oldest dropped first).
pub(super) const MAX_REVOKED: usize = 1_000_000;

/// (stamp, key) for every entry of a set, the stamp of the entry's last change: "what changed
/// after N" reads only the entries stamped after N.
#[derive(Debug)]
pub(super) struct StampIndex<K>(BTreeSet<(u64, K)>);

impl<K> Default for StampIndex<K> {
    fn default() -> Self {
        StampIndex(BTreeSet::new())
    }
}

impl<K: Ord + Clone + Default> StampIndex<K> {
    fn insert(&mut self, stamp: u64, key: K) {
        self.0.insert((stamp, key));
    }

    fn remove(&mut self, stamp: u64, key: &K) {
        self.0.remove(&(stamp, key.clone()));
    }

    fn contains(&self, stamp: u64, key: &K) -> bool {
        self.0.contains(&(stamp, key.clone()))
    }

    /// The entries stamped after `since`, oldest first (reads only those).
    fn after(&self, since: u64) -> impl Iterator<Item = &(u64, K)> {
        self.0.range((since.saturating_add(1), K::default())..)
    }

    /// The stamps after `since`, oldest first.
    pub(super) fn stamps_after(&self, since: u64) -> impl Iterator<Item = u64> + '_ {
        self.after(since).map(|(stamp, _)| *stamp)
    }

    /// The keys stamped after `since` and at most `upto`, oldest first.
    fn keys_between(&self, since: u64, upto: u64) -> impl Iterator<Item = &K> {
        self.after(since)
            .take_while(move |(stamp, _)| *stamp <= upto)
            .map(|(_, key)| key)
    }

    /// Whether any entry is stamped after `since`.
    pub(super) fn any_after(&self, since: u64) -> bool {
        self.last_stamp() > since
    }

    /// The stamp of the latest change (0: none).
    pub(super) fn last_stamp(&self) -> u64 {
        self.0.last().map_or(0, |(stamp, _)| *stamp)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[derive(Debug, Default)]
pub(super) struct SubjectEpoch {
    pub(super) epoch: u64,
    pub(super) changed_at_version: u64,
    pub(super) revoked_at_ms: u64,
    /// When this instance learned its last revocation (ms; 0: unknown).
    pub(super) learned_at_ms: u64,
}

/// The revoked subjects, indexed by the stamp of their last change too: a feed answer or a
/// held request's check reads only the subjects changed after its cursor, not all of them.
#[derive(Debug, Default)]
pub(super) struct Subjects {
    by_name: HashMap<String, SubjectEpoch>,
    pub(super) by_stamp: StampIndex<String>,
}

impl Subjects {
    pub(super) fn get(&self, subject: &str) -> Option<&SubjectEpoch> {
        self.by_name.get(subject)
    }

    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &SubjectEpoch)> {
        self.by_name.iter()
    }

    /// Changes `subject`'s entry (made when missing) with `change`, keeping the index.
    pub(super) fn update<T>(
        &mut self,
        subject: &str,
        change: impl FnOnce(&mut SubjectEpoch) -> T,
    ) -> T {
        let name = subject.to_owned();
        let entry = self.by_name.entry(name.clone()).or_default();
        let before = entry.changed_at_version;
        let out = change(entry);
        let after = entry.changed_at_version;
        if before != after || !self.by_stamp.contains(after, &name) {
            self.by_stamp.remove(before, &name);
            self.by_stamp.insert(after, name);
        }
        out
    }

    /// Keeps the subjects `keep` says to keep.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&SubjectEpoch) -> bool) {
        let by_stamp = &mut self.by_stamp;
        self.by_name.retain(|name, e| {
            let kept = keep(e);
            if !kept {
                by_stamp.remove(e.changed_at_version, name);
            }
            kept
        });
    }

    /// The subjects last changed after `since` and at or before `upto`, oldest first.
    pub(super) fn between(
        &self,
        since: u64,
        upto: u64,
    ) -> impl Iterator<Item = (&String, &SubjectEpoch)> {
        self.by_stamp
            .keys_between(since, upto)
            .filter_map(|name| self.by_name.get_key_value(name))
    }
}

/// One revoked key: the version it was (last) stamped with, when it may be forgotten, and
/// when this instance learned it (ms; 0: unknown).
#[derive(Debug, Clone, Copy)]
pub(super) struct Revoked {
    pub(super) stamp: u64,
    pub(super) expiry: Expiry,
    pub(super) learned_at_ms: u64,
}

/// A bounded set of revoked keys, indexed by stamp so that "what changed since N" reads only
/// the answer, not the whole set.
#[derive(Debug)]
pub(super) struct RevokedSet<K> {
    pub(super) entries: HashMap<K, Revoked>,
    pub(super) by_stamp: StampIndex<K>,
    /// Insertion order, for the bound (oldest dropped first).
    pub(super) order: VecDeque<K>,
}

impl<K> Default for RevokedSet<K> {
    fn default() -> Self {
        RevokedSet {
            entries: HashMap::new(),
            by_stamp: StampIndex::default(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Ord + Clone + Default> RevokedSet<K> {
    /// Inserts or re-stamps `key`; returns whether it was new. A later expiry wins.
    pub(super) fn insert(
        &mut self,
        key: K,
        stamp_if_new: u64,
        seq: Option<u64>,
        expiry: Expiry,
        learned_at_ms: u64,
    ) -> (bool, u64) {
        match self.entries.get_mut(&key) {
            Some(entry) => {
                // An expiry is a fact about the token (or a bound above it): a later one wins,
                // and a known one replaces not knowing. A changed expiry is restamped like a
                // new fact, so pollers already past the old stamp read it.
                let merged = match (entry.expiry, expiry) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let mut restamped = entry.stamp.max(seq.unwrap_or(0));
                if merged != entry.expiry {
                    entry.expiry = merged;
                    restamped = restamped.max(stamp_if_new);
                }
                if restamped != entry.stamp {
                    self.by_stamp.remove(entry.stamp, &key);
                    self.by_stamp.insert(restamped, key);
                    entry.stamp = restamped;
                }
                (false, entry.stamp)
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Revoked {
                        stamp: stamp_if_new,
                        expiry,
                        learned_at_ms,
                    },
                );
                self.by_stamp.insert(stamp_if_new, key.clone());
                self.order.push_back(key);
                while self.order.len() > MAX_REVOKED {
                    if let Some(old) = self.order.pop_front() {
                        self.forget(&old);
                    }
                }
                (true, stamp_if_new)
            }
        }
    }

    pub(super) fn forget(&mut self, key: &K) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_stamp.remove(entry.stamp, key);
        }
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// (key, expiry, learned at) of the keys stamped after `since` and at most `upto`, copied
    /// out (the answer is built after the state's lock is released).
    pub(super) fn raw_between(&self, since: u64, upto: u64) -> Vec<(K, Expiry, u64)> {
        self.by_stamp
            .keys_between(since, upto)
            .map(|k| {
                let entry = self.entries.get(k);
                (
                    k.clone(),
                    entry.and_then(|e| e.expiry),
                    entry.map_or(0, |e| e.learned_at_ms),
                )
            })
            .collect()
    }

    /// Drops revocations whose tokens expired (plus grace) before `now_ms`; returns how many.
    pub(super) fn prune(&mut self, now_ms: u64) -> usize {
        let expired: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.expiry
                    .is_some_and(|at| at.saturating_add(EXPIRY_GRACE_MS) <= now_ms)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if expired.is_empty() {
            return 0;
        }
        for key in &expired {
            self.forget(key);
        }
        let entries = &self.entries;
        self.order.retain(|k| entries.contains_key(k));
        expired.len()
    }

    pub(super) fn expiry_of(&self, key: &K) -> Expiry {
        self.entries.get(key).and_then(|e| e.expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_index_follows_every_change_and_removal() {
        let mut subjects = Subjects::default();
        for (name, stamp) in [("a", 1), ("b", 2), ("c", 3)] {
            subjects.update(name, |e| e.changed_at_version = stamp);
        }
        subjects.update("a", |e| e.changed_at_version = 9);
        subjects.update("b", |e| e.epoch += 1);
        assert_eq!(subjects.by_stamp.len(), 3, "one entry per subject");
        assert_eq!(subjects.by_stamp.last_stamp(), 9);
        subjects.retain(|e| e.changed_at_version != 9);
        assert_eq!(subjects.by_stamp.len(), subjects.len(), "removed from both");
        assert_eq!(subjects.by_stamp.last_stamp(), 3);
        assert_eq!(
            subjects.by_stamp.stamps_after(1).collect::<Vec<_>>(),
            [2, 3]
        );
        assert!(!subjects.by_stamp.any_after(3));
    }
}
