//! Introspection results for checks: a bounded cache in front of the IdP, with single-flight,
//! batching, refresh-ahead and a circuit breaker.
//!
//! - Cache: `moka`, keyed by the SHA-256 of the token (tokens are never stored), bounded in
//!   entries, each entry living `authz_core::fallback::cache_ttl_ms` (never past the token's
//!   `exp`, the longest tier window, or the cap; inactive results briefly; errors never).
//!   `moka` is a concurrent cache with per-entry expiry and TinyLFU eviction, which is what a
//!   flood of unique tokens needs.
//! - Freshness per check: `authz_core::fallback::plan` and `on_idp_error` decide, for the
//!   check's tier, whether a cached result serves, must be refreshed, or may be served stale.
//! - Single-flight: concurrent misses for one token share one introspection, run in its own
//!   task so a caller that gives up does not cancel it for the others; reads of the shared
//!   (Redis) cache are single-flighted the same way.
//! - Batching: distinct tokens that miss within `batching.window` go out as one call to the
//!   batch endpoint, or as concurrent pooled single calls when there is none.
//! - Refresh-ahead: a hit late in its tier's freshness window starts a background refresh, so
//!   a hot token's checks do not wait on the IdP.
//! - Circuit breaker: repeated IdP failures open it; calls then fail fast until a probe passes.
//! - Readiness: [`Introspector::confirm_idp`] checks endpoint and credentials at start-up (one
//!   introspection of a random token must answer `active: false`) and again whenever the IdP
//!   rejects our client; until it passes the server is not ready (`/readyz` 503).
//! - Every IdP error is logged with its kind, status, OAuth error code and endpoint (never the
//!   token); refusals of single tokens, which any client can cause, one line per hundred.

pub use crate::cached::Cached;
use crate::clock::SharedClock;
use crate::config::ServerConfig;
use crate::idp_client::{IdpClient, IdpError};
use crate::lock;
use crate::metrics::Metrics;
use crate::shared::Shared as SharedTier;
use crate::versions::TokenKey;
use authz_core::circuit::CircuitBreaker;
use authz_core::fallback::{cache_ttl_ms, on_idp_error, plan, CachePlan, ErrorPlan, TierRules};
use authz_core::introspection::Introspection;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Where a check's introspection data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    Miss,
    /// Older than the tier's freshness, served inside its stale-if-error window.
    Stale,
    /// From the shared (Redis) cache another instance filled.
    Shared,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Miss => "miss",
            Source::Stale => "stale",
            Source::Shared => "shared",
        }
    }
}

/// A check's introspection data.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub entry: Arc<Cached>,
    pub source: Source,
    pub age_ms: u64,
}

/// A piece of work in flight, awaited by every caller that needs it.
type Flight<T> = Shared<BoxFuture<'static, T>>;
/// The flights of one kind, by token.
type Flights<T> = Mutex<HashMap<TokenKey, Flight<T>>>;

struct BatchItem {
    token: String,
    reply: oneshot::Sender<Result<Introspection, IdpError>>,
}

struct TtlExpiry;

impl moka::Expiry<TokenKey, Arc<Cached>> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<Cached>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(value.ttl_ms))
    }
}

/// The introspection front end.
pub struct Introspector {
    client: IdpClient,
    cache: moka::sync::Cache<TokenKey, Arc<Cached>>,
    inflight: Flights<Result<Arc<Cached>, IdpError>>,
    shared_inflight: Flights<Option<Arc<Cached>>>,
    batch_tx: Option<mpsc::Sender<BatchItem>>,
    breaker: Mutex<CircuitBreaker>,
    /// Global cap on IdP calls (`introspection.max_calls_per_second`), so junk cannot reach
    /// the IdP at full rate whatever addresses it comes from.
    idp_cap: Option<governor::DefaultDirectRateLimiter>,
    /// Tokens the IdP refused so far (logged one line per hundred).
    refusals: std::sync::atomic::AtomicU64,
    /// Whether the start-up probe passed and the IdP has not rejected our client since.
    idp_confirmed: std::sync::atomic::AtomicBool,
    /// Wakes [`Introspector::confirm_idp`] when the IdP rejects our client.
    recheck_idp: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    cap_ms: u64,
    inactive_ttl_ms: u64,
    longest_window_ms: u64,
    refresh_ahead_fraction: f64,
    shared: Option<Arc<SharedTier>>,
    clock: SharedClock,
}

