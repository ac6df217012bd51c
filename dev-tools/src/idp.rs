//! The dev identity provider.
//!
//! | endpoint | what it does |
//! |---|---|
//! | `GET /.well-known/jwks.json` | the published keys (RS256 and ES256); 503 while `jwks` is `down` |
//! | `GET /.well-known/openid-configuration` | issuer and `jwks_uri` |
//! | `GET /mint?sub=&scope=&aud=&ttl=&nbf_in=&alg=&kid=` | a signed token as plain text |
//! | `POST /mint` | the same from a JSON body, plus `claims` (extra claims object) |
//! | `POST /admin/rotate?alg=RS256&retire=false` | new signing key for `alg`; old keys stay published unless `retire=true` |
//! | `POST /admin/fault` | `{"jwks": "down"|"up", "jwks_latency_ms": n}` |
//! | `GET /admin/stats` | request counters (`jwks_requests`, `tokens_minted`) |
//!
//! Keys live in memory; every restart starts with fresh keys.

use crate::DevError;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dev_keys::{KeyAlgorithm, SigningKey};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Settings of one IdP instance.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    pub issuer: String,
    pub audience: String,
}

#[derive(Default)]
struct Faults {
    jwks_down: bool,
    jwks_latency_ms: u64,
}

struct Keys {
    /// Every published key, newest last.
    published: Vec<SigningKey>,
    rsa_signer: usize,
    ec_signer: usize,
    generation: u32,
}

/// Shared state of the IdP.
pub struct Idp {
    settings: IdpSettings,
    keys: Mutex<Keys>,
    faults: Mutex<Faults>,
    jwks_requests: AtomicU64,
    tokens_minted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Idp {
    /// A new IdP with one RSA and one P-256 key.
    pub fn new(settings: IdpSettings) -> Result<Arc<Idp>, DevError> {
        let keys = Keys {
            published: vec![
                SigningKey::generate(KeyAlgorithm::Rsa, "rsa-1")?,
                SigningKey::generate(KeyAlgorithm::Es256, "ec-1")?,
            ],
            rsa_signer: 0,
            ec_signer: 1,
            generation: 1,
        };
        Ok(Arc::new(Idp {
            settings,
            keys: Mutex::new(keys),
            faults: Mutex::new(Faults::default()),
            jwks_requests: AtomicU64::new(0),
            tokens_minted: AtomicU64::new(0),
        }))
    }

    fn jwks(&self) -> Value {
        let keys = lock(&self.keys);
        json!({"keys": keys.published.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
    }

    fn rotate(&self, algorithm: KeyAlgorithm, retire: bool) -> Result<String, DevError> {
        let generation = lock(&self.keys).generation + 1;
        let prefix = if algorithm == KeyAlgorithm::Rsa {
            "rsa"
        } else {
            "ec"
        };
        let kid = format!("{prefix}-{generation}");
        let key = SigningKey::generate(algorithm, &kid)?;
        let mut keys = lock(&self.keys);
        keys.generation = generation;
        if retire {
            let old = if algorithm == KeyAlgorithm::Rsa {
                keys.rsa_signer
            } else {
                keys.ec_signer
            };
            keys.published.remove(old);
            keys.rsa_signer -= usize::from(keys.rsa_signer > old);
            keys.ec_signer -= usize::from(keys.ec_signer > old);
        }
        keys.published.push(key);
        let newest = keys.published.len() - 1;
        if algorithm == KeyAlgorithm::Rsa {
            keys.rsa_signer = newest;
        } else {
            keys.ec_signer = newest;
        }
        Ok(kid)
    }

    /// Mints a token for the request.
    pub fn mint(&self, request: &MintRequest) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.settings.issuer));
        claims.insert(
            "sub".into(),
            json!(request.sub.clone().unwrap_or_else(|| "alice".into())),
        );
        claims.insert(
            "aud".into(),
            json!(request
                .aud
                .clone()
                .unwrap_or_else(|| self.settings.audience.clone())),
        );
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + request.ttl.unwrap_or(300)));
        if let Some(nbf_in) = request.nbf_in {
            claims.insert("nbf".into(), json!(now + nbf_in));
        }
        if let Some(scope) = &request.scope {
            claims.insert("scope".into(), json!(scope));
        }
        claims.insert(
            "jti".into(),
            json!(format!(
                "{:x}",
                self.tokens_minted.fetch_add(1, Ordering::Relaxed) + 1
            )),
        );
        if let Some(Value::Object(extra)) = &request.claims {
            for (k, v) in extra {
                claims.insert(k.clone(), v.clone());
            }
        }
        let keys = lock(&self.keys);
        let key = match request.alg.as_deref().unwrap_or("RS256") {
            "RS256" => &keys.published[keys.rsa_signer],
            "ES256" => &keys.published[keys.ec_signer],
            other => return Err(format!("alg {other} is not offered (RS256, ES256)")),
        };
        let kid = request.kid.clone().unwrap_or_else(|| key.kid.clone());
        key.sign_with(
            key.algorithm.default_alg(),
            &json!({"kid": kid}),
            &Value::Object(claims),
        )
        .map_err(|e| e.to_string())
    }
}

