//! The admin HTTP port (loopback by default): `/metrics` (Prometheus text), `/healthz`
//! (process up), `/readyz` (serving, not draining), and the bearer-protected admin endpoints:
//!
//! | endpoint | body / query | effect |
//! |---|---|---|
//! | `POST /admin/revoke` | `{"token": "…"}`, `{"token_hash": "<sha256 hex>"}` or `{"jti": "…"}` | that token is refused from now on (a JWS `token`: in every encoding of its signed content; a `token_hash`: those exact bytes) |
//! | `POST /admin/revoke-subject` | `{"sub": "…"}` or `{"client_id": "…"}` | every token of the user (or of the client, and every user token issued to that client) issued so far is refused; bumps its epoch |
//! | `POST /admin/policy-version` | | bumps the policy version; drops every cached result |
//! | `GET /context/jwks.json` | | the public keys of signed verification contexts (no credential; 404 without `context`) |
//! | `GET /admin/epochs?since=N` | `wait_ms`, `incarnation` | the change feed (format 2): policy version and what changed after change-version N, in pages, and whether this state is confirmed current (also readable with `epochs_token`); held until a change with `wait_ms`; answers to cursors far behind the state not woken by a change paced per credential (see `feed_pacing`) |
//! | `POST /authorize/batch` | `batch_token` (not the admin token) | batch authorization for list endpoints: a token or signed context, an action and resources in, a decision per resource out (served beside these by the batch API's own router, merged into this port's app by the composition root) |
//!
//! Each change takes effect here for the next check; the cache is invalidated at once. With a
//! shared tier the change is published to every instance (`"shared": "published"`), or, when
//! Redis cannot take it, kept and published when it returns (`"shared": "pending"`).

use crate::bearer::matches as bearer_matches;
use crate::changes::ChangeSink;
use crate::check::CheckService;
use crate::feed_pacing::{FeedPacer, Pace, RecentVersions};
use crate::shared;
use crate::versions::{parse_token_hash, Change};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// State of the admin app.
#[derive(Clone)]
pub struct Admin {
    pub service: Arc<CheckService>,
    /// Where the changes made here are applied (and published from).
    pub changes: Arc<dyn ChangeSink>,
    pub ready: Arc<AtomicBool>,
    /// The change-feed requests held open now.
    pub feed: Arc<FeedWatchers>,
    /// Turns true when the server stops: held requests answer at once.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The checks' runtime. The admin API runs on a runtime of its own; its Redis calls run
    /// on this one, so a connection they reopen is driven with the checks' priority.
    pub main: tokio::runtime::Handle,
}

impl Admin {
    /// Records a change made here (published through the shared tier when there is one), on
    /// the checks' runtime.
    async fn record(&self, change: Change) -> (crate::versions::Applied, shared::Delivery) {
        let (changes, shared) = (self.changes.clone(), self.service.shared.clone());
        let fallback = change.clone();
        let recorded = self.main.spawn(async move {
            shared::record(changes.as_ref(), shared.as_deref(), change).await
        });
        match recorded.await {
            Ok(done) => done,
            // Only when the checks' runtime is going away: applied here (facts are applied
            // any number of times), unpublished.
            Err(_) => (self.changes.apply(&fallback, None), shared::Delivery::Local),
        }
    }
}

/// Longest a client may ask a change-feed request to be held.
pub const MAX_FEED_WAIT_MS: u64 = 60_000;

/// The held change-feed requests (each a filter worker waiting for changes after its cursor),
/// for the `authz_feed_streams` and `authz_feed_oldest_cursor` gauges, and the pace of
/// catch-up answers per credential.
#[derive(Debug)]
pub struct FeedWatchers {
    /// Held request id → (its cursor, the credential it came with).
    held: std::sync::Mutex<std::collections::BTreeMap<u64, (u64, Credential)>>,
    next_id: std::sync::atomic::AtomicU64,
    pacer: FeedPacer<Credential>,
    /// The state's version over the last [`RECENT_WINDOW`]: cursors of running workers.
    recent: RecentVersions,
    /// The pacer's clock (monotonic).
    started: tokio::time::Instant,
}

