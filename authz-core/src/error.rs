//! The crate's one error type: what can go wrong while *loading* things (configuration, key
//! sets). Per-request outcomes are not errors; they are [`crate::DenyReason`] values.

/// Errors raised while loading configuration or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable; every problem found is listed.
    #[error("invalid configuration: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// A JWKS document could not be parsed or held no usable signing key.
    #[error("invalid jwks: {0}")]
    InvalidJwks(String),
}
