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
//! | `POST /introspect` | RFC 7662 introspection (form `token=`), client auth `client_secret_basic` or `client_secret_post` |
//! | `POST /introspect/batch` | batch introspection: JSON array of tokens in, array of RFC 7662 responses out (same order) |
//! | `POST /revoke` | RFC 7009 revocation (form `token=`), client auth as above |
//! | `POST /admin/fault` | also `{"introspection": "ok"|"error"|"nonjson"|"missing_active"|"down"|"refuse_unknown", "introspection_latency_ms": n}` |
//! | `POST /admin/subject-scope` | `{"sub", "scope"}`: every token of the subject introspects with this scope from now on |
//! | `GET /statuslists/1` | the Token Status List (`statuslist+jwt`, 2 bits per entry) every minted JWT names, when started with `--status-list` |
//! | `POST /admin/status` | `{"token": "...", "status": "revoked"|"suspended"|"valid"}`: sets the token's entry in the status list |
//! | `POST /admin/fault` | also `{"status_list": "ok"|"down"|"bad_signature"|"wrong_issuer"|"stale", "status_list_latency_ms": n}` |
//! | `GET /admin/stats` | counters: `jwks_requests`, `tokens_minted`, `introspection_calls`, `batch_calls`, `introspected_tokens`, `last_batch_size` |
//!
//! Every minted token (JWT or opaque) is remembered so it can be introspected and revoked. Keys
//! and tokens live in memory; every restart starts fresh.

use crate::DevError;
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use dev_keys::{KeyAlgorithm, SigningKey};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Settings of one IdP instance.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    pub issuer: String,
    pub audience: String,
    /// Client credentials the introspection and revocation endpoints accept.
    pub client_id: String,
    pub client_secret: String,
    /// Where the Token Status List is served (this IdP's `/statuslists/1`): when set, every
    /// minted JWT names an entry of it (`status.status_list`).
    pub status_list_uri: Option<String>,
}

#[derive(Default)]
struct Faults {
    jwks_down: bool,
    jwks_latency_ms: u64,
    introspection: IntrospectionFault,
    introspection_latency_ms: u64,
    status_list: StatusListFault,
    status_list_latency_ms: u64,
}

/// How the status list endpoint misbehaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum StatusListFault {
    #[default]
    Ok,
    /// HTTP 503.
    Down,
    /// A list whose signature does not verify.
    BadSignature,
    /// A list signed by this IdP's key but naming another issuer.
    WrongIssuer,
    /// A list issued ten minutes ago, as a cache or a replay would serve it.
    Stale,
}

/// How the introspection endpoints misbehave, for tests and demos.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum IntrospectionFault {
    #[default]
    Ok,
    /// HTTP 500.
    Error,
    /// 200 with a body that is not JSON.
    NotJson,
    /// 200 with a JSON object lacking `active`.
    MissingActive,
    /// HTTP 503, as an IdP that is down behind its load balancer.
    Down,
    /// Tokens this IdP did not mint get HTTP 400 `unsupported_token_type`, as a certified
    /// provider (`oidc-provider`) answers for a JWT-shaped token it will not introspect.
    RefuseUnknown,
}

