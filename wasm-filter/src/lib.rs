//! The proxy-wasm HTTP filter: Envoy's (and Istio's) host of the filter core.
//!
//! It turns proxy-wasm callbacks into `filter_core::Worker` events and carries out the
//! commands that come back: the root context ([`root`]) loads the configuration and turns the
//! timer into wake-ups; the HTTP context ([`http`]) reads a request's headers as bytes, strips
//! client copies of the headers we set; [`check`] builds Check messages; [`driver`] runs the core in
//! the documented order (event, commands, timer) and keeps the calls out; [`envoy_host`] is the core's
//! `Host` (shared data, logs, metrics); [`abi`] binds the host calls by hand and [`host`] wraps
//! them so that none of them can panic the filter.
//!
//! What it does not do: any authorization or protocol rule of its own. Decisions come from
//! `authz-core`, the rules around them (key fetch leases, waiting requests, the decision cache
//! and its trust) from `filter-core`; both are tested on the host without Envoy.

pub mod abi;
pub mod check;
pub mod driver;
pub mod envoy_host;
pub mod host;
pub mod http;
pub mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(root::AuthzRoot::new(context_id)));
}}