impl Introspector {
    /// Builds the introspector; starts the batcher task when batching is on.
    pub fn new(
        config: &ServerConfig,
        client: IdpClient,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedTier>>,
        clock: SharedClock,
    ) -> Arc<Introspector> {
        let batch_tx = (!config.batching.window.is_zero()).then(|| {
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(run_batcher(
                Batcher {
                    client: client.clone(),
                    metrics: metrics.clone(),
                    batch_off_until: Arc::new(Mutex::new(None)),
                },
                rx,
                config.batching.window,
                config.batching.max_batch,
            ));
            tx
        });
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache.max_entries)
            .expire_after(TtlExpiry)
            .build();
        let introspector = Arc::new(Introspector {
            client,
            cache,
            inflight: Mutex::new(HashMap::new()),
            shared_inflight: Mutex::new(HashMap::new()),
            batch_tx,
            breaker: Mutex::new(CircuitBreaker::new(
                config.circuit_failure_threshold,
                config.circuit_open_ms,
            )),
            idp_cap: std::num::NonZeroU32::new(config.introspection.max_calls_per_second)
                .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n))),
            refusals: std::sync::atomic::AtomicU64::new(0),
            idp_confirmed: std::sync::atomic::AtomicBool::new(false),
            recheck_idp: tokio::sync::Notify::new(),
            metrics,
            cap_ms: config.cache.cap_ms,
            inactive_ttl_ms: config.cache.inactive_ttl_ms,
            longest_window_ms: config.longest_window_ms(),
            refresh_ahead_fraction: config.cache.refresh_ahead_fraction,
            shared,
            clock,
        });
        introspector.publish_circuit_state();
        introspector
    }

    /// Introspection data for `token`, good enough for a check on a tier with `rules`.
    /// `trust_unconfirmed_shared`: whether the tier may use the shared cache while this
    /// instance cannot confirm its shared state is current.
    pub async fn lookup(
        self: &Arc<Self>,
        key: TokenKey,
        token: &str,
        rules: &TierRules,
        trust_unconfirmed_shared: bool,
    ) -> Result<Lookup, IdpError> {
        let now = self.clock.now_ms();
        let cached = self.cache.get(&key);
        let age = cached.as_ref().map(|c| now.saturating_sub(c.fetched_at_ms));
        match plan(age, rules, self.refresh_ahead_fraction) {
            CachePlan::Use { refresh_ahead } => {
                if refresh_ahead {
                    self.metrics.inc("authz_refresh_ahead_total", &[]);
                    let this = self.clone();
                    let token = token.to_owned();
                    tokio::spawn(async move {
                        let _ = this.fetch_fresh(key, token).await;
                    });
                }
                self.metrics
                    .inc("authz_cache_lookups_total", &[("result", "hit")]);
                let entry = cached.ok_or(IdpError::Transport("cache entry vanished".into()))?;
                Ok(Lookup {
                    entry,
                    source: Source::Hit,
                    age_ms: age.unwrap_or(0),
                })
            }
            CachePlan::Introspect => {
                if let Some(found) = self
                    .shared_lookup(&key, rules, trust_unconfirmed_shared)
                    .await
                {
                    return Ok(found);
                }
                self.introspect_or_stale(key, token, rules, cached, age)
                    .await
            }
        }
    }

    /// One shared-cache read per token at a time, like introspection: concurrent misses on
    /// this instance share it. A found entry goes into the local cache (with its remaining
    /// life and original fetch time) before the flight ends, so no later miss reads again.
    async fn shared_fetch(
        self: &Arc<Self>,
        shared: &Arc<SharedTier>,
        key: TokenKey,
    ) -> Option<Arc<Cached>> {
        let shared = shared.clone();
        let this = self.clone();
        self.single_flight(
            |i| &i.shared_inflight,
            key,
            "authz_shared_cache_joins_total",
            async move {
                shared.cache_get(&key).await.map(|entry| {
                    let remaining = entry.remaining_ms(this.clock.now_ms());
                    let entry = Arc::new(Cached {
                        ttl_ms: remaining,
                        ..entry
                    });
                    this.cache.insert(key, entry.clone());
                    entry
                })
            },
            |_| None,
        )
        .await
    }

    /// A result another instance put in the shared cache, if it is fresh enough for `rules`.
    async fn shared_lookup(
        self: &Arc<Self>,
        key: &TokenKey,
        rules: &TierRules,
        trust_unconfirmed: bool,
    ) -> Option<Lookup> {
        let shared = self.shared.as_ref()?;
        if !shared.caches_introspection() || !(trust_unconfirmed || shared.confirmed()) {
            return None;
        }
        let entry = self.shared_fetch(shared, *key).await?;
        let age = self.clock.now_ms().saturating_sub(entry.fetched_at_ms);
        let CachePlan::Use { .. } = plan(Some(age), rules, self.refresh_ahead_fraction) else {
            return None;
        };
        self.metrics
            .inc("authz_cache_lookups_total", &[("result", "shared")]);
        Some(Lookup {
            entry,
            source: Source::Shared,
            age_ms: age,
        })
    }

    async fn introspect_or_stale(
        self: &Arc<Self>,
        key: TokenKey,
        token: &str,
        rules: &TierRules,
        cached: Option<Arc<Cached>>,
        age: Option<u64>,
    ) -> Result<Lookup, IdpError> {
        {
            match self.fetch_fresh(key, token.to_owned()).await {
                Ok(entry) => {
                    self.metrics
                        .inc("authz_cache_lookups_total", &[("result", "miss")]);
                    Ok(Lookup {
                        entry,
                        source: Source::Miss,
                        age_ms: 0,
                    })
                }
                Err(err) => match (on_idp_error(age, rules), cached) {
                    (ErrorPlan::ServeStale, Some(entry)) => {
                        self.metrics
                            .inc("authz_cache_lookups_total", &[("result", "stale")]);
                        Ok(Lookup {
                            entry,
                            source: Source::Stale,
                            age_ms: age.unwrap_or(0),
                        })
                    }
                    _ => Err(err),
                },
            }
        }
    }

    /// Drops a token's cached result.
    pub fn invalidate(&self, key: &TokenKey) {
        self.cache.invalidate(key);
    }

    /// Drops every cached result (policy change).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// The token's expiry (`exp`, Unix seconds) as the IdP last reported it, if cached.
    pub fn cached_expiry(&self, key: &TokenKey) -> Option<i64> {
        self.cache.get(key).and_then(|c| c.result.expires_at)
    }

    /// Whether this instance holds a cached answer for the token (of any age).
    pub fn holds(&self, key: &TokenKey) -> bool {
        self.cache.contains_key(key)
    }

    /// Cached entries right now (approximate).
    pub fn cached_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// One introspection per token at a time, shared by every caller that needs it.
    async fn fetch_fresh(
        self: &Arc<Self>,
        key: TokenKey,
        token: String,
    ) -> Result<Arc<Cached>, IdpError> {
        let this = self.clone();
        self.single_flight(
            |i| &i.inflight,
            key,
            "authz_single_flight_joins_total",
            async move { this.introspect_now(key, token).await },
            |e| {
                Err(IdpError::Transport(format!(
                    "introspection task failed: {e}"
                )))
            },
        )
        .await
    }

    /// Joins the flight for `key` in `flights`, or starts `work` as one: in its own task, so a
    /// caller that gives up does not cancel it for the others. The task removes its own entry
    /// when done; it cannot do so before the insert here, because that removal needs the lock.
    fn single_flight<T>(
        self: &Arc<Self>,
        flights: fn(&Introspector) -> &Flights<T>,
        key: TokenKey,
        joins_metric: &'static str,
        work: impl std::future::Future<Output = T> + Send + 'static,
        task_failed: fn(tokio::task::JoinError) -> T,
    ) -> Flight<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let mut inflight = lock(flights(self));
        if let Some(flight) = inflight.get(&key) {
            self.metrics.inc(joins_metric, &[]);
            return flight.clone();
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = work.await;
            lock(flights(&this)).remove(&key);
            result
        });
        let flight: Flight<T> = async move { task.await.unwrap_or_else(task_failed) }
            .boxed()
            .shared();
        inflight.insert(key, flight.clone());
        flight
    }

    fn publish_circuit_state(&self) {
        let state = lock(&self.breaker).state(self.clock.now_ms());
        for s in [
            authz_core::circuit::CircuitState::Closed,
            authz_core::circuit::CircuitState::Open,
            authz_core::circuit::CircuitState::HalfOpen,
        ] {
            self.metrics.set_gauge(
                "authz_circuit_state",
                &[("state", s.as_str())],
                if s == state { 1.0 } else { 0.0 },
            );
        }
    }

    /// One log line for an IdP failure: kind, status and OAuth error code, endpoint.
    fn log_idp_error(&self, e: &IdpError) {
        let (status, code) = match e {
            IdpError::Status { status, code } => (Some(*status), code.as_str()),
            _ => (None, ""),
        };
        tracing::warn!(
            kind = e.kind(),
            status,
            error_code = code,
            endpoint = self.client.endpoint(),
            detail = %e,
            "introspection_error"
        );
    }

    /// Whether the IdP accepted our client (start-up probe passed, no rejection since).
    pub fn idp_confirmed(&self) -> bool {
        self.idp_confirmed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_idp_confirmed(&self, confirmed: bool) {
        self.idp_confirmed
            .store(confirmed, std::sync::atomic::Ordering::SeqCst);
        self.metrics
            .set_gauge("authz_idp_ready", &[], if confirmed { 1.0 } else { 0.0 });
    }

    /// Runs for the server's life: probes the IdP (see [`IdpClient::probe`]) until it passes,
    /// retrying with backoff (0.5 s doubling to 30 s) and logging each failure, then waits until
    /// the IdP rejects our client and starts over.
    pub async fn confirm_idp(self: Arc<Self>) {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.client.probe().await {
                Ok(()) => {
                    if !self.idp_confirmed() {
                        tracing::info!(endpoint = self.client.endpoint(), "idp_confirmed");
                    }
                    self.set_idp_confirmed(true);
                    delay = Duration::from_millis(500);
                    self.recheck_idp.notified().await;
                }
                Err(e) => {
                    self.set_idp_confirmed(false);
                    self.metrics
                        .inc("authz_idp_probe_failures_total", &[("kind", e.kind())]);
                    self.log_idp_error(&e);
                    tracing::warn!(
                        endpoint = self.client.endpoint(),
                        retry_in_ms = delay.as_millis() as u64,
                        "idp_not_confirmed: checks that need introspection fail closed; /readyz is 503"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn introspect_now(&self, key: TokenKey, token: String) -> Result<Arc<Cached>, IdpError> {
        let started_ms = self.clock.now_ms();
        if self
            .idp_cap
            .as_ref()
            .is_some_and(|cap| cap.check().is_err())
        {
            self.metrics
                .inc("authz_introspection_errors_total", &[("kind", "throttled")]);
            return Err(IdpError::Throttled);
        }
        if !lock(&self.breaker).try_acquire(started_ms) {
            self.metrics.inc(
                "authz_introspection_errors_total",
                &[("kind", "circuit_open")],
            );
            self.publish_circuit_state();
            return Err(IdpError::CircuitOpen);
        }
        let started = Instant::now();
        let result = match &self.batch_tx {
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                match tx.send(BatchItem { token, reply }).await {
                    Ok(()) => answer.await.unwrap_or(Err(IdpError::Transport(
                        "batcher dropped the request".into(),
                    ))),
                    Err(_) => Err(IdpError::Transport("batcher stopped".into())),
                }
            }
            None => {
                self.metrics
                    .inc("authz_introspection_calls_total", &[("kind", "single")]);
                self.client.introspect(&token).await
            }
        };
        self.metrics.observe_seconds(
            "authz_check_seconds",
            &[("stage", "introspection")],
            started.elapsed().as_secs_f64(),
        );
        let result = match result {
            Err(IdpError::Refused { status, code }) => {
                // The IdP said this token is not one it will vouch for: not active.
                self.metrics.inc(
                    "authz_introspection_refusals_total",
                    &[("status", &status.to_string())],
                );
                // Any client can cause these: one line per 100, with the count.
                let seen = self
                    .refusals
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seen.is_multiple_of(100) {
                    tracing::warn!(
                        status,
                        error = ?code,
                        endpoint = self.client.endpoint(),
                        refusals_so_far = seen + 1,
                        "introspection_refused"
                    );
                }
                Ok(authz_core::introspection::Introspection::inactive())
            }
            other => other,
        };
        let outcome = match result {
            Ok(result) => {
                lock(&self.breaker).on_success();
                let ttl_ms = cache_ttl_ms(
                    &result,
                    started_ms,
                    self.longest_window_ms,
                    self.cap_ms,
                    self.inactive_ttl_ms,
                );
                let entry = Arc::new(Cached {
                    result,
                    fetched_at_ms: started_ms,
                    ttl_ms,
                });
                if ttl_ms > 0 {
                    self.cache.insert(key, entry.clone());
                    if let Some(shared) = self.shared.as_ref().filter(|s| s.caches_introspection())
                    {
                        shared.cache_put(key, entry.clone());
                    }
                }
                Ok(entry)
            }
            Err(e) => {
                if e.is_idp_failure() {
                    lock(&self.breaker).on_failure(self.clock.now_ms());
                } else {
                    lock(&self.breaker).on_success();
                }
                self.metrics
                    .inc("authz_introspection_errors_total", &[("kind", e.kind())]);
                self.log_idp_error(&e);
                if e.is_credentials_rejected() {
                    self.set_idp_confirmed(false);
                    self.recheck_idp.notify_one();
                }
                Err(e)
            }
        };
        self.publish_circuit_state();
        outcome
    }
}

/// How long the batch endpoint is left alone after it failed: batches go out as single calls.
const BATCH_ENDPOINT_BACKOFF: Duration = Duration::from_secs(60);

/// What the batcher's calls need.
#[derive(Clone)]
struct Batcher {
    client: IdpClient,
    metrics: Arc<Metrics>,
    /// Set when the batch endpoint failed: single calls until then.
    batch_off_until: Arc<Mutex<Option<Instant>>>,
}

/// Collects tokens for up to `window` (or `max_batch` tokens), then sends them out together.
async fn run_batcher(
    batcher: Batcher,
    mut rx: mpsc::Receiver<BatchItem>,
    window: Duration,
    max_batch: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                _ => break,
            }
        }
        tokio::spawn(dispatch_batch(batcher.clone(), batch));
    }
}

