//! The server crate's one error type.

/// Errors of the ext_authz server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable; every problem is listed.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    InvalidConfig(Vec<String>),
    #[error("cannot read {path}: {source}")]
    ReadConfig {
        path: String,
        source: std::io::Error,
    },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("http client error: {0}")]
    HttpClient(String),
}
