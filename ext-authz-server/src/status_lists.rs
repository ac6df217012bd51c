//! Token Status Lists (draft-ietf-oauth-status-list) at the server: each list the policy names
//! (`status_lists.uris`) is fetched, verified and held; every entry found set is published
//! through the change feed (so routes a filter decides from the JWT refuse its tokens too);
//! and a check's token is judged against its list by the tier's freshness rules.
//!
//! A list is trusted only as a Status List Token signed by one of the provider's published
//! keys (`typ: statuslist+jwt`, `iss` the token issuer, `sub` the list's URI, not past its
//! `exp`), at most `max_list_bytes` as fetched and 16 times that decompressed. A list that
//! fails any of these is refused, logged with why, and counted; the last good one stays.
//!
//! Freshness, by tier ([`StatusLists::judge`]): a list older than the tier's
//! `max_staleness_ms` is fetched again before the check goes on; when that fails, one no
//! older than `max_staleness_ms + stale_if_error_ms` still serves, else the check fails
//! closed (503). Entries only accumulate: an entry the IdP clears again (a suspension lifted)
//! stays refused until its tokens have expired.

use crate::changes::ChangeSink;
use crate::clock::SharedClock;
use crate::idp::Idp;
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::versions::{Change, Versions};
use authz_core::fallback::TierRules;
use authz_core::status_list::{StatusListsSettings, StatusRef, StatusRefusal, MAX_INDEX};
use authz_core::verify::same_issuer;
use authz_core::{DenyReason, VerifyFailure};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The media type of a Status List Token.
pub const STATUS_LIST_TYP: &str = "statuslist+jwt";
/// A decompressed list may be at most this many times the token's size.
pub const MAX_INFLATION: u64 = 16;
/// After a failed fetch, none is started again for at least this long (at most 5 s, or the
/// refresh period when shorter).
const RETRY_AFTER_FAILURE_MS: u64 = 1_000;
/// How often the refresh task looks at what is due.
const TICK: Duration = Duration::from_millis(250);

/// A decoded status list: `bits` per entry, packed from the least significant bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedList {
    bits: u8,
    bytes: Vec<u8>,
}

impl DecodedList {
    /// Entries the list holds.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64 * 8 / u64::from(self.bits)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The status of entry `index` (0: valid), `None` past the end.
    pub fn status(&self, index: u64) -> Option<u8> {
        let bits = u64::from(self.bits);
        let first_bit = index.checked_mul(bits)?;
        let byte = *self.bytes.get(usize::try_from(first_bit / 8).ok()?)?;
        let mask = ((1u16 << bits) - 1) as u8;
        Some((byte >> (first_bit % 8)) & mask)
    }

    /// Every entry whose status is not valid (0), up to [`MAX_INDEX`] (no token can name one
    /// past it).
    pub fn set_entries(&self) -> impl Iterator<Item = u64> + '_ {
        let per_byte = 8 / u64::from(self.bits);
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(move |(i, _)| (0..per_byte).map(move |k| i as u64 * per_byte + k))
            .take_while(|index| *index <= MAX_INDEX)
            .filter(|index| self.status(*index).is_some_and(|s| s != 0))
    }
}

/// Why a fetched list was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListError {
    /// The GET failed: no answer, or not 200.
    Fetch(String),
    TooLarge,
    Signature(VerifyFailure),
    WrongType,
    WrongIssuer,
    /// `sub` is not the URI it was fetched from.
    WrongSubject,
    Expired,
    /// Issued before the list already held (a cache or a replay serving an old one).
    Older,
    /// More entries set than `status_lists.max_set_entries`.
    TooManySet,
    Malformed(&'static str),
}

impl ListError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ListError::Fetch(_) => "fetch_failed",
            ListError::TooLarge => "too_large",
            ListError::Signature(_) => "bad_signature",
            ListError::WrongType => "wrong_typ",
            ListError::WrongIssuer => "wrong_issuer",
            ListError::WrongSubject => "wrong_sub",
            ListError::Expired => "expired",
            ListError::Older => "older_than_held",
            ListError::TooManySet => "too_many_set",
            ListError::Malformed(_) => "malformed",
        }
    }
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListError::Fetch(why) => write!(f, "fetch failed: {why}"),
            ListError::TooLarge => f.write_str("larger than status_lists.max_list_bytes"),
            ListError::Signature(why) => {
                write!(f, "not signed by the provider's keys ({})", why.as_str())
            }
            ListError::WrongType => write!(f, "header typ is not {STATUS_LIST_TYP}"),
            ListError::WrongIssuer => f.write_str("iss is not the token issuer"),
            ListError::WrongSubject => f.write_str("sub is not the list's URI"),
            ListError::Expired => f.write_str("past its exp"),
            ListError::Older => f.write_str("issued before the list already held"),
            ListError::TooManySet => {
                f.write_str("more entries set than status_lists.max_set_entries")
            }
            ListError::Malformed(why) => f.write_str(why),
        }
    }
}

