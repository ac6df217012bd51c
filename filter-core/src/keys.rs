//! One worker's key sources: per provider its current key set (inline, or fetched and shared
//! by the workers of one proxy), and for fetched ones the shared-data records through which
//! those workers agree on who fetches (a lease on a status record), where the keys are (with
//! discovery) and the keys themselves; the fetches this worker has in flight, keys fetches
//! that follow a metadata answer, fetches whose request went away, and `kid`s a refetch just
//! proved absent. Fetch timing comes from `authz_core::jwks_refresh`. A refetch an operator
//! demands (the `jwks_refetch` incident switch) is written into the shared status record; until
//! a fetch leased after it succeeds, the worker holds its keys back (verifies nothing with
//! them) however it learns of newer ones.
//!
//! What it does not do: decide or settle requests (the worker does, when a fetch concludes),
//! read a clock (every call carries `now`), or own the host (each call that reads or writes
//! shared data, logs or counts is given it).

use crate::commands::{CallId, FetchOrder, FetchStage};
use crate::host::{Host, LogLevel, SharedWrite};
use crate::metrics::Counter;
use authz_core::config::{JwksSource, RemoteJwks};
use authz_core::jwks_refresh::{next_fetch, FetchReason, FetchStatus, KeyMiss, RefreshRules};
use authz_core::KeySet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

struct RemoteSource {
    config: RemoteJwks,
    rules: RefreshRules,
    keys_key: String,
    status_key: String,
    /// With discovery: where the metadata said the keys are (`authority\npath`), shared by
    /// the workers.
    location_key: String,
    seen_version: u64,
}

/// A fetch this worker asked for.
struct InFlight {
    provider: usize,
    cluster: String,
    stage: FetchStage,
    reason: FetchReason,
    /// The refetch demand its success meets ([`FetchOrder::meets_refetch_at_ms`]).
    meets_refetch_at_ms: u64,
}

struct KeySource {
    keys: Option<Arc<KeySet>>,
    remote: Option<RemoteSource>,
    /// The provider's issuer (a discovery document must name it).
    issuer: String,
    /// The latest refetch demanded of this source (the switch's time; 0: none).
    demanded_at_ms: u64,
    /// The keys held are from before a demanded refetch that has not been met: not used.
    held_back: bool,
}

/// At most this many absent `kid`s are remembered (junk with random ones cannot grow it).
const MAX_ABSENT_KIDS: usize = 1_024;

/// The key sources of one worker.
pub(crate) struct KeySources {
    sources: Vec<KeySource>,
    /// The fetches out, by call.
    in_flight: HashMap<CallId, InFlight>,
    /// Keys fetches that follow a metadata fetch, for the host to dispatch.
    follow_ups: Vec<FetchOrder>,
    /// Providers whose fetch was abandoned: fetched again on the next wake-up.
    orphaned: Vec<usize>,
    /// Bumped whenever any key set changes; cached verifications of older keys are dropped.
    generation: u64,
    /// `kid`s a refetch just proved absent, per provider, until when (ms): a token naming one
    /// is refused at once, without taking the refetch a real rotation may need.
    absent_kids: HashMap<(usize, String), u64>,
}

