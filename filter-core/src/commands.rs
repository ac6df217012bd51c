//! What the core hands back to its host after an event: a decided request ([`Final`]), a JWKS
//! fetch, an epochs poll or a Check call to dispatch. The host carries these out after the core
//! returned (they may re-enter the filter), then reports back with the next event.
//!
//! What it does not do: carry anything out. These are plain values (checks after the answer
//! included: `background` decides when they are due).

use authz_core::decision::bearer_token;
use authz_core::decision_cache::DecisionKey;
use authz_core::jwks_refresh::FetchReason;
use authz_core::token_hash::token_label;
use authz_core::{DenyResponse, RequestFacts, Tier};
use std::time::Duration;

/// A request's facts, owned so a paused request can be decided again later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

impl OwnedRequest {
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.method,
            path: &self.path,
            authorization: self.authorization.as_deref(),
        }
    }

    /// The bearer token, if the request carries one.
    pub fn bearer(&self) -> Option<&str> {
        self.authorization.as_deref().and_then(bearer_token)
    }

    /// A log-safe label of the bearer token: a hash prefix, never the token.
    pub fn token_label(&self) -> String {
        match self.bearer() {
            Some(token) => token_label(token),
            None => "-".into(),
        }
    }
}

/// What to do with a request, once decided.
#[derive(Debug, Clone, PartialEq)]
pub enum FinalAction {
    /// Remove these headers, set those, and continue.
    Allow {
        headers: Vec<(String, String)>,
        remove: Vec<String>,
    },
    Deny(DenyResponse),
    /// A response decided elsewhere (a server denial, possibly cached).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

/// A decided request: the host applies `action` to the request of `context_id` (resuming it
/// if it was paused).
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    pub context_id: u32,
    pub action: FinalAction,
}

/// What a key-source fetch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchStage {
    /// The issuer's metadata (discovery), which names where the keys are.
    Metadata,
    /// The JWKS.
    Keys,
}

/// A JWKS (or metadata) fetch to dispatch; report back with `Worker::fetch_started` or
/// `Worker::fetch_not_started`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOrder {
    pub provider: usize,
    pub stage: FetchStage,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub reason: FetchReason,
}

/// A Check call to make for a request; its answer goes to `Worker::on_server_reply`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCall {
    pub tier: Tier,
    pub route: String,
    pub cluster: String,
    pub timeout: Duration,
    /// The decision cache key under the policy version of the call.
    pub key: DecisionKey,
    /// The request's [`authz_core::routes::match_path`] (part of the key).
    pub match_path: String,
    pub policy_version: u64,
    /// A fresh route's cap on reusing the decision (ms).
    pub max_cache_ms: Option<u64>,
    /// When the call was made (the worker's clock, ms): changes applied after it may be
    /// missing from its reply.
    pub started_ms: u64,
}

/// An epochs poll to dispatch; report back with `Worker::poll_started`, and its answer goes to
/// `Worker::on_poll_response`.
#[derive(Debug, Clone, PartialEq)]
pub struct PollOrder {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// The whole `authorization` header value.
    pub bearer: String,
    /// The call's timeout (a held request's wait plus a margin).
    pub timeout: Duration,
}

/// The outcome of a new request.
#[derive(Debug)]
pub enum RequestStep {
    Done(Final),
    /// Paused until keys arrive; dispatch the fetch if one is given.
    Wait(Option<FetchOrder>),
    /// Ask the ext_authz server (no usable cached decision).
    CallServer(ServerCall, OwnedRequest),
}

/// What a tick asks of the host: fetches, a poll and background checks to dispatch, and
/// waiting requests that are now decided.
#[derive(Debug, Default)]
pub struct TickWork {
    pub fetches: Vec<FetchOrder>,
    pub finals: Vec<Final>,
    pub poll: Option<PollOrder>,
    /// Checks after the answer to dispatch (report back with `Worker::background_started`).
    pub background: Vec<BackgroundOrder>,
}

/// One check to make.
#[derive(Debug, Clone, PartialEq)]
pub struct BackgroundCheck {
    /// The request it concerns (method, path, the credential).
    pub request: OwnedRequest,
    pub route: String,
    pub tier: Tier,
    /// When the request was answered (ms).
    pub answered_ms: u64,
}

/// A background check for the host to dispatch from its root context: the Check call's
/// cluster and deadline, and what it asks about.
#[derive(Debug, Clone, PartialEq)]
pub struct BackgroundOrder {
    pub check: BackgroundCheck,
    pub cluster: String,
    pub timeout: Duration,
}
