//! Pure authorization logic shared by the Wasm filter and the ext_authz server.
//!
//! This crate owns: the JWS/JWT verifier and its key sets ([`keys`], [`verify`]), the claims
//! model ([`claims`]), the risk tiers ([`tier`]), the route table and its requirements
//! ([`routes`]), the plugin configuration and its validation ([`config`]) and the final decision
//! with the exact deny responses ([`decision`]), and the one mapping from a verdict to an HTTP
//! answer and an ext_authz reply ([`verdict`]).
//!
//! What it does *not* do: no I/O, no clock, no logging, no global state. Time is always a
//! parameter (`now`, Unix seconds), keys arrive as bytes, and every outcome is a value the
//! caller acts on. That is what lets the same code run inside Envoy (wasm32-wasip1) and in
//! host tests, where it is unit- and property-tested.

pub mod canary;
pub mod circuit;
pub mod claims;
pub mod config;
pub mod context;
pub mod decision;
pub mod decision_cache;
pub mod discovery;
pub mod env_refs;
pub mod epochs;
pub mod error;
pub mod ext_authz_proto;
pub mod fallback;
pub mod feed;
pub mod introspection;
pub mod jwks_refresh;
pub mod keys;
pub mod principal;
pub mod resources;
pub mod revocations;
pub mod routes;
pub mod rsa_verify;
pub mod status_list;
pub mod switches;
pub mod target;
pub mod tier;
pub mod token_hash;
pub mod trace_context;
pub mod verdict;
pub mod verify;

pub use claims::Claims;
pub use config::{FilterConfig, Policy};
pub use decision::{decide, deny_response, Decision, DenyReason, DenyResponse, RequestFacts};

pub use error::Error;
pub use keys::KeySet;
pub use tier::Tier;
pub use verdict::Verdict;
pub use verify::{Provider, VerifiedToken, VerifyFailure};
