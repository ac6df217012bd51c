//! The state one proxy worker's requests share, and the one way in and out of it: events go
//! in through [`Worker::handle`] with the time they happened, commands come out of
//! [`Worker::poll_output`], and [`Worker::poll_timeout`] says when the worker next needs a
//! [`Event::Wake`]. A host keeps to this order:
//!
//! 1. `handle(event, now)` for each thing that happened (a request's headers, a request that
//!    ended, a call that ended, the wake-up time reached);
//! 2. then `poll_output()` until it returns `None`, carrying out each command (the worker is
//!    not borrowed meanwhile: carrying one out may re-enter the filter). A call that cannot
//!    start is reported by a later `handle(CallEnded { outcome: NotStarted })`, never from
//!    inside the loop's borrow;
//! 3. then `poll_timeout()`, arming its timer for that time (a time in the past: at once).
//!
//! A request's event that leaves no [`Command::Decide`] for it pauses it: the decision comes
//! with a later event. `RequestEnded` and an `Abandoned` call queue nothing, so a host may
//! report them from a callback that runs inside step 2.
//!
//! The parts: the policy, the key sources (`keys`: key sets, fetches, the lease through which
//! the workers of one proxy agree on who fetches), the requests waiting for keys, the Check
//! calls out for requests, the caches, the server path (`server_path`, `background`), and the
//! feed group through which one worker of the proxy reads the change feed for all
//! (`feed_share`).
//!
//! What it does not do: read a clock (every event carries `now`), or carry out a command.

use crate::background::BackgroundChecks;
use crate::commands::{
    CallId, CheckOrder, CheckPurpose, Command, FetchOrder, Final, OwnedRequest, ServerCall,
};
use crate::context::ContextSigning;
use crate::events::{CallOutcome, Event};
use crate::feed_share::FeedShare;
use crate::host::{Host, LogLevel};
use crate::keys::KeySources;
use crate::metrics::{Counter, Histogram, Stage};
use crate::outbox::Outbox;
use crate::timing::{record_since, Lap, Timing};
use crate::verify_outside::Offered;
use crate::versions::KnownVersions;
use authz_core::decision::decide_with;
use authz_core::decision_cache::{DecisionCache, TokenCache};
use authz_core::revocations::RevocationSet;
use authz_core::status_list::StatusRefusal;
use authz_core::token_hash::TokenKeyer;
use authz_core::verify::verify;
use authz_core::{Decision, DenyReason, Policy, Tier, VerifyFailure};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

struct Pending {
    context_id: u32,
    request: OwnedRequest,
    provider: usize,
    /// Waits for a refetch (keys were loaded but failed the token), so the first fetch that
    /// concludes settles it; otherwise it waits for the first keys or its deadline.
    refetch: bool,
    /// When it arrived and began waiting (µs).
    arrived_us: u64,
    /// When it arrived, if it is in the timed share (`timing`).
    timed_since: Option<u64>,
    deadline_ms: u64,
    fetches_seen: u64,
}

/// One worker's shared state, over the host `H` it runs in.
pub struct Worker<H: Host> {
    pub policy: Policy,
    pub host: H,
    /// Key sets, their fetches and the lease the workers share.
    pub(crate) keys: KeySources,
    pending: Vec<Pending>,
    /// Whether Envoy's wasm log level lets debug lines through (checked once).
    pub(crate) debug_logs: bool,
    /// Allows decided so far (the decision log takes its share by count).
    pub(crate) allows_seen: Cell<u64>,
    /// Server decisions and local verifications.
    pub(crate) caches: Caches,
    /// What this worker knows of the server and has learned from its feed.
    pub(crate) link: ServerLink,
    /// Signing keys from the change feed and signed contexts reused.
    pub(crate) context: ContextSigning,
    /// Checks after the answer, due and in flight.
    pub(crate) background: BackgroundChecks,
    /// Commands for the host, and call names.
    pub(crate) outbox: Outbox,
    /// The proxy's feed group: who reads the change feed for the others.
    pub(crate) share: FeedShare,
    /// The providers, shared with verifications made outside (`verify_outside`).
    pub(crate) providers: Arc<[authz_core::Provider]>,
    /// A verification the host made outside, for the request event that follows.
    pub(crate) offered: Option<Offered>,
    /// When the worker last read what other workers stored (ms): again within [`TICK`].
    last_look_ms: Option<u64>,
    /// The incident switches as this worker knows them.
    pub(crate) switches: crate::switches::SwitchState,
    /// A promoted route policy and a candidate in dry-run, from the switches.
    pub(crate) route_policies: crate::canary::RoutePolicies,
    /// Which requests are timed, and the one being decided.
    pub(crate) timing: Timing,
    /// When the event being handled happened (ms, the events' clock).
    pub(crate) event_ms: u64,
    /// This proxy's `region/zone`, for the decision log (see [`Worker::set_locality`]).
    pub(crate) locality: Option<String>,
}

