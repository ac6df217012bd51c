//! The HTTP client for the IdP's introspection endpoints: RFC 7662 single calls (form body,
//! `client_secret_basic` or `client_secret_post`) and this project's batch call (JSON array of
//! tokens in, array of responses out; see `docs/batch-introspection.md`). Keep-alive connections
//! are pooled by `reqwest`. Parsing is strict (`authz_core::introspection`); a non-200 status is
//! an error ([`classify_status`] tells a refusal of the token from a failing IdP), never an
//! allow.
//!
//! `client_secret_basic` follows RFC 6749 §2.3.1: id and secret are form-urlencoded before
//! base64, so secrets with `+`, `/`, `=` or `:` work with any compliant IdP. [`IdpClient::probe`]
//! is the start-up check of endpoint and credentials (see `readiness`).
//!
//! This module does not cache, batch or retry; `introspector` does that.

use crate::config::{ClientAuth, IntrospectionConfig};
use crate::error::ServerError;
use crate::idp::Idp;
use authz_core::introspection::{parse_batch, Introspection, IntrospectionError};
use std::sync::Arc;

/// Why an introspection call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("introspection timed out")]
    Timeout,
    #[error("introspection transport error: {0}")]
    Transport(String),
    /// An error status with the OAuth `error` code of its body (empty when it had none).
    #[error("introspection returned status {status} (error {code:?})")]
    Status { status: u16, code: String },
    #[error("introspection response unusable: {0}")]
    Malformed(#[from] IntrospectionError),
    #[error("introspection circuit is open")]
    CircuitOpen,
    /// Our own cap on the IdP request rate was reached (`introspection.max_calls_per_second`).
    #[error("introspection rate cap reached")]
    Throttled,
    /// The IdP refused this token (RFC 6749 §5.2 / RFC 7662 error about the token itself,
    /// e.g. 400 `unsupported_token_type`): the token is not active. Not an IdP failure.
    #[error("introspection refused the token: status {status}, error {code:?}")]
    Refused { status: u16, code: String },
}

impl IdpError {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IdpError::Timeout => "timeout",
            IdpError::Transport(_) => "transport",
            IdpError::Status { .. } => "status",
            IdpError::Malformed(_) => "malformed",
            IdpError::CircuitOpen => "circuit_open",
            IdpError::Throttled => "throttled",
            IdpError::Refused { .. } => "refused",
        }
    }

    /// Whether this error says the IdP (or our link to it, or our credentials) is failing:
    /// those count toward the circuit breaker and allow stale-if-error answers. A refusal of
    /// one token and our own rate cap do not.
    pub fn is_idp_failure(&self) -> bool {
        !matches!(self, IdpError::Refused { .. } | IdpError::Throttled)
    }

    /// Whether the IdP refused our client: its credentials (or its right to introspect) are
    /// wrong, which no retry fixes. The server reports not-ready until a probe passes again.
    pub fn is_credentials_rejected(&self) -> bool {
        matches!(self, IdpError::Status { status, code }
            if *status == 401 || *status == 403 || CLIENT_ERRORS.contains(&code.as_str()))
    }
}

/// OAuth error codes that are about our client, not about the token (RFC 6749 §5.2).
const CLIENT_ERRORS: [&str; 3] = ["invalid_client", "unauthorized_client", "access_denied"];