/// The longest a catch-up answer waits for its credential's budget; beyond it the answer is
/// a 429. Well below the filter's 2 s timeout for requests it does not ask to be held (the
/// answer still has to be written after its wait).
pub const MAX_CATCH_UP_WAIT: Duration = Duration::from_millis(500);

/// A cursor at or above the state's version this long ago is a running worker's (its
/// reads follow each other within the longest hold, 60 s, plus timeouts and a 429's wait):
/// never paced.
pub const RECENT_WINDOW: Duration = Duration::from_secs(90);

/// One held request; leaving the map when dropped (also when the client goes away and axum
/// drops the handler's future).
struct Held<'a> {
    watchers: &'a FeedWatchers,
    id: u64,
    metrics: &'a crate::metrics::Metrics,
}

impl FeedWatchers {
    /// No request held; catch-up answers paced at `catch_up_bytes_per_second` per credential
    /// (one second of it at once).
    /// `cursors_outlive_process`: a shared tier (workers keep their cursors across this
    /// replica's restart; see [`RecentVersions`]).
    pub fn new(catch_up_bytes_per_second: u64, cursors_outlive_process: bool) -> FeedWatchers {
        FeedWatchers {
            held: Default::default(),
            next_id: Default::default(),
            pacer: FeedPacer::new(
                catch_up_bytes_per_second,
                catch_up_bytes_per_second,
                MAX_CATCH_UP_WAIT,
            ),
            recent: RecentVersions::new(RECENT_WINDOW, cursors_outlive_process),
            started: tokio::time::Instant::now(),
        }
    }

    fn now_ns(&self) -> u128 {
        self.started.elapsed().as_nanos()
    }

    /// Holds a request unless `max` (all together) or `max_per_credential` are reached.
    fn hold<'a>(
        &'a self,
        cursor: u64,
        credential: Credential,
        (max, max_per_credential): (usize, usize),
        metrics: &'a crate::metrics::Metrics,
    ) -> Option<Held<'a>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut held = crate::lock(&self.held);
            let same = held.values().filter(|(_, c)| *c == credential).count();
            if held.len() >= max || same >= max_per_credential {
                return None;
            }
            held.insert(id, (cursor, credential));
        }
        self.report(metrics);
        Some(Held {
            watchers: self,
            id,
            metrics,
        })
    }

    fn report(&self, metrics: &crate::metrics::Metrics) {
        let held = crate::lock(&self.held);
        metrics.set_gauge("authz_feed_streams", &[], held.len() as f64);
        let oldest = held.values().map(|(c, _)| *c).min().unwrap_or(0);
        metrics.set_gauge("authz_feed_oldest_cursor", &[], oldest as f64);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        crate::lock(&self.watchers.held).remove(&self.id);
        self.watchers.report(self.metrics);
    }
}

/// Which secret a request presented: the admin token, or feed secret `n` (`epochs_token`
/// first, then `epochs_tokens`). Held feed requests are counted per credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Credential {
    Admin,
    Feed(usize),
}

/// The credential `headers` carry for `path`: the admin token everywhere, a feed secret on the
/// change feed only. Every secret is compared (in constant time), whichever matches.
fn authorized(admin: &Admin, path: &str, headers: &HeaderMap) -> Option<Credential> {
    let config = &admin.service.config;
    let mut found = bearer_matches(headers, &config.admin_token).then_some(Credential::Admin);
    if path == FEED_PATH {
        for (i, token) in config.epochs_tokens.iter().enumerate() {
            if bearer_matches(headers, token) {
                found = found.or(Some(Credential::Feed(i)));
            }
        }
    }
    found
}

/// The change feed's path (readable with the feed token too).
const FEED_PATH: &str = "/admin/epochs";

