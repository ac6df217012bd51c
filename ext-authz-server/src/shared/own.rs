//! This instance's own publications that its stream reader has not read back yet. A failover
//! can lose them (the old primary had not passed them on) and give their numbers to other
//! changes; the check of the last entry read (`stream::Shared::diverged`) cannot see that, since
//! they were never read. So each one is kept, under the number the store gave it, until the
//! reader reaches that number: the entry there must be the same change, and it must be there.
//! Otherwise the instance reads everything again and republishes what it knows.

use super::events::encode;
use crate::versions::Change;
use std::collections::BTreeMap;

/// A change by its stream fields that identify it (kind and value; `at` may be raised by the
/// publish script, and `n` is the store's count).
type Identity = (&'static str, String);

fn identity(change: &Change) -> Identity {
    let (kind, value, _) = encode(change);
    (kind, value)
}

/// Own publications not read back yet, and how far the reader has read.
#[derive(Debug, Default)]
pub(super) struct Unread {
    published: BTreeMap<u64, Identity>,
    read_up_to: u64,
}

impl Unread {
    /// A change this instance published under `seq`. One the reader has already passed was
    /// read from the same store it was written to (the reader and the publisher of a session
    /// share its primary), so there is nothing left to check.
    pub(super) fn published(&mut self, seq: u64, change: &Change) {
        if seq > self.read_up_to {
            self.published.insert(seq, identity(change));
        }
    }

    /// The reader read `change` under `seq`: false when one of our publications was under that
    /// number and this is another change (the store renumbered it away).
    pub(super) fn read(&mut self, seq: u64, change: &Change) -> bool {
        self.read_up_to = self.read_up_to.max(seq);
        match self.published.remove(&seq) {
            Some(ours) => ours == identity(change),
            None => true,
        }
    }

    /// The reader has read everything up to `seq`: false when a publication of ours at or
    /// below it was never there (the store skipped its number).
    pub(super) fn read_through(&mut self, seq: u64) -> bool {
        self.read_up_to = self.read_up_to.max(seq);
        let later = self.published.split_off(&(seq + 1));
        let missing = std::mem::replace(&mut self.published, later);
        missing.is_empty()
    }

    /// The reader starts again from the beginning (everything is republished).
    pub(super) fn restart(&mut self) {
        *self = Unread::default();
    }

    /// How many publications wait to be read back.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.published.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(id: &str) -> Change {
        Change::RevokeJti(id.into(), None)
    }

    #[test]
    fn a_publication_read_back_under_its_number_is_settled() {
        let mut unread = Unread::default();
        unread.published(5, &jti("a"));
        assert_eq!(unread.len(), 1);
        assert!(unread.read(4, &jti("other")), "not our number");
        assert!(unread.read(5, &jti("a")), "our change under our number");
        assert!(unread.read_through(5));
        assert_eq!(unread.len(), 0);
    }

    #[test]
    fn another_change_under_our_number_is_a_divergence() {
        let mut unread = Unread::default();
        unread.published(5, &jti("a"));
        assert!(
            !unread.read(5, &jti("b")),
            "renumbered: another change under 5"
        );
        assert_eq!(unread.len(), 0);
    }

    #[test]
    fn a_number_the_store_skipped_is_a_divergence() {
        let mut unread = Unread::default();
        unread.published(5, &jti("a"));
        unread.published(7, &jti("c"));
        assert!(unread.read(6, &jti("x")));
        assert!(
            !unread.read_through(6),
            "5 was never read: the store lost it"
        );
        assert!(unread.read(7, &jti("c")));
        assert!(unread.read_through(7));
    }

    #[test]
    fn a_publication_the_reader_already_passed_is_not_kept() {
        let mut unread = Unread::default();
        assert!(unread.read(9, &jti("a")));
        unread.published(9, &jti("a"));
        assert_eq!(unread.len(), 0, "read before the publish call returned");
        assert!(unread.read_through(12));
    }

    #[test]
    fn a_restart_forgets_everything() {
        let mut unread = Unread::default();
        unread.read_through(10);
        unread.published(11, &jti("a"));
        unread.restart();
        assert_eq!(unread.len(), 0);
        unread.published(3, &jti("b"));
        assert_eq!(unread.len(), 1, "after a restart the reader is at 0 again");
    }
}