/// The worker's caches: keyed by the same secret-keyed hash of the token.
pub(crate) struct Caches {
    /// Server decisions (tiers that need the server).
    pub decisions: DecisionCache,
    /// Local JWT verification results.
    pub tokens: TokenCache,
    /// Keys of both (a keyed fast hash; SHA-256 per request cost more than the rest).
    pub keyer: TokenKeyer,
}

/// What the worker holds of the ext_authz server: its versions, its reachability, the
/// revocations its change feed brought.
pub(crate) struct ServerLink {
    /// What this worker knows of the server's versions.
    pub versions: KnownVersions,
    /// Revocations from the change feed, for locally decided tiers that honour them.
    pub revocations: RevocationSet,
    /// Subjects (principal keys) revoked lately → when this worker applied it (ms): a Check
    /// reply for a call made before that may predate the revocation.
    pub subjects_applied_ms: HashMap<String, u64>,
    /// Check calls out for paused requests.
    checks: HashMap<CallId, WaitingCheck>,
}

/// A paused request whose Check call is out.
struct WaitingCheck {
    context_id: u32,
    call: ServerCall,
    request: OwnedRequest,
    /// When the request arrived (µs), if it is in the timed share (`timing`).
    timed_since: Option<u64>,
    /// When the call was asked for (µs), if the clock answered.
    asked_us: Option<u64>,
}

/// What a new request comes to, before it is turned into commands.
enum Step {
    Done(Final),
    /// Paused until keys arrive; with the fetch to make, if this request is to make it.
    Wait(Option<FetchOrder>),
    /// Ask the ext_authz server (no usable cached decision).
    CallServer(ServerCall, OwnedRequest),
}

