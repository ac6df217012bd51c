//! The native filter: an Envoy dynamic module (Envoy 1.40, ABI `v0.2.0`) hosting the same
//! filter core, configuration and behaviour as the Wasm filter, with what a native module can
//! do that a Wasm VM cannot: one core per process (one JWKS fetch and key set, token and
//! decision caches shared by every worker thread, one change-feed request), RSA verified with
//! `ring`, and no VM to cross on each request.
//!
//! The parts: [`abi`] binds the callbacks this module makes and [`hooks`] exports the hooks
//! Envoy calls, both by hand (all the `unsafe` is in these two); [`config`] validates the configuration; [`shared`] is the
//! process's core and where each command is carried out; [`request`] is one request on its
//! worker thread; [`host`] is the core's `Host`; [`wake`] turns `poll_timeout` into wake-ups
//! (the ABI has no timer); [`grpc`] frames the Check call over an HTTP callout.
//!
//! What it does not do: any authorization or protocol rule of its own (those are
//! `authz-core`'s and `filter-core`'s, shared with the Wasm filter).

pub mod abi;
pub mod calls;
pub mod config;
pub mod grpc;
pub mod hooks;
pub mod host;
pub mod request;
pub mod shared;
pub mod wake;