/// Sends one batch: to the batch endpoint when there is one and it works, else as concurrent
/// single calls. A batch call that fails (a missing endpoint, an error status, garbage, a
/// timeout) is logged and its tokens are introspected one by one at once, never answered with
/// the error; the batch endpoint then rests for [`BATCH_ENDPOINT_BACKOFF`].
async fn dispatch_batch(batcher: Batcher, batch: Vec<BatchItem>) {
    let Batcher {
        client,
        metrics,
        batch_off_until,
    } = batcher;
    metrics.observe_size("authz_introspection_batch_size", batch.len() as f64);
    let resting = lock(&batch_off_until).is_some_and(|until| Instant::now() < until);
    let batch = if batch.len() > 1 && client.has_batch_endpoint() && !resting {
        metrics.inc("authz_introspection_calls_total", &[("kind", "batch")]);
        let tokens: Vec<String> = batch.iter().map(|i| i.token.clone()).collect();
        match client.introspect_batch(&tokens).await {
            Ok(results) => {
                for (item, result) in batch.into_iter().zip(results) {
                    let _ = item.reply.send(Ok(result));
                }
                return;
            }
            Err(e) => {
                let status = match &e {
                    IdpError::Status { status, .. } => Some(*status),
                    _ => None,
                };
                tracing::warn!(
                    kind = e.kind(),
                    status,
                    detail = %e,
                    rest_seconds = BATCH_ENDPOINT_BACKOFF.as_secs(),
                    "batch_introspection_failed: falling back to single calls"
                );
                metrics.inc("authz_introspection_batch_fallbacks_total", &[]);
                *lock(&batch_off_until) = Some(Instant::now() + BATCH_ENDPOINT_BACKOFF);
                batch
            }
        }
    } else {
        batch
    };
    let calls = batch.into_iter().map(|item| {
        let client = client.clone();
        let metrics = metrics.clone();
        async move {
            metrics.inc("authz_introspection_calls_total", &[("kind", "single")]);
            let result = client.introspect(&item.token).await;
            let _ = item.reply.send(result);
        }
    });
    futures::future::join_all(calls).await;
}
