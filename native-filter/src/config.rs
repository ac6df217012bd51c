//! The filter configuration: Envoy hands the module the same JSON the Wasm filter takes (as
//! the `filter_config` string); it is validated with every problem named, and the process's
//! [`Shared`] state is built from it. A configuration Envoy refuses is one this returns `None`
//! for (Envoy then refuses the listener: nothing runs unfiltered).
//!
//! What it does not do: accept a partial configuration.

use crate::abi::{self, EnvoyConfig, LogLevel};
use crate::shared::Shared;
use authz_core::{Error, Policy};
use std::sync::Arc;

/// The name the module answers to in `filter_name`.
pub const FILTER_NAME: &str = "jwt_authz";

/// Builds the configuration's state, or logs why it cannot.
pub fn create(envoy: EnvoyConfig, name: &[u8], config: &[u8]) -> Option<Arc<Shared>> {
    if name != FILTER_NAME.as_bytes() {
        abi::log(
            LogLevel::Error,
            &format!(
                "jwt_authz configuration rejected: filter_name is {:?}, expected {FILTER_NAME:?}",
                String::from_utf8_lossy(name)
            ),
        );
        return None;
    }
    // The feed secret may be a `${NAME}` reference to the process environment (see
    // `authz_core::env_refs`).
    let environment = |name: &str| std::env::var(name).ok();
    let policy = match Policy::from_json_with_env(config, &environment) {
        Ok(policy) => policy,
        Err(Error::InvalidConfig(problems)) => {
            abi::log(
                LogLevel::Error,
                &format!(
                    "jwt_authz configuration rejected: {} problem(s)",
                    problems.len()
                ),
            );
            for problem in &problems {
                abi::log(
                    LogLevel::Error,
                    &format!("jwt_authz configuration problem: {problem}"),
                );
            }
            return None;
        }
        Err(other) => {
            abi::log(
                LogLevel::Error,
                &format!("jwt_authz configuration rejected: {other}"),
            );
            return None;
        }
    };
    abi::log(
        LogLevel::Info,
        &format!(
            "jwt_authz (native, ABI {}) configured: {} provider(s), {} route(s), default tier {}",
            abi::ABI_VERSION.to_string_lossy(),
            policy.providers.len(),
            policy.routes.routes.len(),
            policy.routes.default.tier
        ),
    );
    let shared = Shared::new(policy, envoy);
    if shared.is_none() {
        abi::log(
            LogLevel::Error,
            "jwt_authz configuration rejected: could not start its scheduler or wake thread",
        );
    }
    shared
}
