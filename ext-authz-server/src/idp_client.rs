//! The HTTP client for the IdP's introspection endpoints: RFC 7662 single calls (form body,
//! `client_secret_basic` or `client_secret_post`) and this project's batch call (JSON array of
//! tokens in, array of responses out; see `docs/batch-introspection.md`). Keep-alive connections
//! are pooled by `reqwest`. Parsing is strict (`authz_core::introspection`); a non-200 status is
//! an error, never a denial.
//!
//! This module does not cache, batch or retry; `introspector` does that.

use crate::config::{ClientAuth, IntrospectionConfig};
use crate::error::ServerError;
use authz_core::introspection::{parse_batch, Introspection, IntrospectionError};

/// Why an introspection call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    #[error("introspection timed out")]
    Timeout,
    #[error("introspection transport error: {0}")]
    Transport(String),
    #[error("introspection returned status {0}")]
    Status(u16),
    #[error("introspection response unusable: {0}")]
    Malformed(#[from] IntrospectionError),
    #[error("introspection circuit is open")]
    CircuitOpen,
}

impl IdpError {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IdpError::Timeout => "timeout",
            IdpError::Transport(_) => "transport",
            IdpError::Status(_) => "status",
            IdpError::Malformed(_) => "malformed",
            IdpError::CircuitOpen => "circuit_open",
        }
    }
}

/// A pooled client for one IdP.
#[derive(Debug, Clone)]
pub struct IdpClient {
    http: reqwest::Client,
    config: IntrospectionConfig,
}

fn transport(e: reqwest::Error) -> IdpError {
    if e.is_timeout() {
        IdpError::Timeout
    } else {
        IdpError::Transport(e.to_string())
    }
}

impl IdpClient {
    pub fn new(config: IntrospectionConfig) -> Result<IdpClient, ServerError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_idle_connections)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ServerError::HttpClient(e.to_string()))?;
        Ok(IdpClient { http, config })
    }

    pub fn has_batch_endpoint(&self) -> bool {
        self.config.batch_endpoint.is_some()
    }

    fn authenticate(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.config.auth {
            ClientAuth::Basic => {
                request.basic_auth(&self.config.client_id, Some(&self.config.client_secret))
            }
            ClientAuth::Post => request,
        }
    }

    /// Introspects one token.
    pub async fn introspect(&self, token: &str) -> Result<Introspection, IdpError> {
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        if self.config.auth == ClientAuth::Post {
            form.push(("client_id", &self.config.client_id));
            form.push(("client_secret", &self.config.client_secret));
        }
        let request = self.authenticate(
            self.http
                .post(&self.config.endpoint)
                .header("accept", "application/json")
                .form(&form),
        );
        let response = request.send().await.map_err(transport)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(IdpError::Status(response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(transport)?;
        Ok(Introspection::parse(&body)?)
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
        let request = self
            .http
            .post(endpoint)
            .basic_auth(&self.config.client_id, Some(&self.config.client_secret))
            .json(tokens);
        let response = request.send().await.map_err(transport)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(IdpError::Status(response.status().as_u16()));
        }
        let body = response.bytes().await.map_err(transport)?;
        Ok(parse_batch(&body, tokens.len())?)
    }
}
