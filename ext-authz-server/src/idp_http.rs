//! The one HTTP client setup of every call to the identity provider (metadata, keys,
//! introspection): https through rustls with the public (webpki) roots plus `idp_ca_file`,
//! and no redirect ever followed (a redirect could carry the client secret or a token to
//! another host; an IdP that answers 3xx is an error, logged with its status).

use crate::config::ServerConfig;
use crate::error::ServerError;
use std::time::Duration;

/// A client for IdP calls with `timeout`, and `max_idle` pooled connections per host when
/// given.
pub fn client(
    config: &ServerConfig,
    timeout: Duration,
    max_idle: Option<usize>,
) -> Result<reqwest::Client, ServerError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(max_idle) = max_idle {
        builder = builder.pool_max_idle_per_host(max_idle);
    }
    if let Some(pem) = &config.idp_ca_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| ServerError::HttpClient(format!("idp_ca_file: {e}")))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| ServerError::HttpClient(e.to_string()))
}