impl KeySources {
    /// The sources `jwks_sources` configure (`issuer_of(i)`: provider `i`'s issuer), creating
    /// each fetched source's status record in `host` when it is missing.
    pub fn new(
        jwks_sources: &[JwksSource],
        issuer_of: impl Fn(usize) -> String,
        host: &impl Host,
    ) -> KeySources {
        let policy_sources = jwks_sources;
        let sources: Vec<KeySource> = policy_sources
            .iter()
            .enumerate()
            .map(|(i, source)| (source, issuer_of(i)))
            .map(|(source, issuer)| match source {
                JwksSource::Inline(set) => KeySource {
                    keys: Some(Arc::new(set.clone())),
                    remote: None,
                    issuer,
                    demanded_at_ms: 0,
                    held_back: false,
                },
                JwksSource::Remote(config) => {
                    // One record set per cluster and path (the metadata path with discovery:
                    // several issuers may share a host).
                    let id = format!(
                        "{}{}",
                        config.cluster,
                        config.discovery_path.as_deref().unwrap_or(&config.path)
                    );
                    KeySource {
                        keys: None,
                        remote: Some(RemoteSource {
                            rules: RefreshRules {
                                refresh_interval_ms: config.refresh_interval_seconds * 1000,
                                min_refetch_interval_ms: config.min_refetch_interval_seconds * 1000,
                                // With discovery, long enough for a metadata fetch and a keys
                                // fetch.
                                lease_ms: if config.discovery_path.is_some() {
                                    2
                                } else {
                                    1
                                } * config.timeout_ms
                                    + 1000,
                            },
                            keys_key: format!("jwt_authz/v1/jwks/{id}"),
                            status_key: format!("jwt_authz/v1/status/{id}"),
                            location_key: format!("jwt_authz/v1/jwks_location/{id}"),
                            config: config.clone(),
                            seen_version: 0,
                        }),
                        issuer,
                        demanded_at_ms: 0,
                        held_back: false,
                    }
                }
            })
            .collect();
        // A lease is a compare-and-swap on the status record, and a host's compare-and-swap
        // only protects a record that exists (Envoy writes an absent key whatever the token):
        // create each record at configuration, which Envoy runs on its main thread before any
        // worker starts fetching.
        for source in &sources {
            if let Some(remote) = &source.remote {
                if host.shared_get(&remote.status_key).0.is_none() {
                    let empty = FetchStatus::decode(None).encode();
                    let _ = host.shared_set(&remote.status_key, &empty, None);
                }
            }
        }

        KeySources {
            sources,
            in_flight: HashMap::new(),
            follow_ups: Vec::new(),
            orphaned: Vec::new(),
            generation: 0,
            absent_kids: HashMap::new(),
        }
    }

    /// Provider `provider`'s keys, when it has any it may use.
    pub fn keys(&self, provider: usize) -> Option<&KeySet> {
        self.sources
            .get(provider)
            .filter(|s| !s.held_back)
            .and_then(|s| s.keys.as_deref())
    }

    /// Every provider's key set as it is now, shared (for a verification made elsewhere).
    pub fn snapshot(&self) -> Vec<Option<Arc<KeySet>>> {
        self.sources
            .iter()
            .map(|s| s.keys.clone().filter(|_| !s.held_back))
            .collect()
    }

    /// An operator demanded that every fetched key set be fetched again (at `at_ms`, the
    /// switch's time): the demand goes into each source's shared status (a fetch is due at
    /// once), and a source whose demand no fetch has met yet is held back. Returns how many.
    pub fn demand_refetch(&mut self, host: &impl Host, at_ms: u64) -> usize {
        let mut held_back = 0;
        for provider in 0..self.sources.len() {
            let Some(source) = self.sources.get_mut(provider) else {
                continue;
            };
            if source.remote.is_none() {
                continue;
            }
            source.demanded_at_ms = source.demanded_at_ms.max(at_ms);
            let status = self
                .update_status(host, provider, |s| s.demand_refetch(at_ms))
                .or_else(|| self.read_status(host, provider))
                .unwrap_or_default();
            self.hold_back_unless_met(provider, &status);
            if self.sources.get(provider).is_some_and(|s| s.held_back) {
                held_back += 1;
            }
        }
        held_back
    }

    /// Holds `provider`'s keys back while a refetch demanded of it (by the switch this worker
    /// read, or by another worker in the shared record) has not been met (`status`: that
    /// record, read now), and lets them be used again once one has.
    fn hold_back_unless_met(&mut self, provider: usize, status: &FetchStatus) {
        let Some(source) = self.sources.get_mut(provider) else {
            return;
        };
        let held = source.demanded_at_ms.max(status.refetch_wanted_at_ms) > status.refetched_at_ms;
        if held != source.held_back {
            source.held_back = held;
            // Verifications cached under the keys as they were go either way.
            self.generation += 1;
        }
    }

    /// Bumped whenever any key set changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a refetch just proved `kid` absent from `provider`'s keys.
    pub fn proven_absent(&self, provider: usize, kid: &str, now_ms: u64) -> bool {
        self.absent_kids
            .get(&(provider, kid.to_owned()))
            .is_some_and(|until| now_ms < *until)
    }

