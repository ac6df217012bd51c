//! The incident switches as this server holds them: the last change of each slot (a switch, and
//! its tier for a per-tier one: `authz_core::switches::Setting::slot`), who asked for it and
//! when, and the state they make ([`Switches`]) that every feed answer carries.
//!
//! Last writer wins per slot, by the shared sequence when the change has a number (an older
//! change read late, or replayed from the snapshot, does not undo a newer one); a change made
//! here without one (no shared tier, or Redis away) always wins here.

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
    /// changed.
    pub(super) fn set(&mut self, change: &SwitchChange, seq: Option<u64>, stamp: u64) -> bool {
        let slot = change.setting.slot();
        if let (Some(seq), Some(held)) = (seq, self.slots.get(&slot).and_then(|s| s.seq)) {
            if seq < held {
                return false;
            }
        }
        if self
            .slots
            .get(&slot)
            .is_some_and(|held| held.change == *change)
        {
            // The same change again (our own publish read back, a snapshot replay).
            if let (Some(seq), Some(held)) = (seq, self.slots.get_mut(&slot)) {
                held.seq = Some(seq);
            }
            return false;
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
        let changed = self.state != before;
        if changed {
            self.changed_at_version = self.changed_at_version.max(stamp);
        }
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
    fn the_last_change_of_a_slot_wins_by_its_shared_number() {
        let mut slots = SwitchSlots::default();
        assert!(slots.set(&closed(true, 10), Some(5), 5));
        assert!(slots.state().fails_closed(Tier::Privileged, 11));
        // An older change read late does not undo it.
        assert!(!slots.set(&closed(false, 9), Some(4), 6));
        assert!(slots.state().fails_closed(Tier::Privileged, 11));
        // Our own change read back from the stream: nothing new.
        assert!(!slots.set(&closed(true, 10), Some(5), 7));
        assert_eq!(slots.changed_at_version, 5);
        // A newer one does.
        assert!(slots.set(&closed(false, 20), Some(8), 8));
        assert!(!slots.state().fails_closed(Tier::Privileged, 21));
        assert_eq!(slots.changed_at_version, 8);
        // A local change (no number) always wins here.
        assert!(slots.set(&closed(true, 30), None, 9));
        assert!(slots.state().fails_closed(Tier::Privileged, 31));
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
