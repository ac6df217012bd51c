//! What comes out of the core: [`Command`]s it queues for the host (a decided request to
//! apply, a JWKS fetch, a change-feed request or a Check call to make), and what they carry.
//! Every call the core asks for has a [`CallId`]; the event that ends the call
//! (`CallEnded`) carries it back, so no call needs acknowledging when it starts.
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
    /// The trace it belongs to (`authz_core::trace_context`), for log lines.
    pub trace_id: Option<String>,
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

/// A local reply, as a host sends it: status, headers, body.
pub type LocalReply<'a> = (u16, Vec<(&'a str, &'a str)>, &'a [u8]);

impl FinalAction {
    /// The local reply this action sends (`None` for an allow).
    pub fn local_reply(&self) -> Option<LocalReply<'_>> {
        match self {
            FinalAction::Allow { .. } => None,
            FinalAction::Deny(response) => Some((
                response.status,
                response
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect(),
                response.body.as_bytes(),
            )),
            FinalAction::Respond {
                status,
                headers,
                body,
            } => Some((
                *status,
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                body.as_bytes(),
            )),
        }
    }
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

/// A JWKS (or metadata) fetch: an HTTP GET of `path` at `authority` through `cluster`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOrder {
    pub provider: usize,
    pub stage: FetchStage,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub reason: FetchReason,
    /// The refetch demand (`jwks_refetch` switch time) known when the fetch was leased: the
    /// one its success meets (0: none).
    pub meets_refetch_at_ms: u64,
}

/// A Check call the worker makes for a request (kept while the call is out).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerCall {
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
    /// A route checked after the answer, checked before it (asynchronous verification is
    /// switched off): the server is asked as for a check after the answer.
    pub checked_first: bool,
}

/// A change-feed request: an HTTP GET of `path` at `authority` through `cluster`, with the
/// `authorization` header `bearer`.
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

/// A Check call to the ext_authz server.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOrder {
    pub cluster: String,
    pub timeout: Duration,
    /// The tier the server is asked to decide at.
    pub tier: Tier,
    /// The request it concerns (method, path, the credential).
    pub request: OwnedRequest,
    /// What the answer is for.
    pub purpose: CheckPurpose,
    /// Ask as for a check after the answer (the server asks the IdP whether it still stands
    /// by the token), though a request waits for it: asynchronous verification is switched
    /// off.
    pub as_after_answer: bool,
}

/// Why a Check call is made, which says what the host builds it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPurpose {
    /// To decide the paused request `context_id`: the host sends what Envoy's ext_authz
    /// filter would (the request's live headers, its source address).
    Decide { context_id: u32 },
    /// A check after the answer (the request was answered already and may be gone): built
    /// from `request` alone and marked as such.
    AfterAnswer,
}

/// Names one call the core asked for; unique per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// What the core asks of its host, in the order [`crate::Worker::poll_output`] hands it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Apply `action` to request `context_id`: at once if it is the request whose event is
    /// being handled, else resuming it (it was paused).
    Decide(Final),
    /// Make a JWKS or metadata fetch.
    Fetch { call: CallId, order: FetchOrder },
    /// Make a change-feed request.
    Poll { call: CallId, order: PollOrder },
    /// Make a Check call.
    Check { call: CallId, order: CheckOrder },
    /// Hand `message` (a [`crate::feed_share::SharedAnswer`]) to each of the proxy's workers
    /// named in `to` (their queues): they report it as [`crate::Event::SharedFeedAnswer`]. A
    /// name the host cannot find is skipped.
    ShareFeed { to: Vec<String>, message: Vec<u8> },
}