/// A verified list and how long it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedList {
    pub list: DecodedList,
    /// `iat`, ms: the list's age is counted from it.
    pub issued_at_ms: u64,
    /// `exp`, ms: never used after it.
    pub expires_at_ms: Option<u64>,
    /// `ttl`, ms: fetched again after it at the latest.
    pub ttl_ms: Option<u64>,
}

/// What a list must stay within.
#[derive(Debug, Clone, Copy)]
pub struct ListBounds {
    pub max_decoded_bytes: u64,
    pub max_set_entries: usize,
}

/// The claims of a Status List Token whose signature was verified (`header`, `payload`):
/// type, issuer, subject, lifetime and the list itself.
pub fn read_list_token(
    header: &Value,
    payload: &[u8],
    issuer: &str,
    uri: &str,
    now_seconds: i64,
    skew_seconds: i64,
    bounds: ListBounds,
) -> Result<VerifiedList, ListError> {
    let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
    let typ = typ.strip_prefix("application/").unwrap_or(typ);
    if !typ.eq_ignore_ascii_case(STATUS_LIST_TYP) {
        return Err(ListError::WrongType);
    }
    let claims: Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|_| ListError::Malformed("payload is not a json object"))?;
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if same_issuer(issuer, iss) => {}
        _ => return Err(ListError::WrongIssuer),
    }
    if claims.get("sub").and_then(Value::as_str) != Some(uri) {
        return Err(ListError::WrongSubject);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(ListError::Malformed("iat missing or not a number"))?;
    if iat > now_seconds.saturating_add(skew_seconds) {
        return Err(ListError::Malformed("iat in the future"));
    }
    let exp = match claims.get("exp") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or(ListError::Malformed("exp is not a number"))?,
        ),
    };
    // The server fetched it just now: no skew is granted past `exp` (the same rule decides
    // when a held list stops serving).
    if exp.is_some_and(|exp| exp <= now_seconds) {
        return Err(ListError::Expired);
    }
    let ttl = match claims.get("ttl") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or(ListError::Malformed("ttl is not a number"))?,
        ),
    };
    let status_list = claims
        .get("status_list")
        .and_then(Value::as_object)
        .ok_or(ListError::Malformed("status_list missing"))?;
    let bits = status_list
        .get("bits")
        .and_then(Value::as_u64)
        .filter(|b| [1, 2, 4, 8].contains(b))
        .ok_or(ListError::Malformed("status_list.bits is not 1, 2, 4 or 8"))?;
    let compressed = status_list
        .get("lst")
        .and_then(Value::as_str)
        .and_then(|lst| URL_SAFE_NO_PAD.decode(lst).ok())
        .ok_or(ListError::Malformed("status_list.lst is not base64url"))?;
    let mut bytes = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(bounds.max_decoded_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|_| ListError::Malformed("status_list.lst is not zlib"))?;
    if bytes.len() as u64 > bounds.max_decoded_bytes {
        return Err(ListError::TooLarge);
    }
    let list = DecodedList {
        bits: bits as u8,
        bytes,
    };
    if list.set_entries().nth(bounds.max_set_entries).is_some() {
        return Err(ListError::TooManySet);
    }
    let to_ms = |s: i64| (s.max(0) as u64).saturating_mul(1000);
    Ok(VerifiedList {
        list,
        issued_at_ms: to_ms(iat),
        expires_at_ms: exp.map(to_ms),
        ttl_ms: ttl.map(|t| t.saturating_mul(1000)),
    })
}

/// The list held for one URI.
#[derive(Debug, Clone)]
struct Held {
    verified: Arc<VerifiedList>,
    /// When it was fetched (the refresh schedule counts from it; its age from its `iat`).
    fetched_at_ms: u64,
}

/// One watched list.
#[derive(Debug)]
struct Watched {
    held: RwLock<Option<Held>>,
    /// The last list whose set entries were all published: what the next one is compared
    /// with (not `held`, which a check reads at once, before publishing ends).
    published: Mutex<Option<Arc<VerifiedList>>>,
    /// When the last fetch failed (0: it did not).
    failed_at_ms: Mutex<u64>,
    /// A fetch is under way (one at a time, in a task of its own: no check waits on more than
    /// one, and a check that gives up does not cancel it).
    fetching: AtomicBool,
    /// Counts finished fetches, good or not: a check waiting for one watches it.
    attempts: tokio::sync::watch::Sender<u64>,
}