/// Runs before any extractor of an `/admin/*` handler: a request without the credential is a
/// 401 whatever its body or query (it learns nothing about what the endpoint would parse).
async fn require_credential(
    State(admin): State<Admin>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut request = request;
    match authorized(&admin, request.uri().path(), request.headers()) {
        Some(credential) => {
            request.extensions_mut().insert(credential);
            next.run(request).await
        }
        None => unauthorized(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "admin token required"})),
    )
        .into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let service = &admin.service;
    service.metrics.set_gauge(
        "authz_policy_version",
        &[],
        service.versions.policy_version() as f64,
    );
    if let Some(shared) = &service.shared {
        service.metrics.set_gauge(
            "authz_shared_confirmed",
            &[],
            if shared.confirmed() { 1.0 } else { 0.0 },
        );
        service
            .metrics
            .set_gauge("authz_shared_outbox", &[], shared.pending() as f64);
    }
    service.metrics.set_gauge(
        "authz_cache_entries",
        &[],
        service.introspector.cached_entries() as f64,
    );
    (
        [("content-type", "text/plain; version=0.0.4")],
        service.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> Response {
    if !admin.ready.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if admin.service.shared.as_ref().is_some_and(|s| !s.synced()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shared state not read from redis yet\n",
        )
            .into_response()
    } else if let Some(why) = admin.service.idp.not_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
    } else if !admin.service.introspector.idp_confirmed() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "idp not confirmed (see the introspection_error log lines)\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// A feed answer kept by [`crate::versions::Versions`], lent to a response body without a
/// copy.
struct KeptAnswer(Arc<str>);

impl AsRef<[u8]> for KeptAnswer {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token: Option<String>,
    token_hash: Option<String>,
    jti: Option<String>,
    /// When the revoked token expires (Unix seconds): the revocation is forgotten after that
    /// (plus a grace). For `token`, taken from the token itself when not given.
    expires_at: Option<u64>,
}

async fn revoke(State(admin): State<Admin>, Json(body): Json<RevokeBody>) -> Response {
    let service = &admin.service;
    let given = body.expires_at.map(|s| s.saturating_mul(1000));
    let change = match (&body.token, &body.token_hash, &body.jti) {
        (Some(token), None, None) => {
            // The token's own expiry: what the IdP said (cached), else a JWT's `exp` (its
            // signature covers it; a token whose `exp` lies is refused anyway).
            let known = service
                .introspector
                .cached_expiry(&authz_core::token_hash::token_digest(token))
                .or_else(|| authz_core::verify::jws_exp(token))
                .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1000));
            // A JWS is revoked by what its signature covers, so every encoding of it that
            // still verifies is refused too.
            let key = authz_core::token_hash::revocation_digest(token);
            Change::RevokeToken(key, given.or(known))
        }
        (None, Some(hash), None) => match parse_token_hash(hash) {
            Some(key) => Change::RevokeToken(key, given),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "token_hash is 64 hex characters"})),
                )
                    .into_response()
            }
        },
        (None, None, Some(jti)) => Change::RevokeJti(jti.clone(), given),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "exactly one of token, token_hash, jti"})),
            )
                .into_response()
        }
    };
    let (applied, delivery) = admin.record(change).await;
    tracing::info!(
        version = applied.stamp,
        shared = delivery.as_str(),
        "admin_revoke"
    );
    Json(json!({"version": applied.stamp, "shared": delivery.as_str()})).into_response()
}

/// `{"sub": …}` (a user) or `{"client_id": …}` (a client, and the user tokens issued to it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectBody {
    sub: Option<String>,
    client_id: Option<String>,
}

async fn revoke_subject(State(admin): State<Admin>, Json(body): Json<SubjectBody>) -> Response {
    let (subject, shown) = match (&body.sub, &body.client_id) {
        (Some(sub), None) if !sub.is_empty() && !sub.contains('\0') => (sub.clone(), sub.clone()),
        (None, Some(client)) if !client.is_empty() => {
            (authz_core::principal::client_key(client), client.clone())
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "exactly one of sub, client_id (not empty)"})),
            )
                .into_response()
        }
    };
    let kind = if body.sub.is_some() {
        "sub"
    } else {
        "client_id"
    };
    let change = Change::RevokeSubject {
        subject,
        revoked_at_ms: admin.service.clock.now_ms(),
        epoch: None,
    };
    let (applied, delivery) = admin.record(change).await;
    tracing::info!(
        principal = %shown,
        kind,
        epoch = applied.value,
        shared = delivery.as_str(),
        "admin_revoke_subject"
    );
    Json(json!({kind: shown, "epoch": applied.value, "version": applied.stamp, "shared": delivery.as_str()}))
        .into_response()
}

