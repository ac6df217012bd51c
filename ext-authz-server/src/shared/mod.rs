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
//! Parts: [`connection`] (where the primary is: one URL or Sentinel; its connections and
//! reconnection), [`events`] (the stream's wire format and the publish script), [`stream`]
//! (record, publish, resync, follow, outbox), [`own`] (own publications not read back yet),
//! [`replication`] (changes too few replicas acknowledged), [`l2`] (the encrypted shared
//! introspection cache).
//!
//! What it does not do: decide. Freshness rules, tiers and revocation checks stay in `check`
//! and `authz-core`; a Redis failure only ever removes a shortcut or fails closed. Changes it
//! reads reach the instance through [`crate::changes::ChangeSink`], so this module does not
//! know the check service.

mod cluster;
mod connection;
mod events;
mod l2;
mod link;
mod own;
mod replication;
mod sentinel;
mod stream;

pub use stream::{record, run};

use crate::clock::SharedClock;
use crate::config::RedisConfig;
use crate::lock;
use crate::metrics::Metrics;
use crate::versions::{Change, Versions};
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::ChaCha20Poly1305;
use events::{FLOOR_LUA, PUBLISH_LUA};
use hmac::{Hmac, Mac};
use redis::RedisError;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Redis key names under the configured prefix.
#[derive(Debug, Clone)]
struct Keys {
    seq: String,
    events: String,
    subjects: String,
    policy: String,
    switches: String,
    incarnation: String,
    cache: String,
    /// Written before each `WAIT`, so that the `WAIT` follows a write of its own connection
    /// (and so vouches for every earlier write to the primary: replicas acknowledge offsets).
    replication_probe: String,
}

impl Keys {
    /// The keys under `prefix`. In a cluster (`hash_tag`), the stream and its snapshot share
    /// the hash tag `{prefix}`, so they live on one slot (one node) and the publish script,
    /// which writes them all, can run there; the cache entries spread over the cluster.
    fn new(prefix: &str, hash_tag: bool) -> Keys {
        let state = if hash_tag {
            format!("{{{prefix}}}")
        } else {
            prefix.to_owned()
        };
        Keys {
            seq: format!("{state}seq"),
            events: format!("{state}events"),
            subjects: format!("{state}subjects"),
            policy: format!("{state}policy"),
            switches: format!("{state}switches"),
            incarnation: format!("{state}incarnation"),
            cache: format!("{prefix}intro:"),
            replication_probe: format!("{state}replication_probe"),
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
    /// Redis was unreachable or refused it: in effect here, published when Redis takes it
    /// (`authz_shared_outbox` counts such changes).
    Pending,
    /// In the primary, but fewer than `redis.min_replicas` replicas acknowledged it in time:
    /// every instance will apply it; published again after a reconnection (a failover could
    /// lose it).
    Unreplicated,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Local => "local",
            Delivery::Published => "published",
            Delivery::Pending => "pending",
            Delivery::Unreplicated => "unreplicated",
        }
    }
}

/// The shared tier of one server instance.
pub struct Shared {
    config: RedisConfig,
    endpoint: connection::Endpoint,
    keys: Keys,
    /// The check path's connection (outlives sessions; replaced when the primary moves).
    manager: RwLock<Option<link::Link>>,
    /// The session's connection for publications and their `WAIT` (see `replication`), with
    /// the number of the session it belongs to.
    publisher: RwLock<Option<(u64, link::Link)>>,
    /// The number of the current session (one more at every end of a session): a publication
    /// whose session ended meanwhile may have gone to a primary that is no longer one.
    session: AtomicU64,
    /// Own publications the stream reader has not read back yet (see `own`).
    unread: Mutex<own::Unread>,
    /// The primary's address the manager is connected to.
    primary_address: Mutex<String>,
    confirmed_at_ms: AtomicU64,
    /// Set once the first resync from Redis completed: before it, this instance's state may
    /// lack revocations every other instance holds.
    synced: std::sync::atomic::AtomicBool,
    outbox: Mutex<std::collections::VecDeque<Change>>,
    /// Woken when a change is kept in the outbox (the session's publishing loop waits on it).
    outbox_added: tokio::sync::Notify,
    /// Published changes too few replicas acknowledged (see `replication`).
    unreplicated: Mutex<usize>,
    mac_key: [u8; 32],
    cipher: ChaCha20Poly1305,
    origin: String,
    publish: redis::Script,
    floor: redis::Script,
    versions: Arc<Versions>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
}

fn derive_key(secret: &str, purpose: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(purpose);
    mac.finalize().into_bytes().into()
}