struct TokenRecord {
    claims: Map<String, Value>,
    revoked: bool,
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
    tokens: Mutex<HashMap<String, TokenRecord>>,
    /// The status of each status list entry (0 valid, 1 revoked, 2 suspended), by index.
    statuses: Mutex<Vec<u8>>,
    status_list_requests: AtomicU64,
    /// Status list requests being answered now, and the most at once so far.
    status_list_in_flight: AtomicU64,
    status_list_most_in_flight: AtomicU64,
    jwks_requests: AtomicU64,
    tokens_minted: AtomicU64,
    introspection_calls: AtomicU64,
    batch_calls: AtomicU64,
    introspected_tokens: AtomicU64,
    last_batch_size: AtomicU64,
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
            tokens: Mutex::new(HashMap::new()),
            statuses: Mutex::new(Vec::new()),
            status_list_requests: AtomicU64::new(0),
            status_list_in_flight: AtomicU64::new(0),
            status_list_most_in_flight: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            tokens_minted: AtomicU64::new(0),
            introspection_calls: AtomicU64::new(0),
            batch_calls: AtomicU64::new(0),
            introspected_tokens: AtomicU64::new(0),
            last_batch_size: AtomicU64::new(0),
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
            "auth_time".into(),
            json!(now - request.auth_age.unwrap_or(0)),
        );
        if let Some(acr) = &request.acr {
            claims.insert("acr".into(), json!(acr));
        }
        claims.insert(
            "jti".into(),
            json!(format!(
                "{:x}",
                self.tokens_minted.fetch_add(1, Ordering::Relaxed) + 1
            )),
        );
        if let Some(uri) = self
            .settings
            .status_list_uri
            .as_ref()
            .filter(|_| request.status != Some(false))
        {
            let mut statuses = lock(&self.statuses);
            claims.insert(
                "status".into(),
                json!({"status_list": {"idx": statuses.len(), "uri": uri}}),
            );
            statuses.push(0);
        }
        if let Some(Value::Object(extra)) = &request.claims {
            for (k, v) in extra {
                claims.insert(k.clone(), v.clone());
            }
        }
        let record = |token: &str, claims: Map<String, Value>| {
            lock(&self.tokens).insert(
                token.to_owned(),
                TokenRecord {
                    claims,
                    revoked: false,
                },
            );
        };
        if request.opaque.unwrap_or(false) {
            let mut bytes = [0u8; 24];
            getrandom_fill(&mut bytes)?;
            let token = format!("opq_{}", URL_SAFE_NO_PAD.encode(bytes));
            record(&token, claims);
            return Ok(token);
        }
        let keys = lock(&self.keys);
        let key = match request.alg.as_deref().unwrap_or("RS256") {
            "RS256" => &keys.published[keys.rsa_signer],
            "ES256" => &keys.published[keys.ec_signer],
            other => return Err(format!("alg {other} is not offered (RS256, ES256)")),
        };
        let kid = request.kid.clone().unwrap_or_else(|| key.kid.clone());
        let token = key
            .sign_with(
                key.algorithm.default_alg(),
                &json!({"kid": kid, "typ": request.typ.as_deref().unwrap_or("at+jwt")}),
                &Value::Object(claims.clone()),
            )
            .map_err(|e| e.to_string())?;
        drop(keys);
        record(&token, claims);
        Ok(token)
    }

    /// The RFC 7662 answer for one token.
    fn introspect_one(&self, token: &str) -> Value {
        self.introspected_tokens.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let tokens = lock(&self.tokens);
        match tokens.get(token) {
            Some(r)
                if !r.revoked
                    && r.claims
                        .get("exp")
                        .and_then(Value::as_i64)
                        .is_some_and(|exp| exp > now) =>
            {
                let mut body = r.claims.clone();
                body.insert("active".into(), json!(true));
                body.insert("client_id".into(), json!(self.settings.client_id));
                body.insert("token_type".into(), json!("Bearer"));
                Value::Object(body)
            }
            _ => json!({"active": false}),
        }
    }

    /// The Status List Token now: 2 bits per entry, zlib-compressed, signed with the current
    /// RSA key (or misbehaving as the fault says).
    fn status_list_token(&self, uri: &str) -> Result<String, String> {
        let fault = lock(&self.faults).status_list;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let packed = pack_two_bit_entries(&lock(&self.statuses));
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &packed).map_err(|e| e.to_string())?;
        let compressed = encoder.finish().map_err(|e| e.to_string())?;
        let issuer = match fault {
            StatusListFault::WrongIssuer => "https://evil.example".to_owned(),
            _ => self.settings.issuer.clone(),
        };
        let iat = match fault {
            StatusListFault::Stale => now - 600,
            _ => now,
        };
        let claims = json!({
            "iss": issuer, "sub": uri, "iat": iat, "exp": now + 3600, "ttl": 300,
            "status_list": {"bits": 2, "lst": URL_SAFE_NO_PAD.encode(compressed)},
        });
        let keys = lock(&self.keys);
        let key = &keys.published[keys.rsa_signer];
        let mut jws = key
            .sign_with(
                key.algorithm.default_alg(),
                &json!({"kid": key.kid, "typ": "statuslist+jwt"}),
                &claims,
            )
            .map_err(|e| e.to_string())?;
        if fault == StatusListFault::BadSignature {
            // Another signature of the same length: the first byte of it changed.
            let signature_at = jws.rfind('.').map_or(0, |dot| dot + 1);
            let flipped = if jws[signature_at..].starts_with('A') {
                "B"
            } else {
                "A"
            };
            jws.replace_range(signature_at..signature_at + 1, flipped);
        }
        Ok(jws)
    }

    fn client_authenticated(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        // RFC 6749 §2.3.1: id and secret are form-urlencoded inside the Basic credentials.
        let form_decode = |part: &str| -> String {
            form_urlencoded::parse(part.as_bytes())
                .next()
                .map(|(decoded, _)| decoded.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = match basic {
            Some(pair) => match pair.split_once(':') {
                Some((id, secret)) => (form_decode(id), form_decode(secret)),
                None => return false,
            },
            None => match (form.get("client_id"), form.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => return false,
            },
        };
        id == self.settings.client_id && secret == self.settings.client_secret
    }

    /// Applies the injected introspection fault, if any; `None` means answer normally.
    async fn introspection_fault(&self) -> Option<Response> {
        let (fault, latency) = {
            let f = lock(&self.faults);
            (f.introspection, f.introspection_latency_ms)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        match fault {
            IntrospectionFault::Ok => None,
            IntrospectionFault::Error => Some(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (fault injected)",
                )
                    .into_response(),
            ),
            IntrospectionFault::Down => {
                Some((StatusCode::SERVICE_UNAVAILABLE, "down (fault injected)").into_response())
            }
            IntrospectionFault::NotJson => {
                Some((StatusCode::OK, "<html>surprise</html>").into_response())
            }
            IntrospectionFault::MissingActive => {
                Some((StatusCode::OK, Json(json!({"sub": "alice"}))).into_response())
            }
            // Decided per token, in `introspect`.
            IntrospectionFault::RefuseUnknown => None,
        }
    }
}

/// Status list entries of 2 bits, the first in the least significant bits of the first byte.
fn pack_two_bit_entries(statuses: &[u8]) -> Vec<u8> {
    let mut packed = vec![0u8; statuses.len().div_ceil(4).max(16)];
    for (index, status) in statuses.iter().enumerate() {
        if let Some(byte) = packed.get_mut(index / 4) {
            *byte |= (status & 0b11) << ((index % 4) * 2);
        }
    }
    packed
}

/// Parameters of `/mint`.
#[derive(Debug, Default, Deserialize)]
pub struct MintRequest {
    pub sub: Option<String>,
    /// JWS header `typ`. Default `at+jwt` (RFC 9068 access token); `JWT` mints what an ID
    /// token looks like.
    pub typ: Option<String>,
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
    /// An opaque token (introspection only) instead of a JWT.
    pub opaque: Option<bool>,
    /// `auth_time` this many seconds in the past (default 0: now).
    pub auth_age: Option<i64>,
    /// `acr` claim.
    pub acr: Option<String>,
    /// `false`: no `status` claim, though the IdP serves a status list.
    pub status: Option<bool>,
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
    introspection: Option<String>,
    introspection_latency_ms: Option<u64>,
    status_list: Option<String>,
    status_list_latency_ms: Option<u64>,
}

async fn introspect(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    idp.introspection_calls.fetch_add(1, Ordering::Relaxed);
    if !idp.client_authenticated(&headers, &form) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if let Some(fault) = idp.introspection_fault().await {
        return fault;
    }
    let Some(token) = form.get("token") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    };
    let refuse_unknown = lock(&idp.faults).introspection == IntrospectionFault::RefuseUnknown;
    if refuse_unknown && !lock(&idp.tokens).contains_key(token.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_token_type",
                        "error_description": "token is not an introspectable token"})),
        )
            .into_response();
    }
    Json(idp.introspect_one(token)).into_response()
}