/// Parameters of `/mint`.
#[derive(Debug, Default, Deserialize)]
pub struct MintRequest {
    pub sub: Option<String>,
    pub scope: Option<String>,
    pub aud: Option<String>,
    /// Seconds until `exp` (negative for an expired token). Default 300.
    pub ttl: Option<i64>,
    /// Seconds until `nbf`, if any.
    pub nbf_in: Option<i64>,
    /// RS256 (default) or ES256.
    pub alg: Option<String>,
    /// Overrides the header `kid` (to test unknown keys).
    pub kid: Option<String>,
    /// Extra claims (POST only).
    pub claims: Option<Value>,
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Response {
    idp.jwks_requests.fetch_add(1, Ordering::Relaxed);
    let (down, latency) = {
        let f = lock(&idp.faults);
        (f.jwks_down, f.jwks_latency_ms)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if down {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "jwks is down (fault injected)\n",
        )
            .into_response();
    }
    ([(header::CACHE_CONTROL, "max-age=300")], Json(idp.jwks())).into_response()
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Json<Value> {
    Json(
        json!({"issuer": idp.settings.issuer, "jwks_uri": format!("{}/.well-known/jwks.json", idp.settings.issuer)}),
    )
}

fn mint_response(idp: &Idp, request: &MintRequest) -> Response {
    match idp.mint(request) {
        Ok(token) => (StatusCode::OK, token).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn mint_get(State(idp): State<Arc<Idp>>, Query(request): Query<MintRequest>) -> Response {
    mint_response(&idp, &request)
}

async fn mint_post(State(idp): State<Arc<Idp>>, Json(request): Json<MintRequest>) -> Response {
    mint_response(&idp, &request)
}

#[derive(Debug, Deserialize)]
struct RotateQuery {
    alg: Option<String>,
    retire: Option<bool>,
}

async fn rotate(State(idp): State<Arc<Idp>>, Query(q): Query<RotateQuery>) -> Response {
    let algorithm = match q.alg.as_deref().unwrap_or("RS256") {
        "RS256" => KeyAlgorithm::Rsa,
        "ES256" => KeyAlgorithm::Es256,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("alg {other} is not offered"),
            )
                .into_response()
        }
    };
    let idp2 = idp.clone();
    let retire = q.retire.unwrap_or(false);
    match tokio::task::spawn_blocking(move || idp2.rotate(algorithm, retire)).await {
        Ok(Ok(kid)) => Json(json!({"kid": kid})).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct FaultRequest {
    jwks: Option<String>,
    jwks_latency_ms: Option<u64>,
}

async fn fault(State(idp): State<Arc<Idp>>, Json(f): Json<FaultRequest>) -> Response {
    let mut faults = lock(&idp.faults);
    match f.jwks.as_deref() {
        Some("down") => faults.jwks_down = true,
        Some("up") => faults.jwks_down = false,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("jwks must be down or up, not {other}"),
            )
                .into_response()
        }
        None => {}
    }
    if let Some(ms) = f.jwks_latency_ms {
        faults.jwks_latency_ms = ms;
    }
    Json(json!({"jwks_down": faults.jwks_down, "jwks_latency_ms": faults.jwks_latency_ms}))
        .into_response()
}

async fn stats(State(idp): State<Arc<Idp>>) -> Json<Value> {
    Json(json!({
        "jwks_requests": idp.jwks_requests.load(Ordering::Relaxed),
        "tokens_minted": idp.tokens_minted.load(Ordering::Relaxed),
    }))
}

/// The IdP's routes.
pub fn router(idp: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/mint", get(mint_get).post(mint_post))
        .route("/admin/rotate", post(rotate))
        .route("/admin/fault", post(fault))
        .route("/admin/stats", get(stats))
        .with_state(idp)
}

/// Options for an initial fault state, from the command line.
pub fn initial_faults(idp: &Idp, jwks_down: bool) {
    lock(&idp.faults).jwks_down = jwks_down;
}