async fn bump_policy(State(admin): State<Admin>) -> Response {
    let (applied, delivery) = admin.record(Change::BumpPolicy { version: None }).await;
    tracing::info!(
        policy_version = applied.value,
        shared = delivery.as_str(),
        "admin_policy_version"
    );
    Json(json!({"policy_version": applied.value, "shared": delivery.as_str()})).into_response()
}

#[derive(Debug, Deserialize)]
struct EpochsQuery {
    since: Option<u64>,
    /// The answer's format: 2, the only one served (see `authz_core::epochs`); absent means 2.
    format: Option<u32>,
    /// Hold the request until something changes after `since`, at most this long (push).
    wait_ms: Option<u64>,
    /// The incarnation the client's cursor belongs to: another one answers at once.
    incarnation: Option<String>,
}

/// A refused feed request; with `retry_after`, a `Retry-After` header (whole seconds, at
/// least one) and `retry_after_ms` in the body (which the filter reads: its host passes it the
/// body, not the headers).
fn feed_refused(status: StatusCode, retry_after: Option<Duration>, error: &str) -> Response {
    let Some(after) = retry_after else {
        return (status, Json(json!({ "error": error }))).into_response();
    };
    let ms = after.as_millis().max(1) as u64;
    let body = json!({ "error": error, "retry_after_ms": ms });
    let seconds = axum::http::HeaderValue::from(ms.div_ceil(1000));
    (status, [("retry-after", seconds)], Json(body)).into_response()
}

/// A cursor this close to the state's counter (or ahead of it) reads a small answer: the
/// changes after a push, a poll, a worker that fell out of push. Never paced, so a client
/// looping with the same feed secret cannot keep a worker from the changes.
pub const NEAR_CURSOR_STAMPS: u64 = 256;

/// Rows at most in an unpaced answer to a cursor more than [`NEAR_CURSOR_STAMPS`] behind.
pub const UNPACED_PAGE_ROWS: usize = 512;

/// About the bytes of one feed row, to estimate an answer before it is built.
const ROW_BYTES_ESTIMATE: u64 = 110;