impl Default for Watched {
    fn default() -> Watched {
        Watched {
            held: RwLock::new(None),
            published: Mutex::new(None),
            failed_at_ms: Mutex::new(0),
            fetching: AtomicBool::new(false),
            attempts: tokio::sync::watch::channel(0).0,
        }
    }
}

/// The lists, and what a check and the feed need of them.
pub struct StatusLists {
    settings: StatusListsSettings,
    issuer: String,
    skew_seconds: i64,
    /// Every token's lifetime is at most this (ms): an entry found set is published until
    /// then past the time it was found; `None`: until the revocation cap.
    lifetime_bound_ms: Option<u64>,
    /// The write tier's window (ms): the feed vouches for its state only while every list is
    /// at most `refresh + this` old.
    current_within_ms: u64,
    /// How long a check waits for a fetch it needs (the rest of its deadline is for the
    /// check itself).
    fetch_wait: Duration,
    http: reqwest::Client,
    idp: Arc<Idp>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    versions: Arc<Versions>,
    changes: Arc<dyn ChangeSink>,
    shared: Option<Arc<Shared>>,
    lists: HashMap<String, Watched>,
}

/// What [`StatusLists::new`] takes from the composition root.
pub struct Parts {
    pub settings: StatusListsSettings,
    pub issuer: String,
    pub skew_seconds: i64,
    pub lifetime_bound_ms: Option<u64>,
    pub current_within_ms: u64,
    pub fetch_wait: Duration,
    pub http: reqwest::Client,
    pub idp: Arc<Idp>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub versions: Arc<Versions>,
    pub changes: Arc<dyn ChangeSink>,
    pub shared: Option<Arc<Shared>>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusLists {
    pub fn new(parts: Parts) -> Arc<StatusLists> {
        let lists = parts
            .settings
            .uris
            .iter()
            .map(|uri| (uri.clone(), Watched::default()))
            .collect();
        Arc::new(StatusLists {
            settings: parts.settings,
            issuer: parts.issuer,
            skew_seconds: parts.skew_seconds,
            lifetime_bound_ms: parts.lifetime_bound_ms,
            current_within_ms: parts.current_within_ms,
            fetch_wait: parts.fetch_wait,
            http: parts.http,
            idp: parts.idp,
            clock: parts.clock,
            metrics: parts.metrics,
            versions: parts.versions,
            changes: parts.changes,
            shared: parts.shared,
            lists,
        })
    }

    fn refresh_ms(&self) -> u64 {
        self.settings.refresh_seconds.saturating_mul(1000)
    }

    /// How old a held list is: since its `iat` (a list served late by a cache is as old as
    /// it says).
    fn age_ms(held: &Held, now_ms: u64) -> u64 {
        now_ms.saturating_sub(held.verified.issued_at_ms)
    }

    /// Whether a held list may serve at all: not past its `exp`.
    fn usable(held: &Held, now_ms: u64) -> bool {
        held.verified.expires_at_ms.is_none_or(|exp| now_ms < exp)
    }

    /// Whether every list is recent enough for the change feed (and a Check reply) to vouch
    /// that the entries this server publishes are current: usable and at most
    /// `refresh_seconds` plus the write tier's window old.
    pub fn current(&self) -> bool {
        let now_ms = self.clock.now_ms();
        let within = self.refresh_ms().saturating_add(self.current_within_ms);
        self.lists.values().all(|w| {
            read(&w.held)
                .is_some_and(|h| Self::age_ms(&h, now_ms) <= within && Self::usable(&h, now_ms))
        })
    }

    /// When a held list is next due for a fetch: its refresh period after it was fetched,
    /// sooner when its `ttl` or `exp` says so, and never sooner than a second after.
    fn due_at_ms(&self, held: &Held) -> u64 {
        let mut due = held.fetched_at_ms.saturating_add(self.refresh_ms());
        if let Some(ttl) = held.verified.ttl_ms {
            due = due.min(held.fetched_at_ms.saturating_add(ttl));
        }
        if let Some(exp) = held.verified.expires_at_ms {
            due = due.min(exp);
        }
        due.max(held.fetched_at_ms.saturating_add(1_000))
    }

    /// After a failed fetch, none is started for this long (by the schedule or by a check).
    fn retry_ms(&self) -> u64 {
        self.refresh_ms().clamp(RETRY_AFTER_FAILURE_MS, 5_000)
    }

    fn backing_off(&self, watched: &Watched, now_ms: u64) -> bool {
        let failed_at = *lock(&watched.failed_at_ms);
        failed_at > 0 && now_ms < failed_at.saturating_add(self.retry_ms())
    }

    /// Fetches every list that is due, for as long as the server runs.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let lists = self.clone();
        tokio::spawn(async move {
            loop {
                let now_ms = lists.clock.now_ms();
                for (uri, watched) in &lists.lists {
                    let due =
                        read(&watched.held).is_none_or(|held| now_ms >= lists.due_at_ms(&held));
                    if due && !lists.backing_off(watched, now_ms) {
                        lists.start_fetch(uri);
                    }
                }
                tokio::time::sleep(TICK).await;
            }
        })
    }