/// Classifies a non-200 introspection answer. A 400 whose OAuth `error` is not about our
/// client is a refusal of the token (an IdP such as `oidc-provider` answers 400
/// `unsupported_token_type` for a token it did not issue as introspectable); 401/403 (our
/// credentials), 404/405 (our endpoint), 429 (throttling), 5xx and anything else are IdP
/// errors.
pub fn classify_status(status: u16, body: &[u8]) -> IdpError {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_default();
    if status == 400 && !CLIENT_ERRORS.contains(&code.as_str()) {
        IdpError::Refused { status, code }
    } else {
        IdpError::Status { status, code }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 Appendix B): ASCII
/// letters, digits and `*-._` stay, space becomes `+`, every other byte `%XX`.
pub fn form_urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The `Authorization` value of `client_secret_basic` (RFC 6749 §2.3.1).
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    use base64::Engine;
    let pair = format!(
        "{}:{}",
        form_urlencode(client_id),
        form_urlencode(client_secret)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A pooled client for one IdP.
#[derive(Clone)]
pub struct IdpClient {
    http: reqwest::Client,
    config: IntrospectionConfig,
    /// Where the endpoints are (configured or discovered).
    idp: Arc<Idp>,
    /// `private_key_jwt`'s signing key, parsed once.
    assertion_key: Option<Arc<jsonwebtoken::EncodingKey>>,
    /// Marks client-credentials answers that carry a `sub` (`token.client_grant`).
    client_grant: Option<authz_core::principal::ClientGrant>,
}

fn transport(e: reqwest::Error) -> IdpError {
    if e.is_timeout() {
        IdpError::Timeout
    } else {
        IdpError::Transport(e.to_string())
    }
}

impl IdpClient {
    /// `http`: the IdP client (`idp_http::client`).
    pub fn new(
        config: IntrospectionConfig,
        idp: Arc<Idp>,
        http: reqwest::Client,
    ) -> Result<IdpClient, ServerError> {
        let assertion_key = match &config.auth {
            ClientAuth::PrivateKeyJwt(key) => Some(Arc::new(key.encoding_key().map_err(|e| {
                ServerError::InvalidConfig(vec![format!("introspection.private_key_file: {e}")])
            })?)),
            _ => None,
        };
        Ok(IdpClient {
            http,
            config,
            idp,
            assertion_key,
            client_grant: None,
        })
    }

    /// Answers this marker names are a client's ([`authz_core::principal::ClientGrant`]).
    pub fn with_client_grant(
        mut self,
        grant: Option<authz_core::principal::ClientGrant>,
    ) -> IdpClient {
        self.client_grant = grant;
        self
    }

    /// The single-token endpoint (for logs): configured or discovered.
    pub fn endpoint(&self) -> String {
        self.idp
            .introspection_endpoint()
            .unwrap_or_else(|| "(not discovered yet)".into())
    }

    /// An RFC 7523 client assertion: `iss` and `sub` our client id, `aud` the issuer (which
    /// RFC 7523 implementations accept for every endpoint), a minute of life, a random `jti`.
    fn client_assertion(&self) -> Result<String, IdpError> {
        let (Some(key), ClientAuth::PrivateKeyJwt(client_key)) =
            (&self.assertion_key, &self.config.auth)
        else {
            return Err(IdpError::Transport("no private_key_jwt key".into()));
        };
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random)
            .map_err(|e| IdpError::Transport(format!("no randomness for jti: {e}")))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = serde_json::json!({
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.idp.issuer(),
            "jti": random.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "iat": now,
            "exp": now + 60,
        });
        let mut header = jsonwebtoken::Header::new(client_key.algorithm);
        header.kid = client_key.kid.clone();
        jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| IdpError::Transport(format!("client assertion: {e}")))
    }

    /// Whether batches go to a batch endpoint: one is configured, and we have a secret for
    /// its `Authorization` header (not with `private_key_jwt`).
    pub fn has_batch_endpoint(&self) -> bool {
        self.config.batch_endpoint.is_some()
            && !matches!(self.config.auth, ClientAuth::PrivateKeyJwt(_))
    }

    /// Introspects one token.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, IdpError> {
        let endpoint = self
            .idp
            .introspection_endpoint()
            .ok_or(IdpError::Transport(
                "the introspection endpoint is not discovered yet".into(),
            ))?;
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let assertion;
        let mut request = self
            .http
            .post(&endpoint)
            .header("accept", "application/json");
        match &self.config.auth {
            ClientAuth::Basic => {
                request = request.header(
                    "authorization",
                    basic_authorization(&self.config.client_id, &self.config.client_secret),
                );
            }
            ClientAuth::Post => {
                form.push(("client_id", &self.config.client_id));
                form.push(("client_secret", &self.config.client_secret));
            }
            ClientAuth::None => {}
            ClientAuth::PrivateKeyJwt(_) => {
                assertion = self.client_assertion()?;
                form.push(("client_id", &self.config.client_id));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", &assertion));
            }
        }
        let request = request.form(&form);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if status != reqwest::StatusCode::OK {
            return Err(classify_status(status.as_u16(), &body));
        }
        Ok(Introspection::parse(&body)?.with_client_grant(self.client_grant.as_ref()))
    }

    /// Checks endpoint and credentials: the introspection of a token no IdP issued (random) must
    /// be a well-formed `active: false` (or a refusal of that token). Anything else (an error
    /// status, an active answer, garbage, no answer) says the configuration does not work.
    pub async fn probe(&self) -> Result<(), IdpError> {
        let mut random = [0u8; 24];
        getrandom::getrandom(&mut random)
            .map_err(|e| IdpError::Transport(format!("no randomness for the probe: {e}")))?;
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        match self.introspect(&format!("authz-probe-{token}")).await {
            Ok(answer) if !answer.active => Ok(()),
            Ok(_) => Err(IdpError::Transport(
                "the IdP called a random token active".into(),
            )),
            // A refusal of the token itself (400 with an error code not about our client)
            // means our client got through.
            Err(IdpError::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Introspects several tokens in one call to the batch endpoint.
    pub async fn introspect_batch(
        &self,
        tokens: &[String],
    ) -> Result<Vec<Introspection>, IdpError> {
        let Some(endpoint) = &self.config.batch_endpoint else {
            return Err(IdpError::Transport("no batch endpoint configured".into()));
        };
        // The batch endpoint takes credentials in the Authorization header only (JSON body).
        let mut request = self.http.post(endpoint);
        if self.config.auth != ClientAuth::None {
            request = request.header(
                "authorization",
                basic_authorization(&self.config.client_id, &self.config.client_secret),
            );
        }
        let request = request.json(tokens);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if status != reqwest::StatusCode::OK {
            return Err(classify_status(status.as_u16(), &body));
        }
        let grant = self.client_grant.as_ref();
        Ok(parse_batch(&body, tokens.len())?
            .into_iter()
            .map(|answer| answer.with_client_grant(grant))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::{json_answer, serve_recording};

    /// The example configuration, introspecting at a local server's `port`, edited by `edit`;
    /// its parsed form and what an [`IdpClient`] needs besides.
    fn local_parts(
        port: u16,
        edit: impl Fn(String) -> String,
    ) -> (crate::config::ServerConfig, Arc<Idp>, reqwest::Client) {
        let yaml = edit(crate::config::tests::EXAMPLE.replace(
            "http://127.0.0.1:9000/introspect\n",
            &format!("http://127.0.0.1:{port}/introspect\n"),
        ));
        let config = crate::config::ServerConfig::from_yaml(&yaml).unwrap();
        let idp = Idp::new(
            &config,
            Arc::new(crate::clock::SystemClock),
            Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        let http = crate::idp_http::client(&config, config.introspection.timeout, None).unwrap();
        (config, idp, http)
    }

    #[tokio::test]
    async fn a_marked_client_credentials_answer_names_the_client_not_a_user() {
        let (port, _) = serve_recording(|_| {
            json_answer(
                r#"{"active":true,"sub":"app@clients","azp":"app","gty":"client-credentials"}"#,
            )
        })
        .await;
        let (config, idp, http) = local_parts(port, |yaml| {
            yaml.replace(
                "audiences: [demo-api]}",
                "audiences: [demo-api], client_grant: {claim: gty, values: [client-credentials]}}",
            )
        });
        let plain =
            IdpClient::new(config.introspection.clone(), idp.clone(), http.clone()).unwrap();
        assert!(plain.introspect("t").await.unwrap().is_user_token());
        let marked = IdpClient::new(config.introspection.clone(), idp, http)
            .unwrap()
            .with_client_grant(config.token.client_grant.clone());
        let answer = marked.introspect("t").await.unwrap();
        assert!(!answer.is_user_token(), "step-up for users does not apply");
        assert_eq!(
            answer.principal().map(|p| p.key()),
            Some(authz_core::principal::client_key("app"))
        );
    }

    #[tokio::test]
    async fn without_client_authentication_nothing_but_the_token_is_sent() {
        let (port, received) = serve_recording(|_| json_answer(r#"{"active":false}"#)).await;
        let (config, idp, http) = local_parts(port, |yaml| {
            yaml.replace("  client_id: authz-server\n", "").replace(
                "  client_secret: authz-server-secret\n",
                "  auth_method: none\n",
            )
        });
        let client = IdpClient::new(config.introspection.clone(), idp, http).unwrap();
        let answer = client.introspect("opaque-token-1").await.unwrap();
        assert!(!answer.active);
        let requests = received.lock().unwrap().clone();
        let request = requests.first().expect("one request").to_ascii_lowercase();
        assert!(request.contains("token=opaque-token-1"), "{request}");
        assert!(!request.contains("authorization:"), "{request}");
        assert!(
            !request.contains("client_secret") && !request.contains("client_id"),
            "{request}"
        );
    }

    #[test]
    fn refusals_of_a_token_are_told_from_idp_failures() {
        let refused = classify_status(400, br#"{"error":"unsupported_token_type"}"#);
        assert!(matches!(refused, IdpError::Refused { .. }));
        assert!(!refused.is_idp_failure());
        assert!(matches!(
            classify_status(400, br#"{"error":"invalid_request"}"#),
            IdpError::Refused { .. }
        ));
        assert!(matches!(
            classify_status(400, b"not json"),
            IdpError::Refused { .. }
        ));
        for (status, body) in [
            (400, &br#"{"error":"invalid_client"}"#[..]),
            (401, br#"{"error":"invalid_client"}"#),
            (403, b""),
            (404, b""),
            (429, b""),
            (500, br#"{"error":"server_error"}"#),
            (503, b""),
        ] {
            let e = classify_status(status, body);
            assert!(matches!(e, IdpError::Status { status: s, .. } if s == status));
            assert!(e.is_idp_failure());
            assert_eq!(
                e.is_credentials_rejected(),
                matches!(status, 400 | 401 | 403),
                "{status}"
            );
        }
    }

    #[test]
    fn client_secret_basic_form_urlencodes_before_base64() {
        use base64::Engine;
        let header = basic_authorization("my client", "b64+like/secret=:x");
        let encoded = header.strip_prefix("Basic ").unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&decoded),
            "my+client:b64%2Blike%2Fsecret%3D%3Ax"
        );
        assert_eq!(form_urlencode("aZ09*-._~é"), "aZ09*-._%7E%C3%A9");
    }
}
