//! The identity provider at run time: its metadata (configured, or discovered from the issuer
//! with `authz_core::discovery` and refreshed), its signing keys (fetched from `jwks_uri`,
//! refreshed on schedule, and refetched when a token fails them: an unknown `kid`, or a
//! signature the key behind a known `kid` rejects, as after a rotation), and the local
//! verification of JWT access tokens with the filter's rules (`authz_core::verify`).
//!
//! Fetch timing is the filter's (`authz_core::jwks_refresh::next_fetch`): a token any client
//! can send causes at most three refetches at once, then one per
//! `jwks_min_refetch_interval_seconds`; concurrent
//! checks wait for one fetch (single flight) and verify again against what it brought. Failed
//! fetches keep the last good keys. Verified signatures are cached by token hash with the keys
//! version they were checked against: new keys make every cached verification stale, so when a
//! refetched set no longer holds a key, tokens signed by it fail at once. The cache skips only
//! the signature: time, audience and revocation are checked on every request by the caller.
//!
//! Not here: introspection calls (`idp_client`) and their cache (`introspector`).

use crate::clock::SharedClock;
use crate::config::{JwtAccessTokens, ServerConfig};
use crate::error::ServerError;
use crate::lock;
use crate::metrics::Metrics;
use crate::versions::TokenKey;
use authz_core::discovery::{metadata_url, parse, ProviderMetadata};
use authz_core::jwks_refresh::{next_fetch, FetchReason, FetchStatus, KeyMiss, RefreshRules};
use authz_core::verify::{verify, VerifiedToken, VerifyFailure};
use authz_core::KeySet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the background task looks at what is due.
const TICK: Duration = Duration::from_millis(250);

/// The provider as this server knows it now.
pub struct Idp {
    issuer: String,
    discovery: bool,
    configured_jwks_uri: Option<String>,
    configured_introspection: Option<String>,
    jwt_access_tokens: JwtAccessTokens,
    rules: RefreshRules,
    /// The purpose rules tokens are verified with (issuer, audiences, typ, skew).
    provider: authz_core::Provider,
    max_token_bytes: usize,
    http: reqwest::Client,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    metadata: RwLock<Option<ProviderMetadata>>,
    metadata_status: Mutex<FetchStatus>,
    keys: RwLock<Option<Arc<KeySet>>>,
    keys_status: Mutex<FetchStatus>,
    /// Held for the length of a keys fetch: one at a time, the others wait for it.
    keys_fetch: tokio::sync::Mutex<()>,
    /// The auth method we use, to warn when the metadata does not list it.
    auth_method: &'static str,
    /// Verified tokens by hash, with the keys version they were verified against.
    verified: moka::sync::Cache<TokenKey, (u64, Arc<VerifiedToken>)>,
    /// Why the last discovery failed (for readiness), until one succeeds.
    metadata_error: Mutex<Option<String>>,
}