/// `GET /admin/epochs`: what changed after `since` (a page of it), held until something
/// changes when `wait_ms` asks for it. Answers the client did not wait for (catch-ups) from
/// a cursor far behind the state (first reads, pages, re-reads) are paced per credential;
/// answers to held requests woken by a change, and answers to cursors near the state, are
/// not.
async fn epochs(
    State(admin): State<Admin>,
    axum::Extension(credential): axum::Extension<Credential>,
    Query(q): Query<EpochsQuery>,
) -> Response {
    let metrics = &admin.service.metrics;
    metrics.inc("authz_epochs_requests_total", &[]);
    // A replica that has not read the shared state yet would answer with a partial one (and
    // its own incarnation): the filter keeps what it holds and asks again.
    if admin.service.shared.as_ref().is_some_and(|s| !s.synced()) {
        return feed_refused(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "shared state not read yet",
        );
    }
    if q.format.is_some_and(|f| f != 2) {
        return feed_refused(
            StatusCode::BAD_REQUEST,
            None,
            "only format=2 is served (the first format was removed: see README's upgrade notes)",
        );
    }
    let since = q.since.unwrap_or(0);
    let wait_ms = q
        .wait_ms
        .unwrap_or(0)
        .min(MAX_FEED_WAIT_MS)
        .min(until_next_signing_key_ms(&admin));
    let catch_up = if wait_ms > 0 {
        match hold_until_change(&admin, credential, since, wait_ms, q.incarnation.as_deref()).await
        {
            Ok(catch_up) => catch_up,
            Err(refused) => return refused,
        }
    } else {
        true
    };
    let feed = &admin.feed;
    let versions = &admin.service.versions;
    let version = versions.change_version();
    let near = version.saturating_sub(since) <= NEAR_CURSOR_STAMPS;
    let paced = catch_up && is_far(since, near, version, &feed.recent, feed.now_ns());
    if paced {
        // Every far read is estimated at a whole page: a client asking for small ones must
        // not get the places a worker's page is waiting for.
        let estimate =
            (admin.service.config.feed_page_rows as u64).saturating_mul(ROW_BYTES_ESTIMATE);
        if let Some(retry_after) = feed.pacer.would_refuse(credential, estimate, feed.now_ns()) {
            return catch_up_refused(metrics, retry_after).await;
        }
    }
    // Current: the shared tier answers, and every Status List was verified recently.
    let confirmed = admin.service.shared.as_ref().is_none_or(|s| s.confirmed())
        && admin
            .service
            .status_lists
            .as_ref()
            .is_none_or(|l| l.current());
    // The answer is shared, not copied: a page is about 1 MB, and a kept one is served to
    // every poller at its cursor until the next change.
    // An unpaced answer to a cursor that is recent but not near (a worker catching up on a
    // mass revocation) comes in small pages: the worker asks for the next at once, and a
    // client looping on such a cursor gets no more than that per request.
    let max_rows = if paced || near {
        usize::MAX
    } else {
        UNPACED_PAGE_ROWS
    };
    let answer = versions.changes_since_v2_at_most(since, confirmed, max_rows);
    if paced {
        match feed
            .pacer
            .reserve(credential, answer.len() as u64, feed.now_ns())
        {
            Pace::Now => {}
            Pace::After(wait) => {
                metrics.inc("authz_feed_paced_total", &[]);
                tokio::time::sleep(wait).await;
            }
            Pace::Refused { retry_after } => {
                // Not kept while the refusal waits (it may be a page no one else reads).
                drop(answer);
                return catch_up_refused(metrics, retry_after).await;
            }
        }
    }
    let body = axum::body::Bytes::from_owner(KeptAnswer(answer));
    (
        [
            ("content-type", "application/json"),
            // It may carry signing keys: no cache on the way keeps it.
            ("cache-control", "no-store"),
        ],
        with_signing_keys(&admin, body),
    )
        .into_response()
}

/// A held feed request is answered at the next signing-key boundary at the latest, so every
/// filter learns the key after next a whole period before it signs.
fn until_next_signing_key_ms(admin: &Admin) -> u64 {
    admin
        .service
        .config
        .context
        .as_ref()
        .map_or(u64::MAX, |ring| {
            let now_ms = admin.service.clock.now_ms();
            let period_ms = ring.rotate_every_seconds.saturating_mul(1000);
            period_ms - now_ms % period_ms.max(1) + 1
        })
}

/// The feed answer with the context's signing keys (current and next) in front of the kept
/// answer's members, when this server signs contexts: `{"context_keys":[…],` + the answer
/// after its `{` (the kept answer is shared, never copied).
fn with_signing_keys(admin: &Admin, answer: axum::body::Bytes) -> axum::body::Body {
    let Some(ring) = &admin.service.config.context else {
        return axum::body::Body::from(answer);
    };
    let now_seconds = admin.service.clock.now_ms() / 1000;
    let keys = authz_core::context::feed_keys_json(&ring.feed_keys(now_seconds));
    let head = axum::body::Bytes::from(format!("{{\"context_keys\":{keys},"));
    let rest = answer.slice(1.min(answer.len())..);
    axum::body::Body::from_stream(futures::stream::iter([
        Ok::<_, std::convert::Infallible>(head),
        Ok(rest),
    ]))
}

