//! The filter's protocol rules with no proxy attached: a [`Worker`] state machine per proxy
//! worker, sans-IO in the style of `quinn-proto`. [`Event`]s go in through [`Worker::handle`]
//! with the time they happened (a request's headers, a request that ended, a call that ended,
//! a wake-up); [`Command`]s come out of [`Worker::poll_output`] (a decided request to apply, a
//! fetch, a change-feed request or a Check call to make); [`Worker::poll_timeout`] says when to
//! wake it next. The call order is in [`worker`]'s doc. The few calls that need an answer at
//! once (shared data with compare-and-swap, logs, metrics) go through the small [`Host`] trait.
//!
//! Hosts: `wasm-filter` (proxy-wasm, for Envoy and Istio) turns its callbacks into these events;
//! a native Envoy module can do the same. Every decision rule comes from `authz-core`; this
//! crate owns the rules around them (who fetches keys, how long a request waits, what a Check
//! reply or an epochs answer does to the decision cache and its trust).
//!
//! What it does not do: any I/O, read a clock for a decision, or panic (lints deny `unwrap`,
//! `expect`, `panic` and unchecked indexing).

mod after_answer;
pub mod background;
mod canary;
pub mod check;
pub mod commands;
pub mod context;
mod decision_log;
pub mod events;
pub mod feed_share;
mod finish;
pub mod host;
mod keys;
pub mod metrics;
mod outbox;
pub mod read;
pub mod server_path;
mod switches;
pub mod timer;
mod timing;
pub mod verify_outside;
pub mod versions;
pub mod worker;

pub use check::{check_message, LiveRequest};
pub use commands::{
    BackgroundCheck, CallId, CheckOrder, CheckPurpose, Command, FetchOrder, FetchStage, Final,
    FinalAction, LocalReply, OwnedRequest, PollOrder,
};
pub use events::{CallOutcome, Event};
pub use feed_share::SharedAnswer;
pub use host::{Host, LogLevel, SharedWrite};
pub use metrics::{Counter, Gauge, Histogram, Stage};
pub use read::{read_request, ReadRequest, Unreadable};
pub use switches::ABSENT_SWITCHES_DROPPED_AFTER_MS;
pub use timer::WakeTimer;
pub use verify_outside::{Verified, VerifyOutside};
pub use versions::KnownVersions;
pub use worker::{Worker, TICK};