async fn introspect_batch(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Json(tokens): Json<Vec<String>>,
) -> Response {
    idp.batch_calls.fetch_add(1, Ordering::Relaxed);
    idp.last_batch_size
        .store(tokens.len() as u64, Ordering::Relaxed);
    if !idp.client_authenticated(&headers, &HashMap::new()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if let Some(fault) = idp.introspection_fault().await {
        return fault;
    }
    Json(
        tokens
            .iter()
            .map(|t| idp.introspect_one(t))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn revoke(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !idp.client_authenticated(&headers, &form) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if let Some(token) = form.get("token") {
        if let Some(record) = lock(&idp.tokens).get_mut(token) {
            record.revoked = true;
        }
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    StatusCode::OK.into_response()
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
    if let Some(mode) = f.introspection.as_deref() {
        faults.introspection = match mode {
            "ok" => IntrospectionFault::Ok,
            "error" => IntrospectionFault::Error,
            "nonjson" => IntrospectionFault::NotJson,
            "missing_active" => IntrospectionFault::MissingActive,
            "down" => IntrospectionFault::Down,
            "refuse_unknown" => IntrospectionFault::RefuseUnknown,
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown introspection fault {other}"),
                )
                    .into_response()
            }
        };
    }
    if let Some(ms) = f.introspection_latency_ms {
        faults.introspection_latency_ms = ms;
    }
    if let Some(ms) = f.status_list_latency_ms {
        faults.status_list_latency_ms = ms;
    }
    if let Some(mode) = f.status_list.as_deref() {
        faults.status_list = match mode {
            "ok" => StatusListFault::Ok,
            "down" => StatusListFault::Down,
            "bad_signature" => StatusListFault::BadSignature,
            "wrong_issuer" => StatusListFault::WrongIssuer,
            "stale" => StatusListFault::Stale,
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown status_list fault {other}"),
                )
                    .into_response()
            }
        };
    }
    Json(json!({
        "jwks_down": faults.jwks_down,
        "jwks_latency_ms": faults.jwks_latency_ms,
        "introspection": format!("{:?}", faults.introspection),
        "introspection_latency_ms": faults.introspection_latency_ms,
        "status_list": format!("{:?}", faults.status_list),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct SubjectScope {
    sub: String,
    scope: String,
}

/// Changes the `scope` of every token of a subject (a role change, as introspection sees it).
async fn subject_scope(
    State(idp): State<Arc<Idp>>,
    Json(change): Json<SubjectScope>,
) -> Json<Value> {
    let mut changed = 0;
    for record in lock(&idp.tokens).values_mut() {
        if record.claims.get("sub").and_then(Value::as_str) == Some(change.sub.as_str()) {
            record.claims.insert("scope".into(), json!(change.scope));
            changed += 1;
        }
    }
    Json(json!({"changed": changed}))
}

async fn status_list(State(idp): State<Arc<Idp>>) -> Response {
    idp.status_list_requests.fetch_add(1, Ordering::Relaxed);
    let now = idp.status_list_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    idp.status_list_most_in_flight
        .fetch_max(now, Ordering::SeqCst);
    let latency = lock(&idp.faults).status_list_latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let response = status_list_response(&idp);
    idp.status_list_in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

fn status_list_response(idp: &Idp) -> Response {
    let Some(uri) = idp.settings.status_list_uri.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if lock(&idp.faults).status_list == StatusListFault::Down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down (fault injected)").into_response();
    }
    match idp.status_list_token(&uri) {
        Ok(jws) => ([(header::CONTENT_TYPE, "application/statuslist+jwt")], jws).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct StatusChange {
    token: String,
    status: String,
}

/// Sets a token's entry in the status list (revoked, suspended or valid again).
async fn set_status(State(idp): State<Arc<Idp>>, Json(change): Json<StatusChange>) -> Response {
    let value = match change.status.as_str() {
        "valid" => 0,
        "revoked" => 1,
        "suspended" => 2,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("status must be valid, revoked or suspended, not {other}"),
            )
                .into_response()
        }
    };
    let index = lock(&idp.tokens).get(&change.token).and_then(|r| {
        r.claims
            .get("status")?
            .get("status_list")?
            .get("idx")?
            .as_u64()
    });
    let Some(index) = index.and_then(|i| usize::try_from(i).ok()) else {
        return (StatusCode::NOT_FOUND, "no status list entry for that token").into_response();
    };
    match lock(&idp.statuses).get_mut(index) {
        Some(entry) => {
            *entry = value;
            Json(json!({"idx": index, "status": change.status})).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such entry").into_response(),
    }
}

async fn stats(State(idp): State<Arc<Idp>>) -> Json<Value> {
    Json(json!({
        "status_list_requests": idp.status_list_requests.load(Ordering::Relaxed),
        "status_list_most_in_flight": idp.status_list_most_in_flight.load(Ordering::Relaxed),
        "jwks_requests": idp.jwks_requests.load(Ordering::Relaxed),
        "tokens_minted": idp.tokens_minted.load(Ordering::Relaxed),
        "introspection_calls": idp.introspection_calls.load(Ordering::Relaxed),
        "batch_calls": idp.batch_calls.load(Ordering::Relaxed),
        "introspected_tokens": idp.introspected_tokens.load(Ordering::Relaxed),
        "last_batch_size": idp.last_batch_size.load(Ordering::Relaxed),
    }))
}

/// The IdP's routes.
pub fn router(idp: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/mint", get(mint_get).post(mint_post))
        .route("/introspect", post(introspect))
        .route("/introspect/batch", post(introspect_batch))
        .route("/revoke", post(revoke))
        .route("/admin/rotate", post(rotate))
        .route("/admin/fault", post(fault))
        .route("/admin/subject-scope", post(subject_scope))
        .route("/admin/stats", get(stats))
        .route("/statuslists/1", get(status_list))
        .route("/admin/status", post(set_status))
        .with_state(idp)
}

/// Options for an initial fault state, from the command line.
pub fn initial_faults(idp: &Idp, jwks_down: bool) {
    lock(&idp.faults).jwks_down = jwks_down;
}

fn getrandom_fill(bytes: &mut [u8]) -> Result<(), String> {
    dev_keys::random_bytes(bytes).map_err(|e| e.to_string())
}
