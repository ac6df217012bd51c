//! The optional shared tier: several server instances, one Redis.
//!
//! What it owns:
//! - **The revocation event stream.** A revocation, subject revocation or policy bump made on
//!   any instance is published by one Lua script that takes the next number of a shared
//!   sequence, updates the durable snapshot (subject epochs, policy version) and appends the
//!   event to a Redis stream under that number. Every instance reads the stream in order, so
//!   its change counter (`Versions`) is the shared sequence and a filter may poll any instance.
//! - **Catch-up.** On (re)connect an instance loads the snapshot, reads the stream from where
//!   it stopped, and publishes what it recorded while Redis was unreachable (its outbox). If
//!   Redis lost its data (a new incarnation key, or a sequence below ours), the instance raises
//!   the sequence above its own and republishes everything it knows: nothing revoked comes back.
//! - **Confirmation.** Each stream read (they block at most `block_ms`) confirms that this
//!   instance's state is current. Without one for `max_unconfirmed_ms` the state is
//!   unconfirmed: tiers above `authenticated` stop using shared data, tiers that fail closed
//!   answer 503, and `/admin/epochs` says `"confirmed": false`.
//! - **The shared introspection cache (L2).** Results go to Redis under
//!   `HMAC(secret, sha256(token))` and the policy version, encrypted with ChaCha20-Poly1305
//!   (the key bound as associated data), with the local entry's lifetime. Redis never holds a
//!   token, a token hash, or a readable claim.
//!
//! What it does not do: decide. Freshness rules, tiers and revocation checks stay in `check`
//! and `authz-core`; a Redis failure only ever removes a shortcut or fails closed.

use crate::check::CheckService;
use crate::config::RedisConfig;
use crate::introspector::{now_ms, Cached};
use crate::lock;
use crate::metrics::Metrics;
use crate::versions::{random_incarnation, Applied, Change, TokenKey, Versions};
use authz_core::introspection::Introspection;
use authz_core::token_hash::{digest_hex, parse_digest_hex};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, RedisError, Value as RedisValue};
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Publishes one change. KEYS: seq, events, subjects, policy. ARGV: kind, value, at_ms,
/// stream max length, origin. Returns {seq, n} (n: the subject's epoch or policy version).
const PUBLISH_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local n = 0
local at = tonumber(ARGV[3])
if ARGV[1] == 'subject' then
  local prev = redis.call('HGET', KEYS[3], ARGV[2])
  local epoch, prev_at = 0, 0
  if prev then
    local e, a = string.match(prev, '^(%d+):(%d+):')
    epoch, prev_at = tonumber(e), tonumber(a)
  end
  n = epoch + 1
  if prev_at > at then at = prev_at end
  redis.call('HSET', KEYS[3], ARGV[2], string.format('%d:%d:%d', n, at, seq))
elseif ARGV[1] == 'policy' then
  n = redis.call('HINCRBY', KEYS[4], 'version', 1)
  redis.call('HSET', KEYS[4], 'seq', seq)
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], string.format('%d-1', seq),
  'kind', ARGV[1], 'value', ARGV[2], 'at', string.format('%d', at), 'n', n, 'origin', ARGV[5])
return {seq, n}
"#;

/// Raises the sequence to at least ARGV[1]. KEYS: seq.
const FLOOR_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
"#;

/// Redis key names under the configured prefix.
#[derive(Debug, Clone)]
struct Keys {
    seq: String,
    events: String,
    subjects: String,
    policy: String,
    incarnation: String,
    cache: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            seq: format!("{prefix}seq"),
            events: format!("{prefix}events"),
            subjects: format!("{prefix}subjects"),
            policy: format!("{prefix}policy"),
            incarnation: format!("{prefix}incarnation"),
            cache: format!("{prefix}intro:"),
        }
    }
}

/// How a recorded change reached the shared tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// No shared tier configured.
    Local,
    /// In Redis under its sequence number; every instance will apply it.
    Published,
    /// Redis was unreachable: in effect here, published when Redis returns.
    Pending,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Local => "local",
            Delivery::Published => "published",
            Delivery::Pending => "pending",
        }
    }
}

/// Where the stream reader is.
#[derive(Debug, Default)]
struct Cursor {
    last_seq: u64,
    incarnation: Option<String>,
}

