//! A cached introspection result, as the local cache and the shared (L2) cache hold it.

use authz_core::introspection::Introspection;

/// A cached introspection result.
#[derive(Debug)]
pub struct Cached {
    pub result: Introspection,
    /// When the introspection call started (the data is at least this old).
    pub fetched_at_ms: u64,
    pub ttl_ms: u64,
}

impl Cached {
    /// Whether the entry is still alive at `now_ms`.
    pub fn alive_at(&self, now_ms: u64) -> bool {
        self.fetched_at_ms + self.ttl_ms > now_ms
    }

    /// How long the entry lives after `now_ms` (0 once dead).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        (self.fetched_at_ms + self.ttl_ms).saturating_sub(now_ms)
    }
}
