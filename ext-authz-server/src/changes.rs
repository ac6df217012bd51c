//! Where revocation-state changes go once they are known: an admin call on this instance, or
//! an event another instance published through the shared tier. The shared tier sees only
//! this trait; the composition root (`lib.rs`) implements it over the versions and the
//! introspection cache, so no part but the root knows the whole service.

use crate::versions::{Applied, Change};

/// Applies a change to this instance's state (and its caches).
pub trait ChangeSink: Send + Sync {
    /// `seq` is the shared sequence number of the change, when it has one.
    fn apply(&self, change: &Change, seq: Option<u64>) -> Applied;
}