impl Shared {
    /// Sets up the shared tier (no connection yet: [`run`] connects, and keeps reconnecting).
    pub fn new(
        config: RedisConfig,
        origin: String,
        versions: Arc<Versions>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Result<Shared, RedisError> {
        let endpoint = if let Some(sentinel) = &config.sentinel {
            connection::Endpoint::Sentinel(Box::new(sentinel::Sentinels::new(
                sentinel,
                sentinel::ask_budget(config.max_unconfirmed_ms),
            )?))
        } else if let Some(cluster) = &config.cluster {
            connection::Endpoint::Cluster(Box::new(cluster::Cluster::new(
                cluster,
                config.op_timeout.max(Duration::from_secs(1)) + config.replica_wait,
                sentinel::ask_budget(config.max_unconfirmed_ms),
            )?))
        } else if config.tls_ca.is_some() || config.tls_client.is_some() {
            connection::Endpoint::Direct(redis::Client::build_with_tls(
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
            )?)
        } else {
            // `rediss://` without a CA file checks against the system roots.
            connection::Endpoint::Direct(redis::Client::open(config.url.as_str())?)
        };
        let enc_key = derive_key(&config.secret, b"authz shared cache encryption v1");
        Ok(Shared {
            keys: Keys::new(&config.key_prefix, config.cluster.is_some()),
            mac_key: derive_key(&config.secret, b"authz shared cache key v1"),
            cipher: ChaCha20Poly1305::new(&enc_key.into()),
            config,
            endpoint,
            manager: RwLock::new(None),
            publisher: RwLock::new(None),
            session: AtomicU64::new(0),
            unread: Mutex::new(own::Unread::default()),
            primary_address: Mutex::new(String::new()),
            confirmed_at_ms: AtomicU64::new(0),
            synced: std::sync::atomic::AtomicBool::new(false),
            outbox: Mutex::new(std::collections::VecDeque::new()),
            outbox_added: tokio::sync::Notify::new(),
            unreplicated: Mutex::new(0),
            origin,
            publish: redis::Script::new(PUBLISH_LUA),
            floor: redis::Script::new(FLOOR_LUA),
            versions,
            metrics,
            clock,
        })
    }

    /// Whether this instance's revocation state is known to be current.
    pub fn confirmed(&self) -> bool {
        let at = self.confirmed_at_ms.load(Ordering::Relaxed);
        at > 0 && self.clock.now_ms().saturating_sub(at) <= self.config.max_unconfirmed_ms
    }

    /// Whether the shared state was read from Redis at least once (a replica that just started
    /// is not ready, and does not answer the change feed, until then).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    fn mark_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Whether introspection results are shared.
    pub fn caches_introspection(&self) -> bool {
        self.config.shared_cache
    }

    /// Changes recorded here that Redis has not seen yet.
    pub fn pending(&self) -> usize {
        lock(&self.outbox).len()
    }

    /// Keeps a change applied here to publish on the next connection (as one made while Redis
    /// was away).
    pub fn keep_for_publishing(&self, change: Change) {
        lock(&self.outbox).push_back(change);
        self.outbox_added.notify_one();
    }

    /// Confirms this instance's state as current at `at_ms` (never moves the confirmation
    /// back).
    fn confirm_as_of(&self, at_ms: u64) {
        self.confirmed_at_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    fn error(&self, op: &'static str, e: &dyn std::fmt::Display) {
        self.metrics.inc("authz_shared_errors_total", &[("op", op)]);
        tracing::warn!(op, error = %e, "shared_tier_error");
    }

    /// The session's publisher connection, and the number of its session.
    fn publisher(&self) -> Option<(u64, link::Link)> {
        self.publisher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn connection(&self) -> Option<link::Link> {
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn shared() -> Shared {
        shared_with(None, Arc::new(crate::clock::SystemClock))
    }

    /// A shared tier (never connected) with `sentinel` and `clock`.
    fn shared_with(sentinel: Option<crate::config::SentinelConfig>, clock: SharedClock) -> Shared {
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
            sentinel,
            cluster: None,
            min_replicas: 0,
            replica_wait: Duration::from_millis(200),
        };
        Shared::new(
            config,
            "test".into(),
            Arc::new(Versions::shared()),
            Arc::new(Metrics::default()),
            clock,
        )
        .unwrap()
    }

    /// With Sentinel, the state is confirmed as of the older of the last read and the
    /// sentinels' last vouch for the primary: it stops being confirmed `max_unconfirmed_ms`
    /// after the last vouch, whatever was read since, and after the last read, whatever was
    /// vouched since.
    #[test]
    fn with_sentinels_the_state_is_confirmed_as_of_the_older_of_read_and_vouch() {
        let clock = crate::clock::ManualClock::new();
        let sentinel = crate::config::SentinelConfig {
            master_name: "authz".into(),
            addresses: vec!["redis://127.0.0.1:1".into()],
            password: None,
            db: 0,
        };
        let now = || crate::clock::Clock::now_ms(clock.as_ref());
        let s = shared_with(Some(sentinel), clock.clone());
        let vouched = now();
        clock.advance_ms(1_000);
        s.confirm_read(now(), vouched);
        assert!(s.confirmed(), "read 1 s after the vouch, within 1.5 s");
        clock.advance_ms(499);
        s.confirm_read(now(), vouched);
        assert!(s.confirmed());
        clock.advance_ms(2);
        s.confirm_read(now(), vouched);
        assert!(
            !s.confirmed(),
            "1.501 s after the last vouch, whatever was read"
        );

        let read = now();
        clock.advance_ms(1_501);
        s.confirm_read(read, now());
        assert!(
            !s.confirmed(),
            "1.501 s after the last read, whatever was vouched"
        );

        let plain = shared_with(None, clock.clone());
        plain.confirm_read(now(), 0);
        assert!(plain.confirmed(), "one Redis needs no vouch");
    }

    #[test]
    fn unconfirmed_until_a_stream_read() {
        let s = shared();
        assert!(!s.confirmed());
        s.confirm_read(crate::clock::Clock::now_ms(&crate::clock::SystemClock), 0);
        assert!(s.confirmed(), "one Redis: confirmed as of the read");
    }
}
