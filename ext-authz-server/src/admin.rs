//! The admin HTTP port (loopback by default): `/metrics` (Prometheus text), `/healthz`
//! (process up), `/readyz` (serving, not draining), and the bearer-protected admin endpoints:
//!
//! | endpoint | body / query | effect |
//! |---|---|---|
//! | `POST /admin/revoke` | `{"token": "…"}`, `{"token_hash": "<sha256 hex>"}` or `{"jti": "…"}` | that token is refused from now on (a JWS `token`: in every encoding of its signed content; a `token_hash`: those exact bytes) |
//! | `POST /admin/revoke-subject` | `{"sub": "…"}` or `{"client_id": "…"}` | every token of the user (or of the client, and every user token issued to that client) issued so far is refused; bumps its epoch |
//! | `POST /admin/policy-version` | | bumps the policy version; drops every cached result |
//! | `GET /admin/switches` | | the incident switches in force, and each one's last change (who, when) |
//! | `POST /admin/switches` | `{"switch": …, "by": …}` and per switch `tier`, `on`, `max_ms`, `for_seconds` (see [`switch_setting`]) | changes one incident switch (`authz_core::switches`); every filter applies it from its next feed answer |
//! | `GET /admin/canary` | | the candidate in dry-run and the promoted route policy, if any |
//! | `POST /admin/canary` | `{"action": "start", "canary": {…}, "by": …}`, `{"action": "promote", "id": …, "by": …}`, `{"action": "abandon", "by": …}`, `{"action": "revert", "by": …}` (see `admin_canary`) | starts a candidate route policy in dry-run, promotes it (enforced everywhere), abandons it, or reverts a promotion |
//! | `GET /context/jwks.json` | | the public keys of signed verification contexts (no credential; 404 without `context`) |
//! | `GET /admin/epochs?since=N` | `wait_ms`, `incarnation` | the change feed (format 2): policy version and what changed after change-version N, in pages, and whether this state is confirmed current (also readable with `epochs_token`); held until a change with `wait_ms`; answers to cursors far behind the state not woken by a change paced per credential (see `feed_pacing`) |
//! | `POST /authorize/batch` | `batch_token` (not the admin token) | batch authorization for list endpoints: a token or signed context, an action and resources in, a decision per resource out (served beside these by the batch API's own router, merged into this port's app by the composition root) |
//!
//! Each change takes effect here for the next check; the cache is invalidated at once. With a
//! shared tier the change is published to every instance (`"shared": "published"`), or, when
//! Redis cannot take it, kept and published when it returns (`"shared": "pending"`).

use crate::bearer::{credential_for, Credential};
use crate::changes::ChangeSink;
use crate::check::CheckService;
use crate::feed::{Feed, FeedQuery};
use crate::shared;
use crate::versions::{parse_token_hash, Change, SwitchChange};
use authz_core::switches::Setting;
use authz_core::Tier;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// State of the admin app.
#[derive(Clone)]
pub struct Admin {
    pub service: Arc<CheckService>,
    /// Where the changes made here are applied (and published from).
    pub changes: Arc<dyn ChangeSink>,
    pub ready: Arc<AtomicBool>,
    /// The change feed: its held requests, pacing and answers.
    pub feed: Arc<Feed>,
    /// Turns true when the server stops: the admin port closes.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The checks' runtime. The admin API runs on a runtime of its own; its Redis calls run
    /// on this one, so a connection they reopen is driven with the checks' priority.
    pub main: tokio::runtime::Handle,
}

