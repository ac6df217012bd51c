//! The state one proxy worker's requests share, and the rules of its local path: the policy,
//! the current key sets, the requests waiting for keys, the JWKS fetches this worker has in
//! flight, and the lease through which the workers of one proxy agree on who fetches.
//!
//! It turns events (a request, a tick, a fetch answer) into commands for the host:
//! [`FetchOrder`]s to dispatch and [`Final`] actions to apply to requests. Key-fetch timing
//! comes from `authz_core::jwks_refresh`; the shared-data records it coordinates through are
//! read and written through [`Host`]. It never applies an action itself, so a host can release
//! its borrow of the worker before making calls that may re-enter the filter.
//!
//! What it does not do: read a clock (every event carries `now`), or touch the server path
//! (`server_path` adds those rules to the same worker).

use crate::background::BackgroundChecks;
use crate::commands::{
    FetchOrder, FetchStage, Final, FinalAction, OwnedRequest, RequestStep, TickWork,
};
use crate::context::ContextSigning;
use crate::host::{Host, LogLevel, SharedWrite};
use crate::metrics::{Counter, Histogram};
use crate::read::Unreadable;
use crate::versions::KnownVersions;
use authz_core::config::{JwksSource, RemoteJwks};
use authz_core::context::Decided;
use authz_core::decision::decide_with;
use authz_core::decision_cache::{DecisionCache, TokenCache};
use authz_core::jwks_refresh::{next_fetch, FetchReason, FetchStatus, KeyMiss, RefreshRules};
use authz_core::revocations::RevocationSet;
use authz_core::status_list::StatusRefusal;
use authz_core::token_hash::TokenKeyer;
use authz_core::verify::verify;
use authz_core::{
    deny_response, Decision, DenyReason, KeySet, Policy, Tier, VerifiedToken, VerifyFailure,
};
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

/// A fetch this worker dispatched.
struct InFlight {
    provider: usize,
    /// The context whose `on_http_call_response` receives the answer.
    owner: u32,
    stage: FetchStage,
    reason: FetchReason,
}

struct KeySource {
    keys: Option<KeySet>,
    remote: Option<RemoteSource>,
}

struct Pending {
    context_id: u32,
    request: OwnedRequest,
    provider: usize,
    /// Waits for a refetch (keys were loaded but failed the token), so the first fetch that
    /// concludes settles it; otherwise it waits for the first keys or its deadline.
    refetch: bool,
    deadline_ms: u64,
    fetches_seen: u64,
}

/// One worker's shared state, over the host `H` it runs in.
pub struct Worker<H: Host> {
    pub policy: Policy,
    pub host: H,
    sources: Vec<KeySource>,
    pending: Vec<Pending>,
    /// Fetch token → the fetch.
    in_flight: HashMap<u32, InFlight>,
    /// Keys fetches that follow a metadata fetch, for the host to dispatch.
    follow_ups: Vec<FetchOrder>,
    /// Providers whose fetch lost its dispatching request: the root fetches them again.
    orphaned: Vec<usize>,
    /// Bumped whenever any key set changes; cached verifications of older keys are dropped.
    keys_generation: u64,
    /// Whether Envoy's wasm log level lets debug lines through (checked once).
    debug_logs: bool,
    /// Server decisions (tiers that need the server).
    pub(crate) decisions: DecisionCache,
    /// Local JWT verification results.
    pub(crate) tokens: TokenCache,
    /// Keys of `tokens` (a keyed fast hash; SHA-256 per request cost more than the rest).
    pub(crate) keyer: TokenKeyer,
    /// What this worker knows of the server's versions.
    pub(crate) versions: KnownVersions,
    /// Revocations from the change feed, for locally decided tiers that honour them.
    pub(crate) revocations: RevocationSet,
    /// `kid`s a refetch just proved absent, per provider, until when (ms): a token naming one
    /// is refused at once, without taking the refetch a real rotation may need.
    absent_kids: HashMap<(usize, String), u64>,
    /// Subjects (principal keys) revoked lately → when this worker applied it (ms): a Check
    /// reply for a call made before that may predate the revocation.
    pub(crate) subjects_applied_ms: HashMap<String, u64>,
    /// Signing keys from the change feed and signed contexts reused.
    pub(crate) context: ContextSigning,
    /// Checks after the answer, due and in flight.
    pub(crate) background: BackgroundChecks,
    /// Whether any route is checked after the answer (else allows skip that bookkeeping).
    pub(crate) background_routes: bool,
}