/// The shared tier of one server instance.
pub struct Shared {
    config: RedisConfig,
    client: redis::Client,
    keys: Keys,
    manager: RwLock<Option<ConnectionManager>>,
    confirmed_at_ms: AtomicU64,
    outbox: Mutex<Vec<Change>>,
    mac_key: [u8; 32],
    cipher: ChaCha20Poly1305,
    origin: String,
    publish: redis::Script,
    floor: redis::Script,
    versions: Arc<Versions>,
    metrics: Arc<Metrics>,
}

fn derive_key(secret: &str, purpose: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

/// Encodes a change as the stream's (kind, value, at_ms) fields.
fn encode(change: &Change) -> (&'static str, String, u64) {
    match change {
        // For tokens and jtis, `at` carries the expiry (0: none).
        Change::RevokeToken(key, expiry) => ("token", digest_hex(key), expiry.unwrap_or(0)),
        Change::RevokeJti(jti, expiry) => ("jti", jti.clone(), expiry.unwrap_or(0)),
        Change::RevokeSubject {
            subject,
            revoked_at_ms,
            ..
        } => ("subject", subject.clone(), *revoked_at_ms),
        Change::BumpPolicy { .. } => ("policy", String::new(), 0),
    }
}

/// The change with the shared count `n` the publish script returned.
fn with_shared_count(change: Change, n: u64) -> Change {
    match change {
        Change::RevokeSubject {
            subject,
            revoked_at_ms,
            ..
        } => Change::RevokeSubject {
            subject,
            revoked_at_ms,
            epoch: Some(n),
        },
        Change::BumpPolicy { .. } => Change::BumpPolicy { version: Some(n) },
        other => other,
    }
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    match entry.map.get(name)? {
        RedisValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RedisValue::SimpleString(s) => Some(s.clone()),
        RedisValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Decodes one stream entry into its sequence number and change.
fn decode(entry: &StreamId) -> Option<(u64, Change)> {
    let seq = entry.id.split('-').next()?.parse().ok()?;
    let value = field(entry, "value")?;
    let at: u64 = field(entry, "at")?.parse().ok()?;
    let n: u64 = field(entry, "n")?.parse().ok()?;
    let change = match field(entry, "kind")?.as_str() {
        "token" => Change::RevokeToken(parse_digest_hex(&value)?, (at > 0).then_some(at)),
        "jti" => Change::RevokeJti(value, (at > 0).then_some(at)),
        "subject" => Change::RevokeSubject {
            subject: value,
            revoked_at_ms: at,
            epoch: Some(n),
        },
        "policy" => Change::BumpPolicy { version: Some(n) },
        _ => return None,
    };
    Some((seq, change))
}

/// A subject's snapshot value: `epoch:revoked_at_ms:seq`.
fn decode_subject(subject: &str, value: &str) -> Option<(u64, Change)> {
    let mut parts = value.split(':').map(str::parse::<u64>);
    let (Some(Ok(epoch)), Some(Ok(at)), Some(Ok(seq))) = (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((
        seq,
        Change::RevokeSubject {
            subject: subject.to_owned(),
            revoked_at_ms: at,
            epoch: Some(epoch),
        },
    ))
}

/// Applies a change to this instance: the revocation state, then its cache effects.
pub fn apply(service: &CheckService, change: &Change, seq: Option<u64>) -> Applied {
    let applied = service.versions.apply(change, seq);
    if applied.new {
        match change {
            Change::RevokeToken(key, _) => service.introspector.invalidate(key),
            Change::BumpPolicy { .. } => service.introspector.invalidate_all(),
            Change::RevokeJti(..) | Change::RevokeSubject { .. } => {}
        }
    }
    applied
}

/// Records a change made through this instance's admin API: published to every instance
/// when there is a shared tier, applied here at once either way.
pub async fn record(service: &CheckService, change: Change) -> (Applied, Delivery) {
    let Some(shared) = &service.shared else {
        return (apply(service, &change, None), Delivery::Local);
    };
    match shared.publish_one(&change).await {
        Ok((seq, n)) => {
            let change = with_shared_count(change, n);
            (apply(service, &change, Some(seq)), Delivery::Published)
        }
        Err(e) => {
            shared.error("publish", &e);
            let applied = apply(service, &change, None);
            let pending = {
                let mut outbox = lock(&shared.outbox);
                outbox.push(change);
                outbox.len()
            };
            shared
                .metrics
                .set_gauge("authz_shared_outbox", &[], pending as f64);
            (applied, Delivery::Pending)
        }
    }
}

impl Shared {
    /// Sets up the shared tier (no connection yet: [`run`] connects, and keeps reconnecting).
    pub fn new(
        config: RedisConfig,
        origin: String,
        versions: Arc<Versions>,
        metrics: Arc<Metrics>,
    ) -> Result<Shared, RedisError> {
        let client = if config.tls_ca.is_some() || config.tls_client.is_some() {
            redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: config.tls_client.as_ref().map(|(cert, key)| {
                        redis::ClientTlsConfig {
                            client_cert: cert.clone(),
                            client_key: key.clone(),
                        }
                    }),
                    root_cert: config.tls_ca.clone(),
                },
            )?
        } else {
            // `rediss://` without a CA file checks against the system roots.
            redis::Client::open(config.url.as_str())?
        };
        let enc_key = derive_key(&config.secret, b"authz shared cache encryption v1");
        Ok(Shared {
            keys: Keys::new(&config.key_prefix),
            mac_key: derive_key(&config.secret, b"authz shared cache key v1"),
            cipher: ChaCha20Poly1305::new(&enc_key.into()),
            config,
            client,
            manager: RwLock::new(None),
            confirmed_at_ms: AtomicU64::new(0),
            outbox: Mutex::new(Vec::new()),
            origin,
            publish: redis::Script::new(PUBLISH_LUA),
            floor: redis::Script::new(FLOOR_LUA),
            versions,
            metrics,
        })
    }

    /// Whether this instance's revocation state is known to be current.
    pub fn confirmed(&self) -> bool {
        let at = self.confirmed_at_ms.load(Ordering::Relaxed);
        at > 0 && now_ms().saturating_sub(at) <= self.config.max_unconfirmed_ms
    }

    /// Whether introspection results are shared.
    pub fn caches_introspection(&self) -> bool {
        self.config.shared_cache
    }

    /// Changes recorded here that Redis has not seen yet.
    pub fn pending(&self) -> usize {
        lock(&self.outbox).len()
    }

    fn confirm(&self) {
        self.confirmed_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn error(&self, op: &'static str, e: &dyn std::fmt::Display) {
        self.metrics.inc("authz_shared_errors_total", &[("op", op)]);
        eprintln!(
            "{}",
            json!({"msg": "shared_tier_error", "op": op, "error": e.to_string()})
        );
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a Redis operation within `budget`; errors and timeouts become text for the log.
    async fn with_timeout<T>(
        budget: Duration,
        op: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(budget, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Publishes a change; one retry, since the first command on a connection Redis dropped
    /// fails while the manager reconnects.
    async fn publish_one(&self, change: &Change) -> Result<(u64, u64), String> {
        match self.publish_once(change).await {
            Ok(v) => Ok(v),
            Err(_) => self.publish_once(change).await,
        }
    }

    async fn publish_once(&self, change: &Change) -> Result<(u64, u64), String> {
        let mut conn = self.connection().ok_or("not connected")?;
        let (kind, value, at) = encode(change);
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .key(&self.keys.seq)
            .key(&self.keys.events)
            .key(&self.keys.subjects)
            .key(&self.keys.policy)
            .arg(kind)
            .arg(value)
            .arg(at)
            .arg(self.config.stream_max_len)
            .arg(&self.origin);
        // Publishing is an admin action, not on the check path: allow more than op_timeout.
        Shared::with_timeout(
            self.config.op_timeout.max(Duration::from_secs(1)),
            invocation.invoke_async::<(u64, u64)>(&mut conn),
        )
        .await
    }

    fn cache_key(&self, key: &TokenKey) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        mac.update(key);
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        format!(
            "{}{}:{}",
            self.keys.cache,
            self.versions.policy_version(),
            digest_hex(&tag)
        )
    }

    fn seal(&self, redis_key: &str, entry: &Cached) -> Option<Vec<u8>> {
        let plain = serde_json::to_vec(&json!({
            "raw": entry.result.raw,
            "fetched_at_ms": entry.fetched_at_ms,
            "ttl_ms": entry.ttl_ms,
        }))
        .ok()?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok()?;
        Some([nonce.as_slice(), &sealed].concat())
    }

    fn open(&self, redis_key: &str, bytes: &[u8]) -> Option<Cached> {
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: redis_key.as_bytes(),
                },
            )
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&plain).ok()?;
        Some(Cached {
            result: Introspection::from_value(v.get("raw")?.clone()).ok()?,
            fetched_at_ms: v.get("fetched_at_ms")?.as_u64()?,
            ttl_ms: v.get("ttl_ms")?.as_u64()?,
        })
    }

    /// A shared cached result for the token, if one is there and still alive.
    pub async fn cache_get(&self, key: &TokenKey) -> Option<Cached> {
        let mut conn = self.connection()?;
        let redis_key = self.cache_key(key);
        let got = Shared::with_timeout(
            self.config.op_timeout,
            redis::cmd("GET")
                .arg(&redis_key)
                .query_async::<Option<Vec<u8>>>(&mut conn),
        )
        .await;
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "miss")]);
                return None;
            }
            Err(e) => {
                self.error("cache_get", &e);
                return None;
            }
        };
        match self.open(&redis_key, &bytes) {
            Some(entry) if entry.fetched_at_ms + entry.ttl_ms > now_ms() => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "hit")]);
                Some(entry)
            }
            Some(_) => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "expired")]);
                None
            }
            None => {
                self.metrics
                    .inc("authz_shared_cache_total", &[("result", "unreadable")]);
                None
            }
        }
    }

    /// Stores a result for the other instances, in the background.
    pub fn cache_put(self: &Arc<Self>, key: TokenKey, entry: Arc<Cached>) {
        let remaining = (entry.fetched_at_ms + entry.ttl_ms).saturating_sub(now_ms());
        if remaining == 0 || !entry.result.raw.contains_key("active") {
            return;
        }
        let Some(mut conn) = self.connection() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let redis_key = this.cache_key(&key);
            let Some(sealed) = this.seal(&redis_key, &entry) else {
                return;
            };
            let put = Shared::with_timeout(
                this.config.op_timeout,
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(sealed)
                    .arg("PX")
                    .arg(remaining)
                    .query_async::<()>(&mut conn),
            )
            .await;
            if let Err(e) = put {
                this.error("cache_put", &e);
            }
        });
    }

    async fn ensure_manager(&self) -> Result<(), RedisError> {
        if self.connection().is_some() {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.op_timeout.max(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = Some(manager);
        Ok(())
    }

    async fn reader(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(self.config.block + Duration::from_secs(2));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn apply_entries(&self, service: &CheckService, entries: &[StreamId], cursor: &mut Cursor) {
        for entry in entries {
            match decode(entry) {
                Some((seq, change)) => {
                    let (kind, _, _) = encode(&change);
                    apply(service, &change, Some(seq));
                    self.metrics
                        .inc("authz_shared_events_total", &[("kind", kind)]);
                    self.versions.advance_to(seq);
                    cursor.last_seq = cursor.last_seq.max(seq);
                }
                None => self.error("decode", &format!("unreadable stream entry {}", entry.id)),
            }
        }
    }

    /// Loads the snapshot, catches up on the stream, republishes after a data loss, and
    /// flushes the outbox.
    async fn resync(
        &self,
        service: &CheckService,
        conn: &mut MultiplexedConnection,
        cursor: &mut Cursor,
    ) -> Result<(), RedisError> {
        let _: Option<String> = redis::cmd("SET")
            .arg(&self.keys.incarnation)
            .arg(random_incarnation())
            .arg("NX")
            .query_async(conn)
            .await?;
        let incarnation: String = redis::cmd("GET")
            .arg(&self.keys.incarnation)
            .query_async(conn)
            .await?;
        let remote_seq: Option<u64> = redis::cmd("GET")
            .arg(&self.keys.seq)
            .query_async(conn)
            .await?;
        let ours = self.versions.change_version();
        let lost = cursor
            .incarnation
            .as_ref()
            .is_some_and(|i| *i != incarnation)
            || remote_seq.unwrap_or(0) < ours;
        if lost {
            self.metrics
                .inc("authz_shared_resyncs_total", &[("reason", "store_lost")]);
            eprintln!(
                "{}",
                json!({"msg": "shared_store_lost", "our_version": ours, "store_version": remote_seq})
            );
            let _: u64 = self
                .floor
                .key(&self.keys.seq)
                .arg(ours)
                .invoke_async(conn)
                .await?;
            lock(&self.outbox).extend(self.versions.export());
            cursor.last_seq = 0;
        } else {
            self.metrics
                .inc("authz_shared_resyncs_total", &[("reason", "connect")]);
        }
        self.versions.set_incarnation(&incarnation);
        cursor.incarnation = Some(incarnation);

        let policy: HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(&self.keys.policy)
            .query_async(conn)
            .await?;
        if let (Some(version), Some(seq)) = (policy.get("version"), policy.get("seq")) {
            apply(
                service,
                &Change::BumpPolicy {
                    version: Some(*version),
                },
                Some(*seq),
            );
        }
        let subjects: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.subjects)
            .query_async(conn)
            .await?;
        for (subject, value) in &subjects {
            if let Some((seq, change)) = decode_subject(subject, value) {
                apply(service, &change, Some(seq));
            }
        }
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.keys.events)
                .arg(format!("({}-1", cursor.last_seq))
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            self.apply_entries(service, &page.ids, cursor);
            if page.ids.len() < 1000 {
                break;
            }
        }
        self.flush_outbox(service).await;
        self.confirm();
        Ok(())
    }

    /// Publishes what was recorded while Redis could not take it, in order; stops at the
    /// first failure and keeps the rest.
    async fn flush_outbox(&self, service: &CheckService) {
        let outbox: Vec<Change> = std::mem::take(&mut *lock(&self.outbox));
        let mut unsent = Vec::new();
        for (i, change) in outbox.iter().enumerate() {
            match self.publish_one(change).await {
                Ok((seq, n)) => {
                    apply(service, &with_shared_count(change.clone(), n), Some(seq));
                }
                Err(e) => {
                    self.error("publish", &e);
                    unsent.extend(outbox[i..].iter().cloned());
                    break;
                }
            }
        }
        let left = {
            let mut outbox = lock(&self.outbox);
            unsent.append(&mut outbox);
            *outbox = unsent;
            outbox.len()
        };
        self.metrics
            .set_gauge("authz_shared_outbox", &[], left as f64);
    }

    /// One connected session: resync, then follow the stream until an error.
    async fn session(&self, service: &CheckService, cursor: &mut Cursor) -> Result<(), RedisError> {
        let mut conn = self.reader().await?;
        self.ensure_manager().await?;
        self.resync(service, &mut conn, cursor).await?;
        eprintln!(
            "{}",
            json!({"msg": "shared_tier_synced", "version": self.versions.change_version(), "policy_version": self.versions.policy_version()})
        );
        loop {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(self.config.block.as_millis() as u64)
                .arg("COUNT")
                .arg(1000)
                .arg("STREAMS")
                .arg(&self.keys.events)
                .arg(format!("{}-1", cursor.last_seq))
                .query_async(&mut conn)
                .await?;
            self.confirm();
            if let Some(reply) = reply {
                for key in &reply.keys {
                    self.apply_entries(service, &key.ids, cursor);
                }
            }
            if self.pending() > 0 {
                self.flush_outbox(service).await;
            }
        }
    }
}

