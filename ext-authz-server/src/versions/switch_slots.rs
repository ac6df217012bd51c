//! The incident switches as this server holds them: the last change of each slot (a switch, and
//! its tier for a per-tier one: `authz_core::switches::Setting::slot`), who asked for it and
//! when, and the state they make ([`Switches`]) that every feed answer carries.
//!
//! Last writer wins per slot, by when the change was made (`at_ms`, the asking server's clock;
//! the admin API stamps a change after the slot's last one, whatever its own clock says): an
//! older change read late, replayed from the snapshot, published from an outbox after Redis
//! returns, or republished after Redis lost its data, never undoes a newer one, wherever and
//! in whatever order it arrives. Two changes of one slot stamped alike are ordered by their
//! wire form, so every server keeps the same one.

use authz_core::switches::{Setting, Switches};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One switch change: what, when (server clock, ms) and who asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchChange {
    #[serde(flatten)]
    pub setting: Setting,
    pub at_ms: u64,
    pub by: String,
}

impl SwitchChange {
    /// The change as the shared stream and the snapshot carry it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Option<SwitchChange> {
        serde_json::from_str(json).ok()
    }
}

/// A slot's last change and the stamp it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotChange {
    pub change: SwitchChange,
    /// Its place in the shared sequence, when it has one.
    pub seq: Option<u64>,
    pub stamp: u64,
}

#[derive(Debug, Default)]
pub(super) struct SwitchSlots {
    slots: BTreeMap<String, SlotChange>,
    state: Switches,
    /// The stamp of the last change that altered the state.
    pub(super) changed_at_version: u64,
}

impl SwitchSlots {
    /// Records `change` under `stamp` (`seq`: its shared number). Returns whether the state
    /// changed. Every change taken raises the revision to its stamp, whether or not the state
    /// changed: a replica that took a change never reports a revision below one that did not.
    pub(super) fn set(&mut self, change: &SwitchChange, seq: Option<u64>, stamp: u64) -> bool {
        let slot = change.setting.slot();
        if let Some(held) = self.slots.get_mut(&slot) {
            if held.change == *change {
                // The same change again (our own publish read back, a snapshot replay).
                if seq.is_some() {
                    held.seq = seq;
                }
                return false;
            }
            if !is_later(change, &held.change) {
                return false;
            }
        }
        self.slots.insert(
            slot,
            SlotChange {
                change: change.clone(),
                seq,
                stamp,
            },
        );
        let before = std::mem::take(&mut self.state);
        self.state = self.rebuild();
        self.state.revision = before.revision;
        let changed = self.state != before;
        self.changed_at_version = self.changed_at_version.max(stamp);
        self.state.revision = self.changed_at_version;
        changed
    }

    /// The state the slots make: each slot's change applied in the order they were stamped.
    fn rebuild(&self) -> Switches {
        let mut ordered: Vec<&SlotChange> = self.slots.values().collect();
        ordered.sort_by_key(|s| (s.stamp, s.change.at_ms));
        let mut state = Switches::default();
        for slot in ordered {
            state.apply(&slot.change.setting, slot.change.at_ms);
        }
        state
    }

    pub(super) fn state(&self) -> &Switches {
        &self.state
    }

    /// Every slot's last change, in slot order.
    pub(super) fn changes(&self) -> impl Iterator<Item = &SlotChange> {
        self.slots.values()
    }

    /// When the last change of `slot` was made, if it has one.
    pub(super) fn last_at_ms(&self, slot: &str) -> Option<u64> {
        self.slots.get(slot).map(|s| s.change.at_ms)
    }
}

/// Whether `change` comes after `held` (of the same slot).
fn is_later(change: &SwitchChange, held: &SwitchChange) -> bool {
    (change.at_ms, change.to_json()) > (held.at_ms, held.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_core::Tier;

    fn closed(on: bool, at_ms: u64) -> SwitchChange {
        SwitchChange {
            setting: Setting::FailClosed {
                tier: Tier::Privileged,
                on,
                until_ms: None,
            },
            at_ms,
            by: "oncall".into(),
        }
    }

    #[test]
    fn the_last_change_of_a_slot_wins_by_when_it_was_made_whatever_the_order_it_arrives_in() {
        let mut slots = SwitchSlots::default();
        assert!(slots.set(&closed(true, 10), Some(5), 5));
        assert!(slots.state().fails_closed(Tier::Privileged, 11));
        // An older change read late (an outbox published after Redis returned, a republish
        // after Redis lost its data: a higher number) does not undo it.
        assert!(!slots.set(&closed(false, 9), Some(40), 40));
        assert!(!slots.set(&closed(false, 9), None, 41));
        assert!(slots.state().fails_closed(Tier::Privileged, 11));
        // Our own change read back from the stream: nothing new.
        assert!(!slots.set(&closed(true, 10), Some(5), 42));
        assert_eq!(slots.changed_at_version, 5);
        // A newer one does, with or without a number.
        assert!(slots.set(&closed(false, 20), Some(8), 43));
        assert!(!slots.state().fails_closed(Tier::Privileged, 21));
        assert_eq!(slots.changed_at_version, 43);
        // A newer change that leaves the state as it is still raises the revision.
        assert!(!slots.set(&closed(false, 25), Some(9), 47));
        assert_eq!(slots.state().revision, 47);
        assert!(slots.set(&closed(true, 30), None, 44));
        assert!(slots.state().fails_closed(Tier::Privileged, 31));
        assert_eq!(slots.last_at_ms("fail_closed:privileged"), Some(30));
        // Stamped alike: every server keeps the same one, whichever it read first.
        let mut other = SwitchSlots::default();
        let (a, b) = (closed(true, 50), closed(false, 50));
        slots.set(&a, None, 45);
        slots.set(&b, None, 46);
        other.set(&b, None, 1);
        other.set(&a, None, 2);
        assert_eq!(
            slots.last_at_ms("fail_closed:privileged"),
            other.last_at_ms("fail_closed:privileged")
        );
        assert_eq!(slots.state().fail_closed, other.state().fail_closed);
    }

    #[test]
    fn a_change_reads_back_from_its_wire_form() {
        let change = SwitchChange {
            setting: Setting::CacheMax {
                tier: Tier::Regulated,
                max_ms: Some(0),
                until_ms: Some(99),
            },
            at_ms: 7,
            by: "alice".into(),
        };
        let json = change.to_json();
        assert_eq!(
            json,
            r#"{"switch":"cache_max","tier":"regulated","max_ms":0,"until_ms":99,"at_ms":7,"by":"alice"}"#
        );
        assert_eq!(SwitchChange::from_json(&json), Some(change));
        assert_eq!(
            SwitchChange::from_json(r#"{"switch":"nope","at_ms":1,"by":"x"}"#),
            None
        );
    }
}