    /// Whether any key source is fetched (and so looked after on wake-ups).
    pub fn has_remote(&self) -> bool {
        self.sources.iter().any(|s| s.remote.is_some())
    }

    /// A fetch's answer can no longer arrive (the request it was made from went away). The
    /// fetch belongs to the worker, not to that request: its lease is released without
    /// counting a failure, and the next wake-up fetches again.
    pub fn abandoned(&mut self, host: &impl Host, call: CallId) {
        let Some(fetch) = self.in_flight.remove(&call) else {
            return;
        };
        self.update_status(host, fetch.provider, FetchStatus::released);
        if !self.orphaned.contains(&fetch.provider) {
            self.orphaned.push(fetch.provider);
        }
    }

    /// Periodic work: pick up keys other workers stored, and the fetches now due (leases won),
    /// with the keys fetches that follow metadata answers.
    pub fn on_tick(&mut self, host: &impl Host, now_ms: u64) -> Vec<FetchOrder> {
        let mut orders = Vec::new();
        let orphaned = std::mem::take(&mut self.orphaned);
        for provider in 0..self.sources.len() {
            if self
                .sources
                .get(provider)
                .is_none_or(|s| s.remote.is_none())
            {
                continue;
            }
            self.sync_keys(host, provider, now_ms);
            let order = if orphaned.contains(&provider) {
                self.try_lease_again(host, provider, now_ms)
            } else {
                self.try_lease(host, provider, now_ms, None)
            };
            if let Some(order) = order {
                orders.push(order);
            }
        }
        orders.append(&mut self.follow_ups);
        orders
    }