    /// Starts fetching `uri`'s list in a task of its own, unless a fetch of it is under way.
    fn start_fetch(self: &Arc<Self>, uri: &str) {
        let Some(watched) = self.lists.get(uri) else {
            return;
        };
        if watched.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (lists, uri) = (self.clone(), uri.to_owned());
        tokio::spawn(async move {
            if let Some(watched) = lists.lists.get(&uri) {
                lists.refresh(&uri, watched).await;
                watched.fetching.store(false, Ordering::Release);
                watched.attempts.send_modify(|n| *n += 1);
            }
        });
    }

    /// Fetches and verifies `uri`'s list; on success holds it and publishes the entries set
    /// since the last list published.
    async fn refresh(&self, uri: &str, watched: &Watched) {
        let fetched = self.fetch_and_verify(uri).await.and_then(|verified| {
            let held_iat = read(&watched.held).map(|h| h.verified.issued_at_ms);
            if held_iat.is_some_and(|held| verified.issued_at_ms < held) {
                return Err(ListError::Older);
            }
            Ok(Arc::new(verified))
        });
        let verified = match fetched {
            Ok(verified) => verified,
            Err(error) => return self.refused(uri, watched, &error),
        };
        let now_ms = self.clock.now_ms();
        *watched.held.write().unwrap_or_else(|p| p.into_inner()) = Some(Held {
            verified: verified.clone(),
            fetched_at_ms: now_ms,
        });
        *lock(&watched.failed_at_ms) = 0;
        self.metrics
            .inc("authz_status_list_fetches_total", &[("result", "ok")]);
        let published = lock(&watched.published).clone();
        let newly_set: Vec<u64> = verified
            .list
            .set_entries()
            .filter(|i| {
                published
                    .as_ref()
                    .and_then(|p| p.list.status(*i))
                    .is_none_or(|s| s == 0)
            })
            .collect();
        if !newly_set.is_empty() {
            tracing::info!(
                list = %uri,
                entries = newly_set.len(),
                "status list: entries newly set (revoked or suspended at the IdP); publishing"
            );
        }
        self.publish(uri, newly_set, now_ms).await;
        *lock(&watched.published) = Some(verified);
    }

    fn refused(&self, uri: &str, watched: &Watched, error: &ListError) {
        let now_ms = self.clock.now_ms();
        *lock(&watched.failed_at_ms) = now_ms.max(1);
        self.metrics.inc(
            "authz_status_list_fetches_total",
            &[("result", error.kind())],
        );
        let age_s = read(&watched.held).map(|h| Self::age_ms(&h, now_ms) / 1000);
        tracing::warn!(
            list = %uri,
            error = error.kind(),
            detail = %error,
            held_age_seconds = ?age_s,
            "status_list_refused: keeping the last good list"
        );
    }

    /// Records each newly set entry (published through the shared tier when there is one).
    async fn publish(&self, uri: &str, entries: Vec<u64>, now_ms: u64) {
        let expiry = self.lifetime_bound_ms.map(|b| now_ms.saturating_add(b));
        for index in entries {
            let change = Change::RevokeStatus(
                StatusRef {
                    uri: uri.to_owned(),
                    index,
                },
                expiry,
            );
            crate::shared::record(self.changes.as_ref(), self.shared.as_deref(), change).await;
            self.metrics
                .inc("authz_status_list_entries_revoked_total", &[]);
        }
    }