impl Admin {
    /// Records a change made here (published through the shared tier when there is one), on
    /// the checks' runtime.
    pub(crate) async fn record(
        &self,
        change: Change,
    ) -> (crate::versions::Applied, shared::Delivery) {
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

impl Admin {
    /// Records one switch change asked for at `now_ms` by `by`, stamped after the switch's
    /// last change (see `Versions::switch_stamp_ms`).
    pub(crate) async fn record_switch(
        &self,
        setting: Setting,
        by: String,
        now_ms: u64,
    ) -> (crate::versions::Applied, shared::Delivery) {
        let at_ms = self
            .service
            .versions
            .switch_stamp_ms(&setting.slot(), now_ms);
        let change = SwitchChange { setting, at_ms, by };
        self.record(Change::Switch(change)).await
    }
}

/// The credential `headers` carry for `path`: see [`credential_for`].
fn authorized(admin: &Admin, path: &str, headers: &HeaderMap) -> Option<Credential> {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    credential_for(&admin.service.config, path == FEED_PATH, authorization)
}

/// The change feed's path (readable with the feed token too).
pub const FEED_PATH: &str = "/admin/epochs";

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
    admin.feed.watchers.report(&service.metrics);
    report_switches(&admin);
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

/// `POST /admin/switches`: one switch change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    switch: String,
    tier: Option<String>,
    on: Option<bool>,
    max_ms: Option<u64>,
    for_seconds: Option<u64>,
    by: Option<String>,
}

/// The longest a switch may be set for (`for_seconds`).
pub(crate) const MAX_SWITCH_SECONDS: u64 = 7 * 24 * 3600;
/// The longest cache cap a switch may set (`max_ms`): a cap longer than a day is no emergency.
const MAX_SWITCH_CAP_MS: u64 = 24 * 3600 * 1000;
/// The longest `by`.
const MAX_BY_CHARS: usize = 64;

/// What is wrong with `by` (who asks for a change), if anything.
pub(crate) fn by_problem(by: Option<&str>) -> Option<String> {
    match by {
        Some(by)
            if !by.is_empty()
                && by.len() <= MAX_BY_CHARS
                && by
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c)) =>
        {
            None
        }
        _ => Some(format!(
            "by: who asks, 1 to {MAX_BY_CHARS} characters of A-Z a-z 0-9 . _ @ + -"
        )),
    }
}

/// The setting a switch body asks for at `now_ms`, or every problem with it.
fn switch_setting(body: &SwitchBody, now_ms: u64) -> Result<Setting, Vec<String>> {
    let mut problems: Vec<String> = by_problem(body.by.as_deref()).into_iter().collect();
    let per_tier = matches!(body.switch.as_str(), "cache_max" | "fail_closed");
    let tier = match (&body.tier, per_tier) {
        (Some(name), true) => match name.parse::<Tier>() {
            Ok(Tier::Public) | Err(_) => {
                problems.push(format!(
                    "tier: \"{name}\" is not one of authenticated, standard_write, privileged, regulated"
                ));
                None
            }
            Ok(tier) => Some(tier),
        },
        (None, true) => {
            problems.push("tier: required for this switch".to_owned());
            None
        }
        (Some(_), false) => {
            problems.push("tier: only cache_max and fail_closed are per tier".to_owned());
            None
        }
        (None, false) => None,
    };
    let on = match (body.switch.as_str(), body.on, body.max_ms) {
        ("cache_max", on, _) => on.unwrap_or(true),
        ("fail_closed" | "async_verification_off", Some(on), _) => on,
        ("fail_closed" | "async_verification_off", None, _) => {
            problems.push("on: required (true or false)".to_owned());
            false
        }
        (_, _, _) => true,
    };
    let one_shot = matches!(body.switch.as_str(), "flush" | "jwks_refetch");
    if one_shot && body.on.is_some() {
        problems.push("on: a one-shot switch has no on or off".to_owned());
    }
    match (body.switch.as_str(), on, body.max_ms) {
        ("cache_max", true, None) => {
            problems.push("max_ms: required to cap (on: false lifts the cap)".to_owned())
        }
        ("cache_max", true, Some(ms)) if ms > MAX_SWITCH_CAP_MS => {
            problems.push(format!("max_ms: at most {MAX_SWITCH_CAP_MS}"))
        }
        ("cache_max", false, Some(_)) => {
            problems.push("max_ms: not with on: false (that lifts the cap)".to_owned())
        }
        ("cache_max", _, _) | (_, _, None) => {}
        (_, _, Some(_)) => problems.push("max_ms: only for cache_max".to_owned()),
    }
    let until_ms = match body.for_seconds {
        Some(seconds) if one_shot || !on => {
            problems.push(format!(
                "for_seconds: only when turning a switch on (got {seconds})"
            ));
            None
        }
        Some(seconds) if !(1..=MAX_SWITCH_SECONDS).contains(&seconds) => {
            problems.push(format!("for_seconds: 1 to {MAX_SWITCH_SECONDS}"));
            None
        }
        Some(seconds) => Some(now_ms.saturating_add(seconds * 1000)),
        None => None,
    };
    let setting = match (body.switch.as_str(), tier) {
        ("flush", _) => Some(Setting::Flush),
        ("jwks_refetch", _) => Some(Setting::JwksRefetch),
        ("cache_max", Some(tier)) => Some(Setting::CacheMax {
            tier,
            max_ms: body.max_ms.filter(|_| on),
            until_ms,
        }),
        ("fail_closed", Some(tier)) => Some(Setting::FailClosed { tier, on, until_ms }),
        ("async_verification_off", _) => Some(Setting::AsyncVerificationOff { on, until_ms }),
        ("cache_max" | "fail_closed", None) => None,
        (other, _) => {
            problems.push(format!(
                "switch: \"{other}\" is not one of flush, jwks_refetch, cache_max, fail_closed, async_verification_off"
            ));
            None
        }
    };
    match setting {
        Some(setting) if problems.is_empty() => Ok(setting),
        _ => Err(problems),
    }
}