    pub fn read_status(&self, host: &impl Host, provider: usize) -> Option<FetchStatus> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        Some(FetchStatus::decode(
            host.shared_get(&remote.status_key).0.as_deref(),
        ))
    }

    /// Loads keys another worker stored, if they are newer than ours. True if keys changed.
    pub fn sync_keys(&mut self, host: &impl Host, provider: usize, now_ms: u64) -> bool {
        let Some(mut status) = self.read_status(host, provider) else {
            return false;
        };
        let demanded = self.sources.get(provider).map_or(0, |s| s.demanded_at_ms);
        if demanded > status.refetch_wanted_at_ms {
            // Our demand did not reach the record (a failed write): again, so a fetch is due.
            if let Some(written) =
                self.update_status(host, provider, |s| s.demand_refetch(demanded))
            {
                status = written;
            }
        }
        let was_held = self.sources.get(provider).is_some_and(|s| s.held_back);
        self.hold_back_unless_met(provider, &status);
        let released = was_held && self.sources.get(provider).is_some_and(|s| !s.held_back);
        let Some(source) = self.sources.get_mut(provider) else {
            return false;
        };
        let Some(remote) = source.remote.as_mut() else {
            return false;
        };
        if status.keys_version <= remote.seen_version {
            return released;
        }
        let Some(document) = host.shared_get(&remote.keys_key).0 else {
            return false;
        };
        match KeySet::from_jwks_json(&document) {
            Ok(set) => {
                remote.seen_version = status.keys_version;
                self.install_keys(provider, set, now_ms);
                true
            }
            Err(e) => {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "jwt_authz shared jwks for {} unreadable: {e}",
                        remote.config.cluster
                    ),
                );
                false
            }
        }
    }

    /// Wins the fetch lease for `provider` if a fetch is due. The caller must dispatch the
    /// order and report back with [`Worker::fetch_started`] or [`Worker::fetch_not_started`].
    pub fn try_lease(
        &self,
        host: &impl Host,
        provider: usize,
        now_ms: u64,
        miss: Option<KeyMiss>,
    ) -> Option<FetchOrder> {
        let rules = self.sources.get(provider)?.remote.as_ref()?.rules;
        self.lease_with(host, provider, now_ms, |status| {
            next_fetch(&rules, status, now_ms, miss)
        })
    }

    /// Re-dispatches a fetch whose request went away, unless another worker holds the lease
    /// now (a scheduled reason if one is due, else a retry).
    fn try_lease_again(
        &self,
        host: &impl Host,
        provider: usize,
        now_ms: u64,
    ) -> Option<FetchOrder> {
        let rules = self.sources.get(provider)?.remote.as_ref()?.rules;
        self.lease_with(host, provider, now_ms, |status| {
            (!status.fetch_in_flight(now_ms))
                .then(|| next_fetch(&rules, status, now_ms, None).unwrap_or(FetchReason::Retry))
        })
    }

    /// Takes the shared lease (compare-and-swap) when `reason_of` says a fetch is due.
    fn lease_with(
        &self,
        host: &impl Host,
        provider: usize,
        now_ms: u64,
        reason_of: impl FnOnce(&FetchStatus) -> Option<FetchReason>,
    ) -> Option<FetchOrder> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        let (bytes, cas) = host.shared_get(&remote.status_key);
        let status = FetchStatus::decode(bytes.as_deref());
        let reason = reason_of(&status)?;
        let leased = status.leased(&remote.rules, now_ms, reason);
        let written = host.shared_set(&remote.status_key, &leased.encode(), cas);
        if written != SharedWrite::Written {
            return None;
        }
        let meets = leased.refetch_wanted_at_ms;
        // With discovery, scheduled fetches read the metadata again first; a token the keys
        // fail refetches the keys where the metadata last said they are.
        let known = self.keys_location(host, provider);
        let metadata_path = remote.config.discovery_path.as_ref();
        Some(match (metadata_path, known) {
            (Some(path), None) => {
                self.order(provider, FetchStage::Metadata, (reason, meets), None, path)
            }
            (Some(path), Some(_)) if reason != FetchReason::UnknownKid => {
                self.order(provider, FetchStage::Metadata, (reason, meets), None, path)
            }
            (_, Some((authority, path))) => self.order(
                provider,
                FetchStage::Keys,
                (reason, meets),
                Some(authority),
                &path,
            ),
            (None, None) => return None,
        })
    }

    fn order(
        &self,
        provider: usize,
        stage: FetchStage,
        (reason, meets_refetch_at_ms): (FetchReason, u64),
        authority: Option<String>,
        path: &str,
    ) -> FetchOrder {
        let config = self
            .sources
            .get(provider)
            .and_then(|s| s.remote.as_ref())
            .map(|r| &r.config);
        FetchOrder {
            provider,
            stage,
            cluster: config.map(|c| c.cluster.clone()).unwrap_or_default(),
            authority: authority
                .or_else(|| config.map(|c| c.authority.clone()))
                .unwrap_or_default(),
            path: path.to_owned(),
            timeout: Duration::from_millis(config.map(|c| c.timeout_ms).unwrap_or(1000)),
            reason,
            meets_refetch_at_ms,
        }
    }

    /// Where `provider`'s keys are fetched from: the configured path, or with discovery where
    /// the metadata last said (none before the first metadata fetch).
    fn keys_location(&self, host: &impl Host, provider: usize) -> Option<(String, String)> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        if remote.config.discovery_path.is_none() {
            return Some((remote.config.authority.clone(), remote.config.path.clone()));
        }
        let bytes = host.shared_get(&remote.location_key).0?;
        let text = String::from_utf8(bytes).ok()?;
        let (authority, path) = text.split_once('\n')?;
        Some((authority.to_owned(), path.to_owned()))
    }

    /// Keys fetches that follow metadata fetches, to make now.
    pub fn take_follow_ups(&mut self) -> Vec<FetchOrder> {
        std::mem::take(&mut self.follow_ups)
    }

    /// A metadata answer: where the keys are. On success the keys fetch follows at once under
    /// the same lease; on failure the last known location serves, if there is one.
    fn on_metadata_response(
        &mut self,
        host: &impl Host,
        fetch: &InFlight,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> bool {
        let provider = fetch.provider;
        let Some(source) = self.sources.get(provider) else {
            return false;
        };
        let Some(remote) = source.remote.as_ref() else {
            return false;
        };
        let issuer = source.issuer.clone();
        let authority = remote.config.authority.clone();
        let located = match (status, body) {
            (Some(200), Some(body)) => authz_core::discovery::parse(&body, &issuer)
                .map_err(|e| e.to_string())
                .and_then(|m| m.jwks_uri.ok_or_else(|| "no jwks_uri".to_owned()))
                .and_then(|uri| {
                    let (host, path) = authz_core::discovery::authority_and_path(&uri)
                        .ok_or_else(|| format!("jwks_uri {uri} is not an http(s) URL"))?;
                    if host != authority {
                        return Err(format!(
                            "jwks_uri {uri} is not on the issuer's host {authority}: give jwks.remote.path and a cluster for its host"
                        ));
                    }
                    Ok(path.to_owned())
                }),
            (Some(code), _) => Err(format!("status {code}")),
            (None, _) => Err("no response".into()),
        };
        let cluster = remote.config.cluster.clone();
        let location_key = remote.location_key.clone();
        let lease_ms = remote.rules.lease_ms;
        match located {
            Ok(path) => {
                let record = format!("{authority}\n{path}");
                let _ = host.shared_set(&location_key, record.as_bytes(), None);
                host.log(
                    LogLevel::Debug,
                    &format!("jwt_authz metadata from {cluster}: keys at {path}"),
                );
            }
            Err(why) => {
                host.count(Counter::JwksFetchFailed);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "jwt_authz metadata for {issuer} from cluster {cluster} failed: {why}"
                    ),
                );
            }
        }
        match self.keys_location(host, provider) {
            Some((authority, path)) => {
                self.update_status(host, provider, |s| FetchStatus {
                    lease_until_ms: now_ms + lease_ms,
                    ..*s
                });
                let order = self.order(
                    provider,
                    FetchStage::Keys,
                    (fetch.reason, fetch.meets_refetch_at_ms),
                    Some(authority),
                    &path,
                );
                self.follow_ups.push(order);
                false
            }
            None => {
                self.update_status(host, provider, FetchStatus::failed);
                true
            }
        }
    }

    /// Records a fetch asked for as `call`.
    pub fn fetch_started(&mut self, host: &impl Host, call: CallId, order: &FetchOrder) {
        host.log(
            LogLevel::Debug,
            &format!(
                "jwt_authz jwks fetch from cluster {} reason={}",
                order.cluster,
                order.reason.as_str()
            ),
        );
        self.in_flight.insert(
            call,
            InFlight {
                provider: order.provider,
                cluster: order.cluster.clone(),
                stage: order.stage,
                reason: order.reason,
                meets_refetch_at_ms: order.meets_refetch_at_ms,
            },
        );
    }

    /// The host could not make fetch `call`: a failed fetch.
    pub fn fetch_not_started(&mut self, host: &impl Host, call: CallId) {
        let Some(fetch) = self.in_flight.remove(&call) else {
            return;
        };
        host.log(
            LogLevel::Warn,
            &format!(
                "jwt_authz jwks fetch could not be dispatched to cluster {}",
                fetch.cluster
            ),
        );
        host.count(Counter::JwksFetchFailed);
        self.update_status(host, fetch.provider, FetchStatus::failed);
    }

    fn update_status(
        &self,
        host: &impl Host,
        provider: usize,
        change: impl Fn(&FetchStatus) -> FetchStatus,
    ) -> Option<FetchStatus> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        for _ in 0..16 {
            let (bytes, cas) = host.shared_get(&remote.status_key);
            let next = change(&FetchStatus::decode(bytes.as_deref()));
            match host.shared_set(&remote.status_key, &next.encode(), cas) {
                SharedWrite::CasMismatch => continue,
                SharedWrite::Written => return Some(next),
                SharedWrite::Failed => return None,
            }
        }
        None
    }

    /// Whether `call` is one of this worker's JWKS fetches.
    pub fn owns_fetch(&self, call: CallId) -> bool {
        self.in_flight.contains_key(&call)
    }

    /// A JWKS (or metadata) fetch answered (`status` is `None` when the call itself failed):
    /// whether a fetch concluded, so waiting requests are to be decided again (not when a
    /// keys fetch follows a metadata answer, nor for a token that is not this worker's).
    pub fn on_fetch_response(
        &mut self,
        host: &impl Host,
        call: CallId,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> bool {
        let Some(fetch) = self.in_flight.remove(&call) else {
            return false;
        };
        if fetch.stage == FetchStage::Metadata {
            return self.on_metadata_response(host, &fetch, status, body, now_ms);
        }
        let provider = fetch.provider;
        let Some(keys_key) = self
            .sources
            .get(provider)
            .and_then(|s| s.remote.as_ref())
            .map(|r| r.keys_key.clone())
        else {
            return false;
        };
        let cluster = self
            .sources
            .get(provider)
            .and_then(|s| s.remote.as_ref())
            .map(|r| r.config.cluster.clone())
            .unwrap_or_default();
        let parsed = match (status, body) {
            (Some(200), Some(body)) => KeySet::from_jwks_json(&body)
                .map(|set| (set, body))
                .map_err(|e| e.to_string()),
            (Some(code), _) => Err(format!("status {code}")),
            (None, _) => Err("no response".into()),
        };
        match parsed {
            Ok((set, body)) => {
                for skipped in &set.skipped {
                    host.log(
                        LogLevel::Warn,
                        &format!("jwt_authz jwks from {cluster}: skipped {skipped}"),
                    );
                }
                let stored = host.shared_set(&keys_key, &body, None) == SharedWrite::Written;
                let version = if stored {
                    self.update_status(host, provider, |s| {
                        s.succeeded(now_ms, fetch.meets_refetch_at_ms)
                    })
                } else {
                    None
                };
                host.count(Counter::JwksFetchOk);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "jwt_authz jwks from {cluster}: {} keys loaded",
                        set.keys.len()
                    ),
                );
                if let (Some(remote), Some(status)) = (
                    self.sources
                        .get_mut(provider)
                        .and_then(|s| s.remote.as_mut()),
                    version,
                ) {
                    remote.seen_version = status.keys_version;
                }
                self.install_keys(provider, set, now_ms);
                if let Some(status) = version {
                    self.hold_back_unless_met(provider, &status);
                }
            }
            Err(why) => {
                host.count(Counter::JwksFetchFailed);
                let keeping = if self.sources.get(provider).is_some_and(|s| s.keys.is_some()) {
                    "keeping last good keys"
                } else {
                    "no keys yet"
                };
                host.log(
                    LogLevel::Warn,
                    &format!("jwt_authz jwks fetch from {cluster} failed: {why}; {keeping}"),
                );
                self.update_status(host, provider, FetchStatus::failed);
            }
        }
        true
    }

    /// Uses `set` as `provider`'s keys from now on. A `kid` the old set had and this one lacks
    /// was retired: its tokens are refused at once (401) rather than asked to retry.
    fn install_keys(&mut self, provider: usize, set: KeySet, now_ms: u64) {
        let Some(source) = self.sources.get_mut(provider) else {
            return;
        };
        let retired: Vec<String> = source
            .keys
            .iter()
            .flat_map(|old| old.keys.iter())
            .filter_map(|k| k.kid.clone())
            .filter(|kid| !set.keys.iter().any(|k| k.kid.as_ref() == Some(kid)))
            .collect();
        source.keys = Some(Arc::new(set));
        self.generation += 1;
        for kid in retired {
            self.remember_absent(provider, &kid, now_ms);
        }
    }

    /// A refetch concluded without `kid`: tokens naming it are refused at once for the
    /// provider's `min_refetch_interval_seconds` (no refetch could be taken sooner anyway).
    pub fn remember_absent(&mut self, provider: usize, kid: &str, now_ms: u64) {
        let interval_ms = self
            .sources
            .get(provider)
            .and_then(|s| s.remote.as_ref())
            .map_or(0, |r| r.rules.min_refetch_interval_ms);
        self.absent_kids.retain(|_, until| now_ms < *until);
        if self.absent_kids.len() >= MAX_ABSENT_KIDS {
            return;
        }
        self.absent_kids
            .insert((provider, kid.to_owned()), now_ms + interval_ms);
    }
}
