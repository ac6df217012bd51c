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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::serve;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn redirects_are_never_followed() {
        let (elsewhere, hits) =
            serve(|_| "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".into()).await;
        let (redirecting, _) = serve(move |_| format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:{elsewhere}/introspect\r\ncontent-length: 0\r\n\r\n"
        ))
        .await;
        let config = ServerConfig::from_yaml(crate::config::tests::EXAMPLE).unwrap();
        let client = client(&config, Duration::from_secs(2), None).unwrap();
        let answer = client
            .post(format!("http://127.0.0.1:{redirecting}/introspect"))
            .header("authorization", "Basic c2VjcmV0")
            .body("token=abc")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 307, "the redirect is the answer");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "nothing (no secret, no token) went to the redirect's target"
        );
    }
}
