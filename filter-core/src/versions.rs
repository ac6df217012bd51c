//! What one worker knows of the ext_authz server's versions (policy, change feed, the counter's
//! incarnation), of its reachability and of how its change feed arrives (pushed through held
//! requests, or polled); the rules that change it live in `server_path`.

/// What this worker knows of the server's versions.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KnownVersions {
    pub policy_version: u64,
    pub change_version: u64,
    /// The server counter's incarnation the versions above belong to.
    pub incarnation: Option<String>,
    /// Last time the server answered a poll or a Check in a way that renews cache trust (ms).
    pub last_ok_ms: u64,
    /// Last time a whole, confirmed feed answer was applied (ms): the revocations and switches
    /// this worker holds are at least that fresh (Check replies bring neither).
    pub feed_applied_ms: u64,
    pub last_poll_started_ms: u64,
    pub poll_in_flight: Option<crate::commands::CallId>,
    /// Polls failed in a row.
    pub failed_polls: u64,
    /// Whether the poll in flight asked the server to hold it (push).
    pub poll_held: bool,
    /// A held request failed: poll plainly every interval until a poll succeeds.
    pub push_down: bool,
    /// The next poll goes out at once (the previous held one answered).
    pub poll_now: bool,
    /// Whether an answer came from the current incarnation before (so the next answer's
    /// changes are new ones, whose propagation lag is worth recording).
    pub synced: bool,
    /// When this worker last applied a feed answer that changed something (ms): a Check call
    /// made before it may carry a decision that predates those changes.
    pub changes_applied_ms: u64,
    /// The server refused a read over this feed secret's catch-up rate (429 with
    /// `retry_after_ms`): no feed request before this time (ms).
    pub slow_down_until_ms: u64,
}