/// `GET /context/jwks.json`: the public keys of signed contexts (no credential: they are
/// public), for services to verify with; 404 when this server signs none.
async fn context_jwks(State(admin): State<Admin>) -> Response {
    let Some(ring) = &admin.service.config.context else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now_seconds = admin.service.clock.now_ms() / 1000;
    (
        [
            ("content-type", "application/json".to_owned()),
            (
                "cache-control",
                format!("max-age={}", ring.jwks_max_age_seconds()),
            ),
        ],
        ring.jwks(now_seconds).to_string(),
    )
        .into_response()
}

/// A catch-up answer over its credential's rate: a 429, sent after [`MAX_CATCH_UP_WAIT`]
/// whatever the wait it reports, so a client that asks again at once is refused at most twice
/// a second per connection (each refusal costs the server a request; answered at once, 50
/// looping clients made about 90,000 a second); a filter waits longer than that before asking
/// again anyway.
async fn catch_up_refused(metrics: &crate::metrics::Metrics, retry_after: Duration) -> Response {
    metrics.inc("authz_feed_refused_total", &[("reason", "catch_up_rate")]);
    tokio::time::sleep(MAX_CATCH_UP_WAIT).await;
    feed_refused(
        StatusCode::TOO_MANY_REQUESTS,
        Some(retry_after.saturating_sub(MAX_CATCH_UP_WAIT)),
        "feed answers over this credential's rate (feed.catch_up_bytes_per_second)",
    )
}

/// Whether a read at cursor `since` is far behind the state (`version`): a first read, or a
/// cursor not `near` (more than [`NEAR_CURSOR_STAMPS`] behind) that no worker held within
/// [`RECENT_WINDOW`]. Only far reads are paced.
fn is_far(since: u64, near: bool, version: u64, recent: &RecentVersions, now_ns: u128) -> bool {
    // Sampled on every catch-up read (near ones too), so the window's samples stay fresh.
    let floor = recent.floor(version, now_ns);
    since == 0 || (!near && since < floor)
}

/// Holds a feed request until something changes after `since` (or the incarnation differs,
/// the server stops, `wait_ms` runs out). `Ok(true)`: its answer is a catch-up, to be paced
/// (the changes were there before it waited, or the state restarted: a whole read follows);
/// `Ok(false)`: a push woken by a change, or an empty answer; `Err`: refused (held
/// requests' limits).
async fn hold_until_change(
    admin: &Admin,
    credential: Credential,
    since: u64,
    wait_ms: u64,
    incarnation: Option<&str>,
) -> Result<bool, Response> {
    let versions = &admin.service.versions;
    // Subscribed before the state is read: no change slips between the check and the wait.
    let mut changed = versions.subscribe();
    let mut stop = admin.stop.clone();
    let config = &admin.service.config;
    let limits = (config.feed_max_held, config.feed_max_held_per_token);
    let metrics = &admin.service.metrics;
    let Some(_held) = admin.feed.hold(since, credential, limits, metrics) else {
        metrics.inc("authz_feed_refused_total", &[("reason", "held_limit")]);
        // No `retry_after_ms`: the filter polls plainly at its interval instead (a request
        // it does not ask to be held is never refused for this).
        return Err(feed_refused(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "too many held feed requests",
        ));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut waited = false;
    loop {
        let restarted = incarnation.is_some_and(|i| i != versions.incarnation());
        if restarted || versions.has_changes_since(since) {
            return Ok(restarted || !waited);
        }
        if *stop.borrow() {
            return Ok(false);
        }
        tokio::select! {
            woke = tokio::time::timeout_at(deadline, changed.changed()) => {
                if !matches!(woke, Ok(Ok(()))) {
                    // Its wait ran out: an empty answer.
                    return Ok(false);
                }
            }
            _ = stop.changed() => return Ok(false),
        }
        waited = true;
    }
}

/// The admin router.
pub fn router(admin: Admin) -> Router {
    let protected = Router::new()
        .route("/admin/revoke", post(revoke))
        .route("/admin/revoke-subject", post(revoke_subject))
        .route("/admin/policy-version", post(bump_policy))
        .route(FEED_PATH, get(epochs))
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            require_credential,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/context/jwks.json", get(context_jwks))
        .merge(protected)
        .with_state(admin)
}
