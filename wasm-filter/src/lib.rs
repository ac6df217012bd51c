//! The proxy-wasm HTTP filter: Envoy's side of the authorization layer.
//!
//! A thin adapter over `authz-core`. The root context ([`root`]) loads the configuration,
//! fetches remote JWKS through Envoy clusters (one fetch for every worker, coordinated through
//! shared data), runs the timer, and wakes requests that waited for keys. The HTTP context
//! ([`http`]) strips client copies of the headers we set, asks `authz_core::decide`, and acts.
//! [`worker`] is the state one worker's root and HTTP contexts share; [`abi`] binds the host
//! calls by hand and [`host`] wraps them so that none of them can panic the filter; [`metrics`] names the counters.
//!
//! What it does not do: any authorization logic of its own. Every rule lives in `authz-core`,
//! where it is tested on the host.

pub mod abi;
pub mod host;
pub mod http;
pub mod metrics;
pub mod root;
pub mod server_path;
pub mod worker;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(root::AuthzRoot::new(context_id)));
}}