/// The longest a worker with fetched keys or a change feed sleeps: what the other workers of
/// the proxy stored in shared data (keys, leases, versions) is read on wake-ups, so this bounds
/// how late one worker sees another's.
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
        let keys = KeySources::new(
            &policy.jwks_sources,
            |i| {
                policy
                    .providers
                    .get(i)
                    .map(|p| p.issuer.clone())
                    .unwrap_or_default()
            },
            &host,
        );
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
        let providers = Arc::from(policy.providers.clone());
        let policy_has_feed = policy.feed().is_some();
        Worker {
            debug_logs: host.debug_enabled(),
            allows_seen: Cell::new(0),
            host,
            keys,
            pending: Vec::new(),
            caches: Caches {
                decisions,
                tokens,
                keyer: TokenKeyer::new(token_cache_key),
            },
            link: ServerLink {
                versions: KnownVersions::default(),
                revocations,
                subjects_applied_ms: HashMap::new(),
                checks: HashMap::new(),
            },
            context: ContextSigning::default(),
            background: BackgroundChecks::new(policy_has_background_routes),
            outbox: Outbox::default(),
            share: FeedShare::default(),
            providers,
            offered: None,
            last_look_ms: None,
            switches: crate::switches::SwitchState::new(policy_has_feed),
            route_policies: crate::canary::RoutePolicies::new(policy.routes.clone()),
            timing: Timing::default(),
            event_ms: 0,
            locality: None,
            policy,
        }
    }

    /// This proxy's `region/zone` for the decision log: the host's (the policy's
    /// `server.client_locality`, else what the host knows of its node), set once after
    /// [`Worker::new`].
    pub fn set_locality(&mut self, locality: Option<String>) {
        self.locality = locality;
    }

    /// The next wake-up looks at the key sources and what other workers stored (now).
    pub(crate) fn look_again(&mut self) {
        self.last_look_ms = None;
    }

    /// Takes in one event that happened at `now_us` (microseconds; the clock only has to be
    /// the same for every event of this worker). See the module doc for the call order.
    pub fn handle(&mut self, event: Event, now_us: u64) {
        let now_ms = now_us / 1000;
        self.event_ms = now_ms;
        match event {
            Event::Request {
                context_id,
                request,
            } => self.on_request(context_id, request, now_us),
            Event::Unreadable {
                context_id,
                unreadable,
            } => {
                let decided = self.unreadable(context_id, &unreadable);
                self.outbox.push(Command::Decide(decided));
            }
            Event::NoClock {
                context_id,
                request,
            } => {
                let tier = self.policy.routes.find(&request.method, &request.path).tier;
                let decided = self.deny(context_id, &request, tier, "-", DenyReason::Internal);
                self.outbox.push(Command::Decide(decided));
            }
            Event::RequestEnded { context_id } => self.forget(context_id),
            Event::CallEnded { call, outcome } => self.on_call_ended(call, outcome, now_ms),
            Event::Wake => self.on_wake(now_ms),
            Event::SharedFeedAnswer { message } => self.on_shared_answer(&message, now_ms),
        }
        // An offered verification serves the event right after it, or none.
        self.offered = None;
    }

    /// The next command for the host, oldest first; `None` once all were handed out.
    pub fn poll_output(&mut self) -> Option<Command> {
        self.outbox.pop()
    }

    /// When the worker next needs an [`Event::Wake`] (ms, the events' clock; possibly past:
    /// at once), or `None` when nothing is due until the next event: a waiting request's
    /// deadline, the change feed's next request, a check after the answer the rate lets go,
    /// and [`TICK`] after it last read what other workers stored, while there are fetched keys
    /// or a feed to look after.
    pub fn poll_timeout(&self) -> Option<u64> {
        let periodic = (self.keys.has_remote() || self.policy.feed().is_some()).then(|| {
            self.last_look_ms
                .map_or(0, |at| at + TICK.as_millis() as u64)
        });
        let deadline = self.pending.iter().map(|p| p.deadline_ms).min();
        [
            periodic,
            deadline,
            self.feed_due_at(),
            self.background.due_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A call ended: its answer goes to the part that asked for it (a late answer to a call
    /// nobody waits for any more is dropped).
    fn on_call_ended(&mut self, call: CallId, outcome: CallOutcome, now_ms: u64) {
        if self.keys.owns_fetch(call) {
            self.on_fetch_ended(call, outcome, now_ms);
        } else if self.link.versions.poll_in_flight == Some(call) {
            let (status, body) = match outcome {
                CallOutcome::Http { status, body } => (status, body),
                _ => (None, None),
            };
            self.share_answer(status, body.as_deref(), now_ms);
            if let Some(order) = self.on_poll_response(status, body, now_ms) {
                // A held request answered: the next one goes out at once (push).
                self.send_poll(order);
            }
        } else if let Some(waiting) = self.link.checks.remove(&call) {
            let WaitingCheck {
                context_id,
                call,
                request,
                timed_since,
                asked_us,
            } = waiting;
            if let Some(asked_us) = asked_us {
                record_since(&self.host, Stage::CheckCall, asked_us);
            }
            self.timing.resume(timed_since);
            let decided = match outcome {
                CallOutcome::Grpc { status, body } => {
                    Some(self.on_server_reply(context_id, &request, &call, status, body, now_ms))
                }
                CallOutcome::NotStarted => {
                    Some(self.server_call_not_started(context_id, &request, &call))
                }
                // The request went away: nothing to apply.
                CallOutcome::Abandoned => None,
                CallOutcome::Http { .. } => {
                    Some(self.on_server_reply(context_id, &request, &call, u32::MAX, None, now_ms))
                }
            };
            self.timing.clear();
            if let Some(decided) = decided {
                self.outbox.push(Command::Decide(decided));
            }
        } else if self.background.owns(call) {
            match outcome {
                CallOutcome::Grpc { status, body } => {
                    self.on_background_reply(call, status, body, now_ms)
                }
                _ => self.background_lost(call),
            }
        }
    }

    /// A key fetch ended: the requests it settles are decided, and a keys fetch that follows
    /// a metadata answer goes out.
    fn on_fetch_ended(&mut self, call: CallId, outcome: CallOutcome, now_ms: u64) {
        let answered = matches!(outcome, CallOutcome::Http { .. } | CallOutcome::Grpc { .. });
        let concluded = match outcome {
            CallOutcome::Http { status, body } => self
                .keys
                .on_fetch_response(&self.host, call, status, body, now_ms),
            CallOutcome::Grpc { .. } => self
                .keys
                .on_fetch_response(&self.host, call, None, None, now_ms),
            CallOutcome::NotStarted => {
                self.keys.fetch_not_started(&self.host, call);
                false
            }
            CallOutcome::Abandoned => {
                self.keys.abandoned(&self.host, call);
                false
            }
        };
        if concluded {
            self.process_pending(now_ms);
        }
        // Only an answer queues anything (a keys fetch may follow a metadata answer): a call
        // that did not start or was abandoned must not, see the module doc.
        if answered {
            for order in self.keys.take_follow_ups() {
                self.send_fetch(order);
            }
        }
    }

    /// Queues a fetch, named, and records it as this worker's.
    fn send_fetch(&mut self, order: FetchOrder) {
        let call = self.outbox.call_id();
        self.keys.fetch_started(&self.host, call, &order);
        self.outbox.push(Command::Fetch { call, order });
    }

    /// Queues a Check call for the paused request `context_id`.
    fn send_check(
        &mut self,
        context_id: u32,
        call: ServerCall,
        request: OwnedRequest,
        timed_since: Option<u64>,
    ) {
        self.host.count(Counter::ServerCalls);
        let id = self.outbox.call_id();
        let order = CheckOrder {
            cluster: call.cluster.clone(),
            timeout: call.timeout,
            tier: call.tier,
            request: request.clone(),
            purpose: CheckPurpose::Decide { context_id },
            as_after_answer: call.checked_first,
        };
        self.link.checks.insert(
            id,
            WaitingCheck {
                context_id,
                call,
                request,
                timed_since,
                asked_us: self.host.now_us(),
            },
        );
        self.outbox.push(Command::Check { call: id, order });
    }

    /// Periodic work: pick up keys other workers stored, start due fetches, settle waiting
    /// requests, merge server versions with the other workers, and send the change-feed
    /// request and checks after the answer that are due.
    /// What other workers stored (keys, leases, versions) is read at most once per [`TICK`]:
    /// wake-ups for deadlines and checks after the answer come more often.
    fn on_wake(&mut self, now_ms: u64) {
        let tick = TICK.as_millis() as u64;
        let look_around = self
            .last_look_ms
            .is_none_or(|at| now_ms >= at.saturating_add(tick));
        if look_around {
            self.last_look_ms = Some(now_ms);
            for order in self.keys.on_tick(&self.host, now_ms) {
                self.send_fetch(order);
            }
        }
        self.process_pending(now_ms);
        if look_around {
            self.share_versions();
            self.report_switches(now_ms);
            self.prune_revocations(now_ms);
            self.feed_heartbeat(now_ms);
        }
        if let Some(order) = self.poll_due(now_ms) {
            self.send_poll(order);
        }
        self.send_background(now_ms);
    }

    /// Decides a request on the local path, reusing cached verifications of hot tokens. Real
    /// verifications (cache misses) are timed, from just before to just after; a hit costs no
    /// clock read unless the request is in the timed share (`timing`).
    fn decide(&mut self, request: &OwnedRequest, now_us: u64) -> Decision {
        let now_ms = now_us / 1000;
        let now = (now_ms / 1000) as i64;
        let max_age_ms = self.token_cache_max_age(request, now_ms);
        let Worker {
            policy,
            keys,
            caches: Caches { tokens, keyer, .. },
            host,
            link: ServerLink { revocations, .. },
            offered,
            providers,
            route_policies,
            timing,
            ..
        } = self;
        let generation = keys.generation();
        // A verification the host made outside, used if it is for this token under these keys.
        let offered = Cell::new(offered.take());
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
        // `cache`: store the result (not for a verification only a canary's candidate asked
        // for: a route the active policy leaves public must not fill the cache).
        let timed = timing.timed();
        let mut check_token = |token: &str, cache: bool| {
            let mut lap = Lap::start(&*host, timed);
            let key = keyer.key(token);
            lap.lap(&*host, Stage::TokenParse);
            let cached = tokens.get(&key, now_ms, generation, max_age_ms);
            lap.lap(&*host, Stage::TokenCache);
            if let Some(cached) = cached {
                host.count(Counter::TokenCacheHit);
                return cached;
            }
            host.count(Counter::TokenCacheMiss);
            let made_outside = offered
                .take()
                .and_then(|o| o.take_for(key, generation, now));
            let (result, micros) = match made_outside {
                Some(made) => made,
                None => {
                    let started = host.now_us();
                    let result = verify(
                        token,
                        providers,
                        |i| keys.keys(i),
                        policy.max_token_bytes,
                        now,
                    )
                    .map(Arc::new);
                    let micros =
                        started.and_then(|started| Some(host.now_us()?.saturating_sub(started)));
                    (result, micros)
                }
            };
            let skew_ms = result
                .as_ref()
                .ok()
                .and_then(|v| policy.providers.get(v.provider))
                .map(|p| p.clock_skew_seconds.max(0) as u64 * 1000)
                .unwrap_or(0);
            if cache && policy.cache.jwt_ttl_ms > 0 {
                tokens.put(key, result.clone(), now_ms, generation, skew_ms);
            }
            if let Some(micros) = micros {
                host.record(Histogram::Stage(Stage::JwtVerify), micros);
            }
            result
        };
        let mut verified = None;
        let decision = decide_with(
            policy,
            &request.facts(),
            |token| {
                let result = check_token(token, true);
                verified = Some(result.clone());
                result
            },
            screen,
        );
        if let Some(run) = route_policies.run.as_mut() {
            let decided = !matches!(decision, Decision::AwaitKeys { .. });
            if decided && run.canary.on_at(now_ms) {
                if let Some(key) = run.takes(request, verified.as_ref()) {
                    // The candidate sees the same verification (made at most once).
                    let candidate = decide_with(
                        &run.candidate,
                        &request.facts(),
                        |token| verified.take().unwrap_or_else(|| check_token(token, false)),
                        screen,
                    );
                    crate::canary::compare_on_sample(
                        host,
                        run,
                        policy,
                        request,
                        key.as_deref(),
                        &decision,
                        &candidate,
                    );
                }
            }
        }
        decision
    }

    /// A new request: decided at once, paused for keys (with the fetch it makes), or paused
    /// for a Check call.
    fn on_request(&mut self, context_id: u32, request: OwnedRequest, now_us: u64) {
        self.timing.arrive(now_us);
        match self.request_step(context_id, request, now_us) {
            Step::Done(decided) => self.outbox.push(Command::Decide(decided)),
            Step::Wait(order) => {
                if let Some(order) = order {
                    self.send_fetch(order);
                }
            }
            Step::CallServer(call, request) => {
                let timed_since = self.timing.timed_since();
                self.send_check(context_id, call, request, timed_since)
            }
        }
        self.timing.clear();
    }

    fn request_step(&mut self, context_id: u32, request: OwnedRequest, now_us: u64) -> Step {
        let now_ms = now_us / 1000;
        if self.route_policies.refused_promotion {
            // The promoted route policy could not be applied: the configured one may allow
            // what it refuses (see `canary`).
            let tier = self.policy.routes.find(&request.method, &request.path).tier;
            return Step::Done(self.deny(context_id, &request, tier, "-", DenyReason::Internal));
        }
        if let Some(call) = self.server_call_for(&request, now_ms) {
            return match self.cached_server_decision(context_id, &request, &call, now_ms) {
                Some(done) => Step::Done(done),
                None => Step::CallServer(call, request),
            };
        }
        let mut decision = self.decide(&request, now_us);
        if let Decision::AwaitKeys { provider, .. } = decision {
            // Another worker may have stored newer keys since this one last looked.
            if self.keys.sync_keys(&self.host, provider, now_ms) {
                decision = self.decide(&request, now_us);
            }
        }
        let Decision::AwaitKeys {
            provider, failure, ..
        } = &decision
        else {
            return Step::Done(self.finish(context_id, &request, decision, now_ms));
        };
        // Keys were loaded but fail this token (unknown or rotated `kid`): a refetch any client
        // can cause, so it is rate-limited.
        let (provider, miss) = (*provider, failure.key_miss());
        let refetch = miss.is_some();
        let Some(status) = self.keys.read_status(&self.host, provider) else {
            // Keys are inline (or HMAC): nothing to fetch.
            return Step::Done(self.finish(context_id, &request, decision, now_ms));
        };
        let unknown_kid = match failure {
            VerifyFailure::UnknownKey { kid, .. } => Some(kid.clone()),
            _ => None,
        };
        if let Some(kid) = &unknown_kid {
            if self.keys.proven_absent(provider, kid, now_ms) {
                // A refetch just proved it absent: refused, no refetch taken.
                return Step::Done(self.finish(context_id, &request, decision, now_ms));
            }
        }
        let order = self.keys.try_lease(&self.host, provider, now_ms, miss);
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
                    return Step::Done(self.deny(
                        context_id,
                        &request,
                        tier,
                        &route,
                        DenyReason::KeysUnavailable,
                    ));
                }
                return Step::Done(self.finish(context_id, &request, decision, now_ms));
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
            arrived_us: now_us,
            timed_since: self.timing.timed_since(),
            deadline_ms: now_ms + self.policy.key_wait_timeout_ms,
            fetches_seen: status.completed_fetches,
        });
        Step::Wait(order)
    }

    /// A request ended (or was reset): its waiting entry and its Check call go. A fetch it
    /// made is the host's to report `Abandoned` (its answer can no longer arrive).
    fn forget(&mut self, context_id: u32) {
        self.pending.retain(|p| p.context_id != context_id);
        self.link.checks.retain(|_, c| c.context_id != context_id);
    }

    /// Decides again every waiting request that can now be decided.
    fn process_pending(&mut self, now_ms: u64) {
        let mut finals = Vec::new();
        let mut still_waiting = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            self.timing.resume(p.timed_since);
            if self.route_policies.refused_promotion {
                // Decided under no routes this worker may use (see `canary`).
                let tier = self
                    .policy
                    .routes
                    .find(&p.request.method, &p.request.path)
                    .tier;
                finals.push(self.deny(p.context_id, &p.request, tier, "-", DenyReason::Internal));
                continue;
            }
            let decision = self.decide(&p.request, now_ms * 1000);
            let Decision::AwaitKeys { .. } = decision else {
                record_since(&self.host, Stage::KeyWait, p.arrived_us);
                finals.push(self.finish(p.context_id, &p.request, decision, now_ms));
                continue;
            };
            let concluded = p.refetch
                && self
                    .keys
                    .read_status(&self.host, p.provider)
                    .is_some_and(|s| {
                        s.completed_fetches > p.fetches_seen && !s.fetch_in_flight(now_ms)
                    });
            if now_ms >= p.deadline_ms || concluded {
                // Proven absent only by keys that were fetched (not by a failed fetch).
                let fetched = self
                    .keys
                    .read_status(&self.host, p.provider)
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
                    self.keys.remember_absent(*provider, kid, now_ms);
                }
                record_since(&self.host, Stage::KeyWait, p.arrived_us);
                finals.push(self.finish(p.context_id, &p.request, decision, now_ms));
            } else {
                still_waiting.push(p);
            }
        }
        self.timing.clear();
        self.pending = still_waiting;
        for decided in finals {
            self.outbox.push(Command::Decide(decided));
        }
    }
}
