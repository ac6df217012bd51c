//! The filter's protocol rules with no proxy attached: a [`Worker`] state machine per proxy
//! worker. Events go in (a request's headers, a JWKS fetch answer, a Check reply, an epochs
//! answer, a tick, a request that ended), each with the time it happened; commands come out
//! ([`commands`]: decided requests, fetches, polls and Check calls to dispatch). The few calls
//! that need an answer at once (shared data with compare-and-swap, logs, metrics) go through the
//! small [`Host`] trait.
//!
//! Hosts: `wasm-filter` (proxy-wasm, for Envoy and Istio) turns its callbacks into these events;
//! a native Envoy module can do the same. Every decision rule comes from `authz-core`; this
//! crate owns the rules around them (who fetches keys, how long a request waits, what a Check
//! reply or an epochs answer does to the decision cache and its trust).
//!
//! What it does not do: any I/O, read a clock for a decision, or panic (lints deny `unwrap`,
//! `expect`, `panic` and unchecked indexing).

pub mod background;
pub mod commands;
pub mod context;
pub mod host;
mod keys;
pub mod metrics;
pub mod read;
pub mod server_path;
pub mod versions;
pub mod worker;

pub use commands::{
    BackgroundCheck, BackgroundOrder, FetchOrder, FetchStage, Final, FinalAction, OwnedRequest,
    PollOrder, RequestStep, ServerCall, TickWork,
};
pub use host::{Host, LogLevel, SharedWrite};
pub use metrics::{Counter, Gauge, Histogram};
pub use read::{read_request, ReadRequest, Unreadable};
pub use versions::KnownVersions;
pub use worker::{Worker, TICK};
