//! This instance's own publications that its stream reader has not read back yet. A failover
//! can lose them (the old primary had not passed them on) and give their numbers to other
//! changes; the check of the last entry read (`stream::Shared::diverged`) cannot see that, since
//! they were never read. So each one is kept, under the number the store gave it, until the
//! reader reaches that number: the entry there must be the same change, and it must be there.
//! Otherwise the instance reads everything again and republishes what it knows.

use super::events::encode;
use crate::versions::Change;
use std::collections::BTreeMap;

/// A change by its stream fields (`n` is the store's count, not part of it).
type Identity = (&'static str, String, u64);

fn identity(change: &Change) -> Identity {
    encode(change)
}

/// Whether `read` (under our number) has the effect of `ours`: the same kind and value, and
/// for a subject revocation a time at least ours (the publish script only ever raises it; an
/// older revocation of the same subject would let tokens issued in between through).
fn holds(read: &Identity, ours: &Identity) -> bool {
    read.0 == ours.0 && read.1 == ours.1 && (ours.0 != "subject" || read.2 >= ours.2)
}

/// Own publications not read back yet (each with its change, to publish it again if the
/// store lost it), and how far the reader has read.
#[derive(Debug, Default)]
pub(super) struct Unread {
    published: BTreeMap<u64, Change>,
    read_up_to: u64,
}

impl Unread {
    /// A change this instance published under `seq`. One the reader has already passed was
    /// read from the same store it was written to (the reader and the publisher of a session
    /// share its primary), so there is nothing left to check.
    pub(super) fn published(&mut self, seq: u64, change: &Change) {
        if seq > self.read_up_to {
            self.published.insert(seq, change.clone());
        }
    }

    /// The reader read `change` under `seq`: false when one of our publications was under that
    /// number and this is another change (the store renumbered it away).
    pub(super) fn read(&mut self, seq: u64, change: &Change) -> bool {
        self.read_up_to = self.read_up_to.max(seq);
        match self.published.remove(&seq) {
            Some(ours) => holds(&identity(change), &identity(&ours)),
            None => true,
        }
    }

    /// The reader has read everything up to `seq`: the publications of ours at or below it
    /// that were never there, by number (the store skipped their numbers, or trimmed them
    /// away before the reader came: the caller tells which).
    pub(super) fn read_through(&mut self, seq: u64) -> BTreeMap<u64, Change> {
        self.read_up_to = self.read_up_to.max(seq);
        let later = self.published.split_off(&(seq + 1));
        std::mem::replace(&mut self.published, later)
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
        assert!(unread.read_through(5).is_empty());
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
        let missing = unread.read_through(6);
        assert_eq!(
            missing.into_iter().collect::<Vec<_>>(),
            vec![(5, jti("a"))],
            "5 was never read"
        );
        assert!(unread.read(7, &jti("c")));
        assert!(unread.read_through(7).is_empty());
    }

    #[test]
    fn a_publication_the_reader_already_passed_is_not_kept() {
        let mut unread = Unread::default();
        assert!(unread.read(9, &jti("a")));
        unread.published(9, &jti("a"));
        assert_eq!(unread.len(), 0, "read before the publish call returned");
        assert!(unread.read_through(12).is_empty());
    }

    #[test]
    fn an_older_revocation_of_the_same_subject_is_not_ours() {
        let subject = |at| Change::RevokeSubject {
            subject: "alice".into(),
            revoked_at_ms: at,
            epoch: None,
        };
        let mut unread = Unread::default();
        unread.published(5, &subject(2_000));
        assert!(
            !unread.read(5, &subject(1_000)),
            "tokens from 1000 to 2000 would pass"
        );
        unread.published(6, &subject(2_000));
        assert!(
            unread.read(6, &subject(3_000)),
            "raised by the script: covers ours"
        );
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