/// Keeps the instance in sync with the shared tier until the process ends: connects,
/// resynchronises, follows the stream, and starts over (with backoff) after any error.
pub async fn run(service: Arc<CheckService>) {
    let Some(shared) = service.shared.clone() else {
        return;
    };
    let mut cursor = Cursor::default();
    let mut backoff = FIRST_RECONNECT;
    loop {
        let started_ms = now_ms();
        let result = shared.session(&service, &mut cursor).await;
        // Whether this session ever confirmed our state: read before the reset below (reading
        // it after always said no, so the backoff never reset and every later Redis blip cost
        // seconds of fail-closed 503s).
        let session_confirmed = shared.confirmed_at_ms.load(Ordering::Relaxed) >= started_ms;
        shared.confirmed_at_ms.store(0, Ordering::Relaxed);
        if let Err(e) = result {
            shared.error("session", &e);
        }
        backoff = next_reconnect_delay(backoff, session_confirmed);
        tokio::time::sleep(backoff).await;
    }
}

/// First delay before reconnecting after a healthy session ends.
const FIRST_RECONNECT: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
const MAX_RECONNECT: Duration = Duration::from_secs(2);

/// The delay before the next session: short after a session that confirmed our state (a
/// blip), doubling while sessions keep failing before they confirm anything.
fn next_reconnect_delay(previous: Duration, session_confirmed: bool) -> Duration {
    if session_confirmed {
        FIRST_RECONNECT
    } else {
        (previous * 2).min(MAX_RECONNECT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_resets_after_a_session_that_confirmed() {
        let mut delay = FIRST_RECONNECT;
        for _ in 0..10 {
            delay = next_reconnect_delay(delay, false);
        }
        assert_eq!(delay, MAX_RECONNECT, "failing sessions back off to the cap");
        assert_eq!(
            next_reconnect_delay(delay, true),
            FIRST_RECONNECT,
            "a healthy session that ends (a Redis blip) reconnects quickly"
        );
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        RedisValue::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn stream_entries_decode_to_changes() {
        let hash = "cd".repeat(32);
        let e = entry(
            "41-1",
            &[("kind", "token"), ("value", &hash), ("at", "0"), ("n", "0")],
        );
        assert_eq!(
            decode(&e),
            Some((41, Change::RevokeToken([0xcd; 32], None)))
        );
        let s = entry(
            "42-1",
            &[
                ("kind", "subject"),
                ("value", "alice"),
                ("at", "1700"),
                ("n", "3"),
            ],
        );
        assert_eq!(
            decode(&s),
            Some((
                42,
                Change::RevokeSubject {
                    subject: "alice".into(),
                    revoked_at_ms: 1700,
                    epoch: Some(3)
                }
            ))
        );
        let p = entry(
            "43-1",
            &[("kind", "policy"), ("value", ""), ("at", "0"), ("n", "7")],
        );
        assert_eq!(
            decode(&p),
            Some((43, Change::BumpPolicy { version: Some(7) }))
        );
        assert_eq!(
            decode(&entry(
                "44-1",
                &[("kind", "token"), ("value", "zz"), ("at", "0"), ("n", "0")]
            )),
            None
        );
        assert_eq!(decode_subject("bob", "2:900:17").map(|(s, _)| s), Some(17));
        assert_eq!(decode_subject("bob", "2:900"), None);
    }

    fn shared() -> Shared {
        let config = RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            tls_ca: None,
            tls_client: None,
            secret: "s".repeat(32),
            key_prefix: "t:".into(),
            op_timeout: Duration::from_millis(50),
            block: Duration::from_millis(500),
            max_unconfirmed_ms: 1_500,
            stream_max_len: 1_000,
            shared_cache: true,
        };
        Shared::new(
            config,
            "test".into(),
            Arc::new(Versions::shared()),
            Arc::new(Metrics::default()),
        )
        .unwrap()
    }

    #[test]
    fn cache_entries_are_sealed_and_bound_to_their_key() {
        let s = shared();
        let token_key = [1u8; 32];
        let redis_key = s.cache_key(&token_key);
        assert!(redis_key.starts_with("t:intro:0:"));
        assert!(
            !redis_key.contains(&digest_hex(&token_key)),
            "the token hash is not the key"
        );
        let result =
            Introspection::parse(br#"{"active":true,"sub":"alice","scope":"read"}"#).unwrap();
        let entry = Cached {
            result,
            fetched_at_ms: 10,
            ttl_ms: 20,
        };
        let sealed = s.seal(&redis_key, &entry).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("alice"));
        let opened = s.open(&redis_key, &sealed).unwrap();
        assert_eq!(opened.result.subject.as_deref(), Some("alice"));
        assert_eq!((opened.fetched_at_ms, opened.ttl_ms), (10, 20));
        let other_key = s.cache_key(&[2u8; 32]);
        assert!(
            s.open(&other_key, &sealed).is_none(),
            "moved entries do not open"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open(&redis_key, &tampered).is_none());
    }

    #[test]
    fn unconfirmed_until_a_stream_read() {
        let s = shared();
        assert!(!s.confirmed());
        s.confirm();
        assert!(s.confirmed());
    }
}