    async fn fetch_and_verify(&self, uri: &str) -> Result<VerifiedList, ListError> {
        let body = self.fetch(uri).await?;
        let jws = std::str::from_utf8(&body).map_err(|_| ListError::Malformed("not text"))?;
        let (header, payload) = self
            .idp
            .verify_signed(jws.trim(), self.max_list_bytes())
            .await
            .map_err(ListError::Signature)?;
        read_list_token(
            &header,
            &payload,
            &self.issuer,
            uri,
            self.clock.now_seconds(),
            self.skew_seconds,
            ListBounds {
                max_decoded_bytes: (self.max_list_bytes() as u64).saturating_mul(MAX_INFLATION),
                max_set_entries: self.settings.max_set_entries,
            },
        )
    }

    fn max_list_bytes(&self) -> usize {
        usize::try_from(self.settings.max_list_bytes).unwrap_or(usize::MAX)
    }

    /// The list's bytes, at most `max_list_bytes` read.
    async fn fetch(&self, uri: &str) -> Result<Vec<u8>, ListError> {
        let mut response = self
            .http
            .get(uri)
            .header("accept", "application/statuslist+jwt")
            .send()
            .await
            .map_err(|e| ListError::Fetch(e.to_string()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(ListError::Fetch(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ListError::Fetch(e.to_string()))?
        {
            if body.len() + chunk.len() > self.max_list_bytes() {
                return Err(ListError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A token's status on a check: `claims` are what the check knows of the token (its
    /// verified claims, or the IdP's introspection answer), `token` the token itself (a JWS's
    /// own `status` claim comes first: what the IdP signed). A token naming no list passes;
    /// one naming a list the policy does not name, or an entry that is set (or past the
    /// list's end), is refused (401); one whose list cannot be had fresh enough for `rules`
    /// fails closed (503).
    pub async fn judge(
        self: &Arc<Self>,
        claims: &Map<String, Value>,
        token: &str,
        rules: &TierRules,
    ) -> Result<(), DenyReason> {
        let named = match jws_payload(token).map(|own| StatusRef::of_raw(&own)) {
            Some(Ok(Some(entry))) => Ok(Some(entry)),
            Some(Err(why)) => Err(why),
            _ => StatusRef::of_raw(claims),
        };
        let entry = match named {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(()),
            Err(why) => {
                tracing::warn!(
                    why,
                    "token refused: {}",
                    StatusRefusal::Malformed(why).as_str()
                );
                return Err(DenyReason::Revoked);
            }
        };
        let Some(watched) = self.lists.get(&entry.uri) else {
            tracing::warn!(
                list = %entry.uri,
                "token refused: {} (is the list in status_lists.uris?)",
                StatusRefusal::UnknownList.as_str()
            );
            return Err(DenyReason::Revoked);
        };
        let held = self.fresh_enough(&entry.uri, watched, rules).await?;
        let set = held
            .verified
            .list
            .status(entry.index)
            .is_none_or(|s| s != 0)
            || self.versions.is_status_revoked(&entry);
        if set {
            return Err(DenyReason::Revoked);
        }
        Ok(())
    }

    /// The held list when it is fresh enough for `rules`: one older than `max_staleness_ms`
    /// (or none) is fetched first, waiting at most `fetch_wait`; when that fails, one no older
    /// than `max_staleness_ms + stale_if_error_ms` serves; else `IdpUnavailable`.
    async fn fresh_enough(
        self: &Arc<Self>,
        uri: &str,
        watched: &Watched,
        rules: &TierRules,
    ) -> Result<Held, DenyReason> {
        let young = |held: &Option<Held>, within: u64| {
            let now_ms = self.clock.now_ms();
            held.as_ref()
                .is_some_and(|h| Self::usable(h, now_ms) && Self::age_ms(h, now_ms) <= within)
        };
        let mut held = read(&watched.held);
        if !young(&held, rules.max_staleness_ms) && !self.backing_off(watched, self.clock.now_ms())
        {
            let mut finished = watched.attempts.subscribe();
            self.start_fetch(uri);
            let _ = tokio::time::timeout(self.fetch_wait, finished.changed()).await;
            held = read(&watched.held);
        }
        let grace = rules
            .max_staleness_ms
            .saturating_add(rules.stale_if_error_ms);
        match held {
            Some(held) if young(&Some(held.clone()), grace) => Ok(held),
            _ => {
                self.metrics.inc("authz_status_list_unavailable_total", &[]);
                tracing::warn!(list = %uri, "status list not fresh enough for the tier: failing closed");
                Err(DenyReason::IdpUnavailable)
            }
        }
    }
}

/// The claims of a compact JWS, unverified (an introspected token's: the IdP vouched for it).
fn jws_payload(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests;
