//! The calls a host has out, by Envoy's id, with their answers as they arrive. Envoy may
//! answer a call inside the very callback that starts it (a cluster with no healthy host
//! answers 503 inline; a stream that cannot connect is reset inline), before the module knows
//! the id: such answers are kept until the start returns its id, then finished at once.
//!
//! What it does not do: lock (each table lives behind its owner's lock or cell), or know what
//! an answer means.

use filter_core::CallId;
use std::collections::HashMap;

/// At most this many answers are kept for ids not (yet) known; Envoy can have at most the one
/// call being started at a time answered early, so more means ids that are not ours.
const MAX_EARLY: usize = 16;

#[derive(Debug, Default)]
struct Entry<R> {
    call: Option<CallId>,
    reply: R,
    /// `Some(completed)` once the call ended.
    ended: Option<bool>,
}

/// A finished call: the core's id, the answer, and whether it completed (not reset).
pub type Finished<R> = (CallId, R, bool);

/// Calls out by Envoy's id.
#[derive(Debug)]
pub struct CallTable<R> {
    entries: HashMap<u64, Entry<R>>,
}

impl<R> Default for CallTable<R> {
    fn default() -> Self {
        CallTable {
            entries: HashMap::new(),
        }
    }
}

impl<R: Default> CallTable<R> {
    /// Envoy started `call` as `id`; when its answer already ended, it is returned to finish.
    pub fn started(&mut self, id: u64, call: CallId) -> Option<Finished<R>> {
        let entry = self.entries.entry(id).or_default();
        entry.call = Some(call);
        if let Some(completed) = entry.ended {
            let entry = self.entries.remove(&id)?;
            return Some((call, entry.reply, completed));
        }
        None
    }

    /// Part of call `id`'s answer arrived.
    pub fn update(&mut self, id: u64, apply: impl FnOnce(&mut R)) {
        if let Some(entry) = self.entry_for(id) {
            apply(&mut entry.reply);
        }
    }

    /// Call `id` ended; returned to finish when it is known.
    pub fn ended(&mut self, id: u64, completed: bool) -> Option<Finished<R>> {
        let entry = self.entry_for(id)?;
        entry.ended = Some(completed);
        let call = entry.call?;
        let entry = self.entries.remove(&id)?;
        Some((call, entry.reply, completed))
    }

    /// Forgets every call; returns the calls that were out.
    pub fn drain(&mut self) -> Vec<CallId> {
        self.entries.drain().filter_map(|(_, e)| e.call).collect()
    }

    fn entry_for(&mut self, id: u64) -> Option<&mut Entry<R>> {
        if !self.entries.contains_key(&id) {
            let early = self.entries.values().filter(|e| e.call.is_none()).count();
            if early >= MAX_EARLY {
                return None;
            }
        }
        Some(self.entries.entry(id).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_after_the_start_finishes_at_its_end() {
        let mut table: CallTable<Vec<u8>> = CallTable::default();
        assert!(table.started(7, CallId(1)).is_none());
        table.update(7, |r| r.push(1));
        table.update(7, |r| r.push(2));
        assert_eq!(table.ended(7, true), Some((CallId(1), vec![1, 2], true)));
        assert!(table.ended(7, true).is_none(), "once");
        assert!(table.drain().is_empty());
    }

    #[test]
    fn an_answer_inside_the_start_is_finished_when_the_id_is_known() {
        let mut table: CallTable<Vec<u8>> = CallTable::default();
        table.update(9, |r| r.push(5));
        assert!(table.ended(9, false).is_none(), "not known yet");
        assert_eq!(
            table.started(9, CallId(2)),
            Some((CallId(2), vec![5], false))
        );
        assert!(table.drain().is_empty());
    }

    #[test]
    fn calls_out_are_drained_and_unknown_ids_are_bounded() {
        let mut table: CallTable<()> = CallTable::default();
        table.started(1, CallId(1));
        for id in 100..200 {
            table.update(id, |_| {});
        }
        assert_eq!(table.entries.len(), 1 + MAX_EARLY);
        assert_eq!(table.drain(), vec![CallId(1)]);
    }
}