/// How long a verified signature is reused at most (the caller rechecks the claims each time).
const VERIFIED_TTL: Duration = Duration::from_secs(60);

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Idp {
    pub fn new(
        config: &ServerConfig,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Idp>, ServerError> {
        let http = crate::idp_http::client(config, config.idp.fetch_timeout, None)?;
        let mut provider = config.token.clone();
        // JWT access tokens carry `exp` (RFC 9068).
        provider.require_expiration = true;
        Ok(Arc::new(Idp {
            issuer: config.token.issuer.clone(),
            discovery: config.idp.discovery,
            configured_jwks_uri: config.idp.jwks_uri.clone(),
            configured_introspection: config.introspection.endpoint.clone(),
            jwt_access_tokens: config.idp.jwt_access_tokens,
            rules: config.idp.refresh,
            provider,
            max_token_bytes: config.max_token_bytes,
            http,
            clock,
            metrics,
            metadata: RwLock::new(None),
            metadata_status: Mutex::new(FetchStatus::default()),
            keys: RwLock::new(None),
            keys_status: Mutex::new(FetchStatus::default()),
            keys_fetch: tokio::sync::Mutex::new(()),
            verified: moka::sync::Cache::builder()
                .max_capacity(config.cache.max_entries)
                .time_to_live(VERIFIED_TTL)
                .build(),
            metadata_error: Mutex::new(None),
            auth_method: match config.introspection.auth {
                crate::config::ClientAuth::Basic => "client_secret_basic",
                crate::config::ClientAuth::Post => "client_secret_post",
                crate::config::ClientAuth::None => "none",
                crate::config::ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
            },
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The introspection endpoint: configured, else discovered (`None` until then).
    pub fn introspection_endpoint(&self) -> Option<String> {
        self.configured_introspection
            .clone()
            .or_else(|| read(&self.metadata).and_then(|m| m.introspection_endpoint))
    }

    fn jwks_uri(&self) -> Option<String> {
        self.configured_jwks_uri
            .clone()
            .or_else(|| read(&self.metadata).and_then(|m| m.jwks_uri))
    }

    /// Whether the provider's keys are fetched: JWTs are to be verified here, and the keys
    /// have a source (an explicit `jwks_uri`, or discovery).
    fn wants_keys(&self) -> bool {
        self.jwt_access_tokens == JwtAccessTokens::Verify
            && (self.configured_jwks_uri.is_some() || self.discovery)
    }

    /// Whether discovery is only for the keys: the introspection endpoint is configured, so
    /// the server decides without the metadata (JWTs are introspected until keys load).
    fn discovers_keys_only(&self) -> bool {
        self.discovery
            && self.configured_introspection.is_some()
            && self.configured_jwks_uri.is_none()
    }

    /// Whether JWT access tokens are verified here rather than introspected: configured so,
    /// and the keys have a source. When discovery only finds the keys beside a configured
    /// introspection endpoint, JWTs are introspected until the keys are loaded.
    /// Whether a key set is loaded (read on every check: no copy of it is taken).
    fn keys_loaded(&self) -> bool {
        self.keys
            .read()
            .map_or_else(|p| p.get_ref().is_some(), |k| k.is_some())
    }

    pub fn verifies_jwts(&self) -> bool {
        self.wants_keys() && (!self.discovers_keys_only() || self.keys_loaded())
    }

    /// What still keeps the server from deciding with this provider, if anything.
    pub fn not_ready(&self) -> Option<String> {
        if self.discovery && !self.discovers_keys_only() && read(&self.metadata).is_none() {
            return Some(match lock(&self.metadata_error).as_deref() {
                Some(why) => format!("provider metadata not discovered yet: {why}"),
                None => "provider metadata not discovered yet".to_owned(),
            });
        }
        if self.introspection_endpoint().is_none() {
            return Some("the provider's metadata has no introspection_endpoint".to_owned());
        }
        if self.verifies_jwts() && !self.keys_loaded() {
            return Some("signing keys not loaded yet".to_owned());
        }
        None
    }

    /// Runs for the server's life: discovers the metadata (then refreshes it), loads the keys
    /// (then refreshes them), retrying failures with backoff.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now_ms = self.clock.now_ms();
            if self.discovery {
                let due = next_fetch(&self.rules, &lock(&self.metadata_status), now_ms, None);
                if let Some(reason) = due {
                    self.discover(now_ms, reason).await;
                }
            }
            if self.wants_keys() && self.jwks_uri().is_some() {
                self.fetch_keys_if_due(now_ms, None).await;
            }
            tokio::time::sleep(TICK).await;
        }
    }

    async fn discover(&self, now_ms: u64, reason: FetchReason) {
        {
            let mut status = lock(&self.metadata_status);
            *status = status.leased(&self.rules, now_ms, reason);
        }
        let mut outcome = Err(String::from("no metadata URL"));
        for which in 0..authz_core::discovery::WELL_KNOWN_PATHS.len() {
            let Some(url) = metadata_url(&self.issuer, which) else {
                continue;
            };
            outcome = self.fetch_metadata(&url).await;
            // The RFC 8414 path only when the OpenID one is absent.
            if !matches!(&outcome, Err(why) if why.starts_with("status 404")) {
                break;
            }
        }
        let mut status = lock(&self.metadata_status);
        match outcome {
            Ok(metadata) => {
                if !metadata.auth_methods.is_empty()
                    && !metadata.auth_methods.iter().any(|m| m == self.auth_method)
                {
                    tracing::warn!(
                        issuer = %self.issuer,
                        auth_method = self.auth_method,
                        supported = ?metadata.auth_methods,
                        "provider_metadata: our client auth method is not listed as supported"
                    );
                }
                tracing::info!(
                    issuer = %self.issuer,
                    jwks_uri = metadata.jwks_uri.as_deref(),
                    introspection_endpoint = metadata.introspection_endpoint.as_deref(),
                    "provider_metadata_loaded"
                );
                write(&self.metadata, Some(metadata));
                *lock(&self.metadata_error) = None;
                *status = status.succeeded(self.clock.now_ms(), 0);
                self.metrics
                    .inc("authz_provider_metadata_fetches_total", &[("result", "ok")]);
            }
            Err(why) => {
                tracing::warn!(issuer = %self.issuer, error = %why, "provider_metadata_failed: keeping what we had");
                if self.discovers_keys_only() && !self.keys_loaded() {
                    tracing::warn!(
                        issuer = %self.issuer,
                        "provider_keys_missing: JWT access tokens are introspected (one IdP call each) until the keys are discovered; set token.jwks_uri, or token.discovery: false to say so"
                    );
                }
                *lock(&self.metadata_error) = Some(why);
                *status = status.failed();
                self.metrics.inc(
                    "authz_provider_metadata_fetches_total",
                    &[("result", "failed")],
                );
            }
        }
    }

    /// The body of a 200 answer to a GET of `url` (`status N` or the transport error else).
    async fn get_json(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if status != reqwest::StatusCode::OK {
            return Err(format!("status {}", status.as_u16()));
        }
        Ok(body.to_vec())
    }

    async fn fetch_metadata(&self, url: &str) -> Result<ProviderMetadata, String> {
        let body = self
            .get_json(url)
            .await
            .map_err(|why| format!("{why} from {url}"))?;
        let metadata = parse(&body, &self.issuer).map_err(|e| format!("{url}: {e}"))?;
        // What the server takes from the document must be on the issuer's origin, as the
        // filter requires of its keys: configured endpoints are the operator's word instead.
        // (`revocation_endpoint` is never called: nothing is sent there.)
        let mut taken = Vec::new();
        if self.configured_jwks_uri.is_none() {
            taken.push("jwks_uri");
        }
        if self.configured_introspection.is_none() {
            taken.push("introspection_endpoint");
        }
        match metadata.foreign_endpoint(&taken) {
            Some((name, endpoint)) => Err(format!(
                "{url}: {name} {endpoint} is not on the issuer's scheme, host and port (configure it explicitly if that is intended)"
            )),
            None => Ok(metadata),
        }
    }

    fn keys_version(&self) -> u64 {
        lock(&self.keys_status).keys_version
    }

    /// Fetches the keys when due (`miss`: how a token failed the current keys, which allows a
    /// rate-limited refetch). True when the keys changed since the caller looked, by this
    /// fetch or by one it waited for.
    async fn fetch_keys_if_due(&self, now_ms: u64, miss: Option<KeyMiss>) -> bool {
        let seen = self.keys_version();
        let _one_at_a_time = self.keys_fetch.lock().await;
        if self.keys_version() != seen {
            return true;
        }
        let (reason, meets) = {
            let mut status = lock(&self.keys_status);
            let Some(reason) = next_fetch(&self.rules, &status, now_ms, miss) else {
                if miss.is_some() {
                    self.metrics
                        .inc("authz_jwks_refetches_rate_limited_total", &[]);
                }
                return false;
            };
            *status = status.leased(&self.rules, now_ms, reason);
            (reason, status.refetch_wanted_at_ms)
        };
        let Some(uri) = self.jwks_uri() else {
            let mut status = lock(&self.keys_status);
            *status = status.released();
            return false;
        };
        let fetched = self.fetch_keys(&uri).await;
        let mut status = lock(&self.keys_status);
        match fetched {
            Ok(set) => {
                for skipped in &set.skipped {
                    tracing::warn!(jwks_uri = %uri, skipped = %skipped, "jwks_key_skipped");
                }
                tracing::info!(jwks_uri = %uri, keys = set.keys.len(), reason = reason.as_str(), "jwks_loaded");
                self.metrics
                    .set_gauge("authz_jwks_keys", &[], set.keys.len() as f64);
                write(&self.keys, Some(Arc::new(set)));
                *status = status.succeeded(self.clock.now_ms(), meets);
                self.metrics.inc(
                    "authz_jwks_fetches_total",
                    &[("reason", reason.as_str()), ("result", "ok")],
                );
                true
            }
            Err(why) => {
                tracing::warn!(jwks_uri = %uri, error = %why, reason = reason.as_str(), "jwks_fetch_failed: keeping the last good keys");
                *status = status.failed();
                self.metrics.inc(
                    "authz_jwks_fetches_total",
                    &[("reason", reason.as_str()), ("result", "failed")],
                );
                false
            }
        }
    }

    async fn fetch_keys(&self, uri: &str) -> Result<KeySet, String> {
        let body = self.get_json(uri).await?;
        KeySet::from_jwks_json(&body).map_err(|e| e.to_string())
    }

    /// An operator asked for the keys to be fetched again (`jwks_refetch` switch, at `at_ms`
    /// on the server's clock): until a fetch started after this succeeds, no token is verified
    /// with the keys held (checks that need them wait for that fetch, or fail), and every
    /// verification made so far is forgotten.
    pub fn demand_refetch(&self, at_ms: u64) {
        let mut status = lock(&self.keys_status);
        *status = status.demand_refetch(at_ms);
        if status.refetch_pending() {
            tracing::warn!(
                refetch_at_ms = at_ms,
                "jwks_refetch_demanded: the keys held are not used until a new fetch succeeds"
            );
        }
        drop(status);
        self.verified.invalidate_all();
    }

    /// Forgets every cached verification (a flush).
    pub fn forget_verifications(&self) {
        self.verified.invalidate_all();
    }

    /// The keys to verify with: none while a demanded refetch is pending.
    fn usable_keys(&self) -> Option<Arc<KeySet>> {
        if lock(&self.keys_status).refetch_pending() {
            return None;
        }
        read(&self.keys).clone()
    }

    fn verify_now(&self, token: &str) -> Result<VerifiedToken, VerifyFailure> {
        let keys = self.usable_keys();
        verify(
            token,
            std::slice::from_ref(&self.provider),
            |_| keys.as_deref(),
            self.max_token_bytes,
            self.clock.now_seconds(),
        )
    }

    /// Verifies a JWS signed with one of the provider's published keys (not an access token:
    /// no claim is checked; see [`authz_core::verify::verify_signed_by`]), fetching the keys
    /// when none are loaded or a fresh fetch might change the outcome (rate-limited as for
    /// tokens). Its header and payload.
    pub async fn verify_signed(
        &self,
        jws: &str,
        max_bytes: usize,
    ) -> Result<(serde_json::Value, Vec<u8>), VerifyFailure> {
        let attempt = || match self.usable_keys().as_deref() {
            Some(set) => authz_core::verify::verify_signed_by(jws, set, max_bytes),
            None => Err(VerifyFailure::KeysUnavailable { provider: 0 }),
        };
        match attempt() {
            Err(failure) if failure.keys_may_have_changed().is_some() => {
                if self
                    .fetch_keys_if_due(self.clock.now_ms(), failure.key_miss())
                    .await
                {
                    attempt()
                } else {
                    Err(failure)
                }
            }
            outcome => outcome,
        }
    }

    /// Verifies a JWT access token (`key`: its hash) against the provider's keys, reusing a
    /// verification made with the current keys; a failure fresh keys might change (see
    /// [`VerifyFailure::keys_may_have_changed`]) refetches them once, rate-limited, and verifies
    /// again. Only successes are cached.
    pub async fn verify(
        &self,
        key: &TokenKey,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, VerifyFailure> {
        let version = self.keys_version();
        if let Some((seen, verified)) = self.verified.get(key) {
            if seen == version && !lock(&self.keys_status).refetch_pending() {
                self.metrics
                    .inc("authz_jwt_verifications_total", &[("result", "cached")]);
                return Ok(verified);
            }
        }
        // The version is read before the keys a verification uses, so an entry is never tagged
        // newer than the keys that verified it (only older: a harmless miss later).
        let first = self.verify_now(token);
        let (outcome, verified_with) = match first {
            Err(failure) if failure.keys_may_have_changed().is_some() => {
                if self
                    .fetch_keys_if_due(self.clock.now_ms(), failure.key_miss())
                    .await
                {
                    let refetched = self.keys_version();
                    (self.verify_now(token), refetched)
                } else {
                    (Err(failure), version)
                }
            }
            other => (other, version),
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(failure) => failure.as_str(),
        };
        self.metrics
            .inc("authz_jwt_verifications_total", &[("result", label)]);
        let verified = Arc::new(outcome?);
        self.verified
            .insert(*key, (verified_with, verified.clone()));
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::{json_answer, serve};

    /// An IdP at a loopback port whose metadata names `jwks_uri(its port)`.
    async fn idp_whose_metadata_names(jwks_uri: fn(u16) -> String) -> Arc<Idp> {
        let (port, _) = serve(move |port| {
            json_answer(&format!(
                r#"{{"issuer":"http://127.0.0.1:{port}","jwks_uri":"{}","introspection_endpoint":"http://127.0.0.1:{port}/introspect"}}"#,
                jwks_uri(port)
            ))
        })
        .await;
        let yaml = crate::config::tests::EXAMPLE
            .replace("  endpoint: http://127.0.0.1:9000/introspect\n", "")
            .replace("https://idp.example", &format!("http://127.0.0.1:{port}"));
        let config = ServerConfig::from_yaml(&yaml).unwrap();
        Idp::new(
            &config,
            Arc::new(crate::clock::SystemClock),
            Arc::new(Metrics::default()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn endpoints_discovered_on_another_origin_are_refused_and_readiness_says_why() {
        // Keys on another port of the same host: another origin.
        let idp =
            idp_whose_metadata_names(|port| format!("http://127.0.0.1:{}/keys", port + 1)).await;
        idp.discover(0, FetchReason::Initial).await;
        let why = idp.not_ready().unwrap_or_default();
        assert!(
            why.contains("jwks_uri http://127.0.0.1:")
                && why.contains("is not on the issuer's scheme, host and port"),
            "{why}"
        );
        assert_eq!(idp.introspection_endpoint(), None, "nothing taken from it");
        // Control: the same document with the keys on the issuer's origin is taken.
        let idp = idp_whose_metadata_names(|port| format!("http://127.0.0.1:{port}/keys")).await;
        idp.discover(0, FetchReason::Initial).await;
        assert!(idp.introspection_endpoint().is_some());
    }
}
