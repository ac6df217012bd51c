//! The worker's queue of commands for its host, and the names of the calls it asks for.
//!
//! What it does not do: decide what goes in (the worker's parts do), or carry anything out.

use crate::commands::{CallId, Command};
use std::collections::VecDeque;

/// Commands not yet handed out, and the next call's name.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Command>,
    next_call: u64,
}

impl Outbox {
    /// A name no call of this worker had before.
    pub fn call_id(&mut self) -> CallId {
        self.next_call += 1;
        CallId(self.next_call)
    }

    pub fn push(&mut self, command: Command) {
        self.queue.push_back(command);
    }

    pub fn pop(&mut self) -> Option<Command> {
        self.queue.pop_front()
    }
}