/// At most this many absent `kid`s are remembered (junk with random ones cannot grow it).
const MAX_ABSENT_KIDS: usize = 1_024;

/// How often the root context wakes up to refresh keys and time out waiting requests.
pub const TICK: Duration = Duration::from_millis(250);

impl<H: Host> Worker<H> {
    /// A worker for `policy` in `host`; `token_cache_key` keys the hash of cached tokens (a
    /// secret per VM: the host draws it from its random source).
    pub fn new(policy: Policy, host: H, token_cache_key: [u64; 2]) -> Worker<H> {
        let policy_has_background_routes = policy
            .routes
            .routes
            .iter()
            .any(|r| r.background_check_ms.is_some());
        let sources: Vec<KeySource> = policy
            .jwks_sources
            .iter()
            .map(|source| match source {
                JwksSource::Inline(set) => KeySource {
                    keys: Some(set.clone()),
                    remote: None,
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
        let decisions = DecisionCache::new(policy.cache.max_entries, policy.cache.caps.clone());
        let tokens = TokenCache::new(
            policy.cache.max_entries,
            policy.cache.jwt_ttl_ms,
            policy.cache.caps.deny_ms,
        );
        let mut revocations = match policy.server.as_ref() {
            Some(s) => RevocationSet::with_caps(s.max_revocations, s.max_subject_revocations),
            None => RevocationSet::new(authz_core::revocations::DEFAULT_MAX_ENTRIES),
        };
        if policy.feed().is_some() {
            // Nothing read yet: writes that honour revocations fail closed until the server's
            // state has been read whole once (every page of it, confirmed).
            revocations.resync();
        }
        Worker {
            policy,
            debug_logs: host.debug_enabled(),
            host,
            sources,
            pending: Vec::new(),
            in_flight: HashMap::new(),
            follow_ups: Vec::new(),
            orphaned: Vec::new(),
            keys_generation: 0,
            decisions,
            tokens,
            keyer: TokenKeyer::new(token_cache_key),
            versions: KnownVersions::default(),
            revocations,
            absent_kids: HashMap::new(),
            subjects_applied_ms: HashMap::new(),
            context: ContextSigning::default(),
            background: BackgroundChecks::default(),
            background_routes: policy_has_background_routes,
        }
    }

    /// Decides a request on the local path, reusing cached verifications of hot tokens. Only
    /// real verifications (cache misses) are timed: a hit costs no clock reads.
    fn decide(&mut self, request: &OwnedRequest, now_us: u64) -> Decision {
        let now_ms = now_us / 1000;
        let now = (now_ms / 1000) as i64;
        let Worker {
            policy,
            sources,
            tokens,
            keyer,
            host,
            keys_generation,
            revocations,
            ..
        } = self;
        let generation = *keys_generation;
        let honours = |tier: Tier| {
            policy
                .server
                .as_ref()
                .is_some_and(|s| s.local_revocations.contains(&tier))
        };
        let screen = |token: &authz_core::VerifiedToken, tier: Tier| {
            if !honours(tier) {
                return None;
            }
            if revocations.screen(token).is_some() {
                return Some(DenyReason::Revoked);
            }
            if !policy.status_lists.is_empty() {
                if let Err(refusal) =
                    authz_core::status_list::screen(&token.claims, &policy.status_lists, |entry| {
                        revocations.status_is_set(entry)
                    })
                {
                    if refusal != StatusRefusal::Set {
                        // Signed by the provider, so a configuration matter, not an attack:
                        // a list missing from `status_lists.uris`, or an IdP's odd claim.
                        host.log(
                            LogLevel::Warn,
                            &format!(
                                "jwt_authz: token refused: {} (is the list in status_lists.uris?)",
                                refusal.as_str()
                            ),
                        );
                    }
                    return Some(DenyReason::Revoked);
                }
            }
            // Past the cap a revocation may be missing: writes fail closed.
            (tier == Tier::StandardWrite && !revocations.complete(now_ms))
                .then_some(DenyReason::RevocationsIncomplete)
        };
        let check_token = |token: &str| {
            let key = keyer.key(token);
            if let Some(cached) = tokens.get(&key, now_ms, generation) {
                host.count(Counter::TokenCacheHit);
                return cached;
            }
            host.count(Counter::TokenCacheMiss);
            let result = verify(
                token,
                &policy.providers,
                |i| sources.get(i).and_then(|s| s.keys.as_ref()),
                policy.max_token_bytes,
                now,
            )
            .map(Arc::new);
            let skew_ms = result
                .as_ref()
                .ok()
                .and_then(|v| policy.providers.get(v.provider))
                .map(|p| p.clock_skew_seconds.max(0) as u64 * 1000)
                .unwrap_or(0);
            if policy.cache.jwt_ttl_ms > 0 {
                tokens.put(key, result.clone(), now_ms, generation, skew_ms);
            }
            if let Some(end) = host.now_us() {
                host.record(Histogram::VerifyMicros, end.saturating_sub(now_us));
            }
            result
        };
        decide_with(policy, &request.facts(), check_token, screen)
    }

    pub(crate) fn count_allow(&self, tier: Tier) {
        self.host.count(Counter::DecisionAllow);
        self.host.count(Counter::TierAllow(tier));
    }

    pub(crate) fn count_deny(&self, tier: Tier, reason: &'static str) {
        self.host.count(Counter::DecisionDeny);
        self.host.count(Counter::TierDeny(tier));
        self.host.count(Counter::DenyReason(reason));
    }

    /// Turns a final decision into an action, counting and logging it.
    fn finish(
        &mut self,
        context_id: u32,
        request: &OwnedRequest,
        decision: Decision,
        now_ms: u64,
    ) -> Final {
        match decision {
            Decision::Allow {
                tier,
                mut upstream_headers,
                route,
                token,
                ..
            } => {
                if let Some(token) = token {
                    match self.signed_context(request, &route, tier, &token, now_ms / 1000) {
                        Ok(Some(header)) => upstream_headers.push(header),
                        Ok(None) => {}
                        Err(reason) => return self.deny(context_id, request, tier, &route, reason),
                    }
                }
                self.note_background(request, &route, tier, now_ms);
                self.count_allow(tier);
                if self.debug_logs {
                    self.host.log(
                        LogLevel::Debug,
                        &format!(
                            "jwt_authz allow tier={tier} route={route} token={}",
                            request.token_label()
                        ),
                    );
                }
                let remove = if self.policy.forward_token {
                    Vec::new()
                } else {
                    vec!["authorization".to_owned()]
                };
                Final {
                    context_id,
                    action: FinalAction::Allow {
                        headers: upstream_headers,
                        remove,
                    },
                }
            }
            Decision::Deny {
                tier,
                reason,
                route,
            } => self.deny(context_id, request, tier, &route, reason),
            Decision::AwaitKeys {
                tier,
                route,
                failure,
                ..
            } => {
                let reason = match failure {
                    VerifyFailure::KeysUnavailable { .. } => DenyReason::KeysUnavailable,
                    failure => DenyReason::Token(failure),
                };
                self.deny(context_id, request, tier, &route, reason)
            }
        }
    }

    /// The signed context header for a local allow of `token`, when the policy attaches one:
    /// without a signing key yet (the change feed brings it) the request fails closed.
    fn signed_context(
        &mut self,
        request: &OwnedRequest,
        route: &str,
        tier: Tier,
        token: &VerifiedToken,
        now_seconds: u64,
    ) -> Result<Option<(String, String)>, DenyReason> {
        let (Some(settings), Some(bearer)) = (&self.policy.context, request.bearer()) else {
            return Ok(None);
        };
        let Some(principal) = token.claims.principal() else {
            // No context can state who called: fail closed rather than allow without one.
            return Err(DenyReason::Internal);
        };
        // The route the decision named; its path is read again only for a tenant rule.
        let tenant_rule = self
            .policy
            .routes
            .named(route)
            .and_then(|r| r.require.tenant.as_ref());
        let match_path = tenant_rule.map(|_| authz_core::routes::match_path(&request.path));
        let tenant = tenant_rule
            .zip(match_path.as_deref())
            .and_then(|(rule, path)| rule.tenant_of(path));
        let decided = Decided {
            subject: principal.id,
            subject_kind: principal.kind.as_str(),
            idp: self
                .policy
                .providers
                .get(token.provider)
                .map_or("", |p| p.issuer.as_str()),
            scopes: &token.claims.scopes,
            tier,
            tenant,
            policy_version: self.versions.policy_version,
            method: &request.method,
            route,
            token_claims: Some(&token.claims.raw),
            token_expires_at: token.claims.expires_at,
        };
        match self
            .context
            .context_for(settings, &self.keyer, bearer, &decided, now_seconds)
        {
            Some((context, reused)) => {
                self.host.count(if reused {
                    Counter::ContextReused
                } else {
                    Counter::ContextSigned
                });
                Ok(Some((settings.header.clone(), context)))
            }
            None => Err(DenyReason::KeysUnavailable),
        }
    }

    pub(crate) fn deny(
        &self,
        context_id: u32,
        request: &OwnedRequest,
        tier: Tier,
        route: &str,
        reason: DenyReason,
    ) -> Final {
        self.count_deny(tier, reason.as_str());
        let response = deny_response(&reason, &self.policy.realm);
        self.host.log(LogLevel::Info, &format!(
            "jwt_authz deny status={} reason={} tier={tier} route={route} method={} path={} token={}",
            response.status,
            reason.as_str(),
            request.method,
            authz_core::routes::path_only(&request.path),
            request.token_label()
        ));
        Final {
            context_id,
            action: FinalAction::Deny(response),
        }
    }

    /// A 400 for a request the filter cannot read (see [`crate::read_request`]).
    pub fn unreadable(&self, context_id: u32, unreadable: &Unreadable) -> Final {
        if let Some(ambiguity) = unreadable.ambiguity {
            self.host.log(
                LogLevel::Info,
                &format!(
                    "jwt_authz request refused: {} (see `requests` in the configuration)",
                    ambiguity.as_str()
                ),
            );
        }
        let tier = self.policy.routes.default.tier;
        self.deny(
            context_id,
            &unreadable.request,
            tier,
            "-",
            DenyReason::BadRequest,
        )
    }

    /// A deny for a request that cannot even be decided (e.g. no clock).
    pub fn internal_deny(&self, context_id: u32, request: &OwnedRequest) -> Final {
        let tier = self.policy.routes.find(&request.method, &request.path).tier;
        self.deny(context_id, request, tier, "-", DenyReason::Internal)
    }

    /// Decides a new request.
    pub fn on_request(
        &mut self,
        context_id: u32,
        request: OwnedRequest,
        now_us: u64,
    ) -> RequestStep {
        let now_ms = now_us / 1000;
        if let Some(call) = self.server_call_for(&request, now_ms) {
            return match self.cached_server_decision(context_id, &request, &call, now_ms) {
                Some(done) => RequestStep::Done(done),
                None => RequestStep::CallServer(call, request),
            };
        }
        let mut decision = self.decide(&request, now_us);
        if let Decision::AwaitKeys { provider, .. } = decision {
            // Another worker may have stored newer keys since this one last looked.
            if self.sync_keys(provider, now_ms) {
                decision = self.decide(&request, now_us);
            }
        }
        let Decision::AwaitKeys {
            provider, failure, ..
        } = &decision
        else {
            return RequestStep::Done(self.finish(context_id, &request, decision, now_ms));
        };
        // Keys were loaded but fail this token (unknown or rotated `kid`): a refetch any client
        // can cause, so it is rate-limited.
        let (provider, miss) = (*provider, failure.key_miss());
        let refetch = miss.is_some();
        let Some(status) = self.read_status(provider) else {
            // Keys are inline (or HMAC): nothing to fetch.
            return RequestStep::Done(self.finish(context_id, &request, decision, now_ms));
        };
        let unknown_kid = match failure {
            VerifyFailure::UnknownKey { kid, .. } => Some(kid.clone()),
            _ => None,
        };
        if let Some(kid) = &unknown_kid {
            let key = (provider, kid.clone());
            if self
                .absent_kids
                .get(&key)
                .is_some_and(|until| now_ms < *until)
            {
                // A refetch just proved it absent: refused, no refetch taken.
                return RequestStep::Done(self.finish(context_id, &request, decision, now_ms));
            }
        }
        let order = self.try_lease(provider, now_ms, miss);
        if refetch {
            if order.is_none() && !status.fetch_in_flight(now_ms) {
                self.host.count(Counter::UnknownKidRateLimited);
                if unknown_kid.is_some() {
                    // A `kid` nobody has looked for yet, and no refetch allowed now: it may be
                    // a real rotation's, so "try again" (503 + Retry-After), not "invalid".
                    let (tier, route) = match &decision {
                        Decision::AwaitKeys { tier, route, .. } => (*tier, route.clone()),
                        _ => (Tier::Authenticated, String::new()),
                    };
                    return RequestStep::Done(self.deny(
                        context_id,
                        &request,
                        tier,
                        &route,
                        DenyReason::KeysUnavailable,
                    ));
                }
                return RequestStep::Done(self.finish(context_id, &request, decision, now_ms));
            }
            if order.is_some() {
                self.host.count(Counter::JwksFetchUnknownKid);
            }
        }
        self.host.count(Counter::WaitedForKeys);
        self.pending.push(Pending {
            context_id,
            request,
            provider,
            refetch,
            deadline_ms: now_ms + self.policy.key_wait_timeout_ms,
            fetches_seen: status.completed_fetches,
        });
        RequestStep::Wait(order)
    }

    /// A request ended (or was reset). Its waiting entry goes. A fetch it dispatched can no
    /// longer be answered (answers go to the dispatching context), but the fetch belongs to the
    /// worker, not to the request: its lease is released without counting a failure, and the
    /// root context dispatches it again on its next tick.
    pub fn forget(&mut self, context_id: u32) {
        self.pending.retain(|p| p.context_id != context_id);
        let orphaned: Vec<(u32, usize)> = self
            .in_flight
            .iter()
            .filter(|(_, fetch)| fetch.owner == context_id)
            .map(|(token, fetch)| (*token, fetch.provider))
            .collect();
        for (token, provider) in orphaned {
            self.in_flight.remove(&token);
            self.update_status(provider, FetchStatus::released);
            if !self.orphaned.contains(&provider) {
                self.orphaned.push(provider);
            }
        }
    }

    fn read_status(&self, provider: usize) -> Option<FetchStatus> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        Some(FetchStatus::decode(
            self.host.shared_get(&remote.status_key).0.as_deref(),
        ))
    }

    /// Loads keys another worker stored, if they are newer than ours. True if keys changed.
    fn sync_keys(&mut self, provider: usize, now_ms: u64) -> bool {
        let Some(status) = self.read_status(provider) else {
            return false;
        };
        let Some(source) = self.sources.get_mut(provider) else {
            return false;
        };
        let Some(remote) = source.remote.as_mut() else {
            return false;
        };
        if status.keys_version <= remote.seen_version {
            return false;
        }
        let Some(document) = self.host.shared_get(&remote.keys_key).0 else {
            return false;
        };
        match KeySet::from_jwks_json(&document) {
            Ok(set) => {
                remote.seen_version = status.keys_version;
                self.install_keys(provider, set, now_ms);
                true
            }
            Err(e) => {
                self.host.log(
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
    fn try_lease(&self, provider: usize, now_ms: u64, miss: Option<KeyMiss>) -> Option<FetchOrder> {
        let rules = self.sources.get(provider)?.remote.as_ref()?.rules;
        self.lease_with(provider, now_ms, |status| {
            next_fetch(&rules, status, now_ms, miss)
        })
    }

    /// Re-dispatches a fetch whose request went away, unless another worker holds the lease
    /// now (a scheduled reason if one is due, else a retry).
    fn try_lease_again(&self, provider: usize, now_ms: u64) -> Option<FetchOrder> {
        let rules = self.sources.get(provider)?.remote.as_ref()?.rules;
        self.lease_with(provider, now_ms, |status| {
            (!status.fetch_in_flight(now_ms))
                .then(|| next_fetch(&rules, status, now_ms, None).unwrap_or(FetchReason::Retry))
        })
    }

    /// Takes the shared lease (compare-and-swap) when `reason_of` says a fetch is due.
    fn lease_with(
        &self,
        provider: usize,
        now_ms: u64,
        reason_of: impl FnOnce(&FetchStatus) -> Option<FetchReason>,
    ) -> Option<FetchOrder> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        let (bytes, cas) = self.host.shared_get(&remote.status_key);
        let status = FetchStatus::decode(bytes.as_deref());
        let reason = reason_of(&status)?;
        let leased = status.leased(&remote.rules, now_ms, reason);
        let written = self
            .host
            .shared_set(&remote.status_key, &leased.encode(), cas);
        if written != SharedWrite::Written {
            return None;
        }
        // With discovery, scheduled fetches read the metadata again first; a token the keys
        // fail refetches the keys where the metadata last said they are.
        let known = self.keys_location(provider);
        let metadata_path = remote.config.discovery_path.as_ref();
        Some(match (metadata_path, known) {
            (Some(path), None) => self.order(provider, FetchStage::Metadata, reason, None, path),
            (Some(path), Some(_)) if reason != FetchReason::UnknownKid => {
                self.order(provider, FetchStage::Metadata, reason, None, path)
            }
            (_, Some((authority, path))) => {
                self.order(provider, FetchStage::Keys, reason, Some(authority), &path)
            }
            (None, None) => return None,
        })
    }

    fn order(
        &self,
        provider: usize,
        stage: FetchStage,
        reason: FetchReason,
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
        }
    }

    /// Where `provider`'s keys are fetched from: the configured path, or with discovery where
    /// the metadata last said (none before the first metadata fetch).
    fn keys_location(&self, provider: usize) -> Option<(String, String)> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        if remote.config.discovery_path.is_none() {
            return Some((remote.config.authority.clone(), remote.config.path.clone()));
        }
        let bytes = self.host.shared_get(&remote.location_key).0?;
        let text = String::from_utf8(bytes).ok()?;
        let (authority, path) = text.split_once('\n')?;
        Some((authority.to_owned(), path.to_owned()))
    }

    /// Keys fetches that follow metadata fetches, to dispatch now (from the context that got
    /// the metadata answer).
    pub fn take_follow_ups(&mut self) -> Vec<FetchOrder> {
        std::mem::take(&mut self.follow_ups)
    }

    /// A metadata answer: where the keys are. On success the keys fetch follows at once under
    /// the same lease; on failure the last known location serves, if there is one.
    fn on_metadata_response(
        &mut self,
        fetch: &InFlight,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Vec<Final> {
        let provider = fetch.provider;
        let Some(remote) = self.sources.get(provider).and_then(|s| s.remote.as_ref()) else {
            return Vec::new();
        };
        let issuer = self
            .policy
            .providers
            .get(provider)
            .map(|p| p.issuer.clone())
            .unwrap_or_default();
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
                let _ = self.host.shared_set(&location_key, record.as_bytes(), None);
                self.host.log(
                    LogLevel::Debug,
                    &format!("jwt_authz metadata from {cluster}: keys at {path}"),
                );
            }
            Err(why) => {
                self.host.count(Counter::JwksFetchFailed);
                self.host.log(
                    LogLevel::Warn,
                    &format!(
                        "jwt_authz metadata for {issuer} from cluster {cluster} failed: {why}"
                    ),
                );
            }
        }
        match self.keys_location(provider) {
            Some((authority, path)) => {
                self.update_status(provider, |s| FetchStatus {
                    lease_until_ms: now_ms + lease_ms,
                    ..*s
                });
                let order = self.order(
                    provider,
                    FetchStage::Keys,
                    fetch.reason,
                    Some(authority),
                    &path,
                );
                self.follow_ups.push(order);
                Vec::new()
            }
            None => {
                self.update_status(provider, FetchStatus::failed);
                self.process_pending(now_ms)
            }
        }
    }

    /// Records a dispatched fetch; its answer will reach `context_id`.
    pub fn fetch_started(&mut self, token: u32, order: &FetchOrder, context_id: u32) {
        self.host.log(
            LogLevel::Debug,
            &format!(
                "jwt_authz jwks fetch from cluster {} reason={}",
                order.cluster,
                order.reason.as_str()
            ),
        );
        self.in_flight.insert(
            token,
            InFlight {
                provider: order.provider,
                owner: context_id,
                stage: order.stage,
                reason: order.reason,
            },
        );
    }

    pub fn fetch_not_started(&mut self, order: &FetchOrder) {
        self.host.log(
            LogLevel::Warn,
            &format!(
                "jwt_authz jwks fetch could not be dispatched to cluster {}",
                order.cluster
            ),
        );
        self.host.count(Counter::JwksFetchFailed);
        self.update_status(order.provider, FetchStatus::failed);
    }

    fn update_status(
        &self,
        provider: usize,
        change: impl Fn(&FetchStatus) -> FetchStatus,
    ) -> Option<FetchStatus> {
        let remote = self.sources.get(provider)?.remote.as_ref()?;
        for _ in 0..16 {
            let (bytes, cas) = self.host.shared_get(&remote.status_key);
            let next = change(&FetchStatus::decode(bytes.as_deref()));
            match self
                .host
                .shared_set(&remote.status_key, &next.encode(), cas)
            {
                SharedWrite::CasMismatch => continue,
                SharedWrite::Written => return Some(next),
                SharedWrite::Failed => return None,
            }
        }
        None
    }

    /// Whether `token` is one of this worker's JWKS fetches.
    pub fn owns_fetch(&self, token: u32) -> bool {
        self.in_flight.contains_key(&token)
    }

    /// A JWKS fetch answered (`status` is `None` when the call itself failed).
    pub fn on_fetch_response(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Vec<Final> {
        let Some(fetch) = self.in_flight.remove(&token) else {
            return Vec::new();
        };
        if fetch.stage == FetchStage::Metadata {
            return self.on_metadata_response(&fetch, status, body, now_ms);
        }
        let provider = fetch.provider;
        let Some(keys_key) = self
            .sources
            .get(provider)
            .and_then(|s| s.remote.as_ref())
            .map(|r| r.keys_key.clone())
        else {
            return Vec::new();
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
                    self.host.log(
                        LogLevel::Warn,
                        &format!("jwt_authz jwks from {cluster}: skipped {skipped}"),
                    );
                }
                let stored = self.host.shared_set(&keys_key, &body, None) == SharedWrite::Written;
                let version = if stored {
                    self.update_status(provider, |s| s.succeeded(now_ms))
                } else {
                    None
                };
                self.host.count(Counter::JwksFetchOk);
                self.host.log(
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
            }
            Err(why) => {
                self.host.count(Counter::JwksFetchFailed);
                let keeping = if self.sources.get(provider).is_some_and(|s| s.keys.is_some()) {
                    "keeping last good keys"
                } else {
                    "no keys yet"
                };
                self.host.log(
                    LogLevel::Warn,
                    &format!("jwt_authz jwks fetch from {cluster} failed: {why}; {keeping}"),
                );
                self.update_status(provider, FetchStatus::failed);
            }
        }
        self.process_pending(now_ms)
    }

    /// Periodic work: pick up keys other workers stored, start due fetches, settle waiting
    /// requests, merge server versions with the other workers, and poll the epochs feed when
    /// due (the host reports a dispatched poll with [`Worker::poll_started`]).
    pub fn on_tick(&mut self, now_ms: u64) -> TickWork {
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
            self.sync_keys(provider, now_ms);
            let order = if orphaned.contains(&provider) {
                self.try_lease_again(provider, now_ms)
            } else {
                self.try_lease(provider, now_ms, None)
            };
            if let Some(order) = order {
                orders.push(order);
            }
        }
        orders.append(&mut self.follow_ups);
        let finals = self.process_pending(now_ms);
        self.share_versions();
        self.prune_revocations(now_ms);
        TickWork {
            fetches: orders,
            finals,
            poll: self.poll_due(now_ms),
            background: self.background_orders(now_ms),
        }
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
        source.keys = Some(set);
        self.keys_generation += 1;
        for kid in retired {
            self.remember_absent(provider, &kid, now_ms);
        }
    }

    /// A refetch concluded without `kid`: tokens naming it are refused at once for the
    /// provider's `min_refetch_interval_seconds` (no refetch could be taken sooner anyway).
    fn remember_absent(&mut self, provider: usize, kid: &str, now_ms: u64) {
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

    /// Decides again every waiting request that can now be decided.
    fn process_pending(&mut self, now_ms: u64) -> Vec<Final> {
        let mut finals = Vec::new();
        let mut still_waiting = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let decision = self.decide(&p.request, now_ms * 1000);
            let Decision::AwaitKeys { .. } = decision else {
                finals.push(self.finish(p.context_id, &p.request, decision, now_ms));
                continue;
            };
            let concluded = p.refetch
                && self.read_status(p.provider).is_some_and(|s| {
                    s.completed_fetches > p.fetches_seen && !s.fetch_in_flight(now_ms)
                });
            if now_ms >= p.deadline_ms || concluded {
                // Proven absent only by keys that were fetched (not by a failed fetch).
                let fetched = self
                    .read_status(p.provider)
                    .is_some_and(|s| s.consecutive_failures == 0);
                if let (
                    true,
                    true,
                    Decision::AwaitKeys {
                        failure: VerifyFailure::UnknownKey { provider, kid },
                        ..
                    },
                ) = (concluded, fetched, &decision)
                {
                    self.remember_absent(*provider, kid, now_ms);
                }
                finals.push(self.finish(p.context_id, &p.request, decision, now_ms));
            } else {
                still_waiting.push(p);
            }
        }
        self.pending = still_waiting;
        finals
    }
}