async fn set_switch(State(admin): State<Admin>, body: Bytes) -> Response {
    let body: SwitchBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("switch body: {e}")})),
            )
                .into_response()
        }
    };
    let now_ms = admin.service.clock.now_ms();
    let setting = match switch_setting(&body, now_ms) {
        Ok(setting) => setting,
        Err(problems) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "switch refused", "problems": problems})),
            )
                .into_response()
        }
    };
    let name = setting.name();
    let (applied, delivery) = admin
        .record_switch(setting, body.by.unwrap_or_default(), now_ms)
        .await;
    Json(json!({
        "switch": name,
        "version": applied.stamp,
        "shared": delivery.as_str(),
        "switches": admin.service.versions.switches(),
    }))
    .into_response()
}

/// `GET /admin/switches`: what is in force, what is on now, and each switch's last change.
async fn get_switches(State(admin): State<Admin>) -> Response {
    let versions = &admin.service.versions;
    let now_ms = admin.service.clock.now_ms();
    let switches = versions.switches();
    let active: Vec<_> = switches
        .active(now_ms)
        .into_iter()
        .map(|a| json!({"switch": a.switch, "tier": a.tier, "until_ms": a.until_ms}))
        .collect();
    let changes: Vec<_> = versions
        .switch_changes()
        .into_iter()
        .map(|slot| json!({"change": slot.change, "seq": slot.seq}))
        .collect();
    Json(json!({
        "now_ms": now_ms,
        "switches": switches,
        "active": active,
        "changes": changes,
    }))
    .into_response()
}

