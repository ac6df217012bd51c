//! What one worker knows of the ext_authz server's versions (policy, change feed, the counter's
//! incarnation) and of its reachability; the rules that change it live in `server_path`.

/// What this worker knows of the server's versions.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KnownVersions {
    pub policy_version: u64,
    pub change_version: u64,
    /// The server counter's incarnation the versions above belong to.
    pub incarnation: Option<String>,
    /// Last time the server answered a poll or a Check in a way that renews cache trust (ms).
    pub last_ok_ms: u64,
    pub last_poll_started_ms: u64,
    pub poll_in_flight: Option<u32>,
    /// Polls failed in a row.
    pub failed_polls: u64,
}