/// Every switch that can be on, as `authz_switch_active` names it: 1 while on, else 0.
fn report_switches(admin: &Admin) {
    let service = &admin.service;
    let switches = service.versions.switches();
    let now_ms = service.clock.now_ms();
    let on = |yes: bool| if yes { 1.0 } else { 0.0 };
    for tier in Tier::ALL.into_iter().filter(|t| *t != Tier::Public) {
        service.metrics.set_gauge(
            "authz_switch_active",
            &[("switch", "cache_max"), ("tier", tier.as_str())],
            on(switches.cache_cap_ms(tier, now_ms).is_some()),
        );
        service.metrics.set_gauge(
            "authz_switch_active",
            &[("switch", "fail_closed"), ("tier", tier.as_str())],
            on(switches.fails_closed(tier, now_ms)),
        );
    }
    service.metrics.set_gauge(
        "authz_switch_active",
        &[("switch", "async_verification_off")],
        on(switches.async_verification_off(now_ms)),
    );
    service.metrics.set_gauge(
        "authz_switch_active",
        &[("switch", "canary")],
        on(switches.canary_at(now_ms).is_some()),
    );
    service.metrics.set_gauge(
        "authz_switch_active",
        &[("switch", "policy")],
        on(switches.policy.is_some()),
    );
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

/// `GET /admin/epochs`: the change feed through the router (a connection the admin port's
/// own loop handed over: see `admin_port`), answered by [`crate::feed::reply`] as there.
async fn epochs(
    State(admin): State<Admin>,
    axum::Extension(credential): axum::Extension<Credential>,
    Query(query): Query<FeedQuery>,
) -> Response {
    let reply = crate::feed::reply(&admin.feed, credential, query).await;
    // Handed to the connection (not yet written), on this path.
    reply.pushed(&admin.service.metrics);
    let mut response = match <[Bytes; 1]>::try_from(reply.body) {
        Ok([whole]) => Body::from(whole),
        Err(parts) => Body::from_stream(futures::stream::iter(
            parts.into_iter().map(Ok::<_, std::convert::Infallible>),
        )),
    }
    .into_response();
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    if let Some(seconds) = reply.retry_after_seconds {
        headers.insert("retry-after", HeaderValue::from(seconds));
    }
    response
}

/// The admin router.
pub fn router(admin: Admin) -> Router {
    let protected = Router::new()
        .route("/admin/revoke", post(revoke))
        .route("/admin/revoke-subject", post(revoke_subject))
        .route("/admin/policy-version", post(bump_policy))
        .route("/admin/switches", get(get_switches).post(set_switch))
        .route(
            "/admin/canary",
            get(crate::admin_canary::get_canary).post(crate::admin_canary::set_canary),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> SwitchBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_switch_is_read_with_its_expiry() {
        let now = 1_000_000;
        let setting = |j| switch_setting(&body(j), now);
        assert_eq!(
            setting(
                json!({"switch": "fail_closed", "tier": "privileged", "on": true, "for_seconds": 60, "by": "oncall"})
            ),
            Ok(Setting::FailClosed {
                tier: Tier::Privileged,
                on: true,
                until_ms: Some(now + 60_000)
            })
        );
        assert_eq!(
            setting(
                json!({"switch": "cache_max", "tier": "authenticated", "max_ms": 0, "by": "a@b.c"})
            ),
            Ok(Setting::CacheMax {
                tier: Tier::Authenticated,
                max_ms: Some(0),
                until_ms: None
            })
        );
        assert_eq!(
            setting(
                json!({"switch": "cache_max", "tier": "authenticated", "on": false, "by": "x"})
            ),
            Ok(Setting::CacheMax {
                tier: Tier::Authenticated,
                max_ms: None,
                until_ms: None
            })
        );
        assert_eq!(
            setting(json!({"switch": "async_verification_off", "on": true, "by": "x"})),
            Ok(Setting::AsyncVerificationOff {
                on: true,
                until_ms: None
            })
        );
        assert_eq!(
            setting(json!({"switch": "flush", "by": "x"})),
            Ok(Setting::Flush)
        );
        assert_eq!(
            setting(json!({"switch": "jwks_refetch", "by": "x"})),
            Ok(Setting::JwksRefetch)
        );
    }

    #[test]
    fn every_problem_is_named() {
        let problems = |j| switch_setting(&body(j), 0).unwrap_err();
        let all = problems(
            json!({"switch": "cache_max", "tier": "public", "max_ms": 1, "for_seconds": 0}),
        );
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(
            all[0].starts_with("by:")
                && all[1].starts_with("tier:")
                && all[2].starts_with("for_seconds:"),
            "{all:?}"
        );
        for (j, starts) in [
            (
                json!({"switch": "fail_closed", "tier": "privileged", "by": "x"}),
                "on:",
            ),
            (
                json!({"switch": "fail_closed", "on": true, "by": "x"}),
                "tier:",
            ),
            (
                json!({"switch": "flush", "tier": "privileged", "by": "x"}),
                "tier:",
            ),
            (json!({"switch": "flush", "on": true, "by": "x"}), "on:"),
            (
                json!({"switch": "flush", "for_seconds": 5, "by": "x"}),
                "for_seconds:",
            ),
            (
                json!({"switch": "cache_max", "tier": "regulated", "by": "x"}),
                "max_ms:",
            ),
            (
                json!({"switch": "cache_max", "tier": "regulated", "max_ms": 86_400_001, "by": "x"}),
                "max_ms:",
            ),
            (
                json!({"switch": "cache_max", "tier": "regulated", "on": false, "max_ms": 5, "by": "x"}),
                "max_ms:",
            ),
            (
                json!({"switch": "fail_closed", "tier": "regulated", "on": false, "for_seconds": 5, "by": "x"}),
                "for_seconds:",
            ),
            (
                json!({"switch": "fail_closed", "tier": "regulated", "on": true, "max_ms": 5, "by": "x"}),
                "max_ms:",
            ),
            (
                json!({"switch": "async_verification_off", "on": true, "for_seconds": 604_801, "by": "x"}),
                "for_seconds:",
            ),
            (json!({"switch": "drop_tables", "by": "x"}), "switch:"),
            (json!({"switch": "flush", "by": "x y"}), "by:"),
            (json!({"switch": "flush", "by": "a".repeat(65)}), "by:"),
            (json!({"switch": "flush", "by": ""}), "by:"),
        ] {
            let found = problems(j.clone());
            assert!(
                found.iter().any(|p| p.starts_with(starts)),
                "{j}: {found:?}"
            );
        }
        assert!(serde_json::from_value::<SwitchBody>(
            json!({"switch": "flush", "by": "x", "colour": 1})
        )
        .is_err());
    }
}
