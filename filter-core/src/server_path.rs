//! The filter's path to the ext_authz server, for tiers that need it and for routes marked
//! `fresh_cache_ms` (whose tier could be decided locally): the in-proxy decision cache in
//! front of Check calls, the handling of Check replies, and the `/admin/epochs` poll
//! that invalidates cached decisions when the server revokes something or the policy changes.
//!
//! Bounds (see docs/decision-cache.md, docs/freshness.md): a revocation or policy bump at the
//! server stops every worker from serving an old decision within one push (or one poll
//! interval) plus one round trip; in a feed group the reader's answer reaches the others
//! through the host's queues (`feed_share`), and a Check reply carrying a newer policy version
//! also flushes at once. Without a successful poll for `max_unreachable_ms`, cached decisions of tiers above
//! `authenticated` are not used.

use crate::commands::{Command, Final, FinalAction, OwnedRequest, PollOrder, ServerCall};
use crate::decision_log::{Logged, Source};
use crate::host::{Host, LogLevel, SharedWrite};
use crate::metrics::{Counter, Gauge, Histogram, Stage};
use crate::timing::Lap;
use crate::worker::Worker;
use authz_core::decision_cache::{decision_key, CachedDecision, CachedOutcome, LookupResult};
use authz_core::epochs::Changes;
use authz_core::ext_authz_proto::decode_reply;
use authz_core::feed::{FeedAnswer, FeedRefusal};
use authz_core::token_hash::{revocation_digest, token_digest};
use authz_core::DenyReason;
use serde_json::json;
use std::time::Duration;

/// Shared-data key holding `{"policy_version", "change_version", "last_ok_ms"}`.
const VERSIONS_KEY: &str = "jwt_authz/v1/server_versions";

impl<H: Host> Worker<H> {
    /// The server call a request needs, if its tier is decided by the server.
    pub(crate) fn server_call_for(
        &self,
        request: &OwnedRequest,
        now_ms: u64,
    ) -> Option<ServerCall> {
        let link = self.policy.server.as_ref()?;
        let match_path = authz_core::routes::match_path(&request.path);
        let route = self
            .policy
            .routes
            .find_matched(&request.method, &match_path);
        let token = request.bearer().unwrap_or("");
        // An opaque token (not a compact JWS) on a local tier: the server's, when the link
        // says the provider issues them.
        let opaque = link.opaque_tokens
            && route.tier != authz_core::Tier::Public
            && !token.is_empty()
            && token.split('.').count() != 3;
        // With asynchronous verification switched off (or not known to be on), a route
        // checked after the answer is checked before it, and the decision is reused for the
        // route's window, as its checks after the answer would have been.
        let checked_first = route.background_check_ms.is_some()
            && self.switches.known.async_verification_off(now_ms);
        if !route.tier.requires_server()
            && route.fresh_cache_ms.is_none()
            && !opaque
            && !checked_first
        {
            return None;
        }
        let policy_version = self.link.versions.policy_version;
        Some(ServerCall {
            tier: route.tier,
            key: decision_key(
                &self.caches.keyer,
                token,
                &request.method,
                &match_path,
                &route.name,
                policy_version,
            ),
            match_path,
            route: route.name.clone(),
            cluster: link.cluster.clone(),
            timeout: Duration::from_millis(link.timeout_ms),
            policy_version,
            max_cache_ms: route.fresh_cache_ms.or(if checked_first {
                route.background_check_ms
            } else {
                None
            }),
            started_ms: now_ms,
            checked_first,
        })
    }

    fn server_reachable(&self, now_ms: u64) -> bool {
        let Some(link) = &self.policy.server else {
            return false;
        };
        now_ms.saturating_sub(self.link.versions.last_ok_ms) <= link.max_unreachable_ms
    }

    /// A decision for a server-tier request without calling the server: a local 401 for a
    /// missing token, or a cached decision.
    pub(crate) fn cached_server_decision(
        &mut self,
        context_id: u32,
        request: &OwnedRequest,
        call: &ServerCall,
        now_ms: u64,
    ) -> Option<Final> {
        if request.bearer().is_none() {
            let reason = if request.authorization.is_some() {
                DenyReason::NotBearer
            } else {
                DenyReason::MissingToken
            };
            return Some(self.deny(context_id, request, call.tier, &call.route, reason));
        }
        let reachable = self.server_reachable(now_ms);
        let mut lap = Lap::start(&self.host, self.timing.timed());
        let (result, entry) =
            self.caches
                .decisions
                .lookup(&call.key, now_ms, reachable, &self.switches.known);
        lap.lap(&self.host, Stage::CacheLookup);
        self.host.count(match result {
            LookupResult::Hit => Counter::CacheHit(call.tier),
            LookupResult::Miss => Counter::CacheMiss(call.tier),
            LookupResult::Untrusted => Counter::CacheUntrusted(call.tier),
        });
        let entry = entry?;
        let age_ms = now_ms.saturating_sub(entry.stored_at_ms);
        Some(self.replay(
            context_id,
            request,
            call,
            entry.outcome,
            Source::Hit { age_ms },
        ))
    }

    /// Turns a server outcome (fresh or cached) into an action, counting and logging it.
    fn replay(
        &self,
        context_id: u32,
        request: &OwnedRequest,
        call: &ServerCall,
        outcome: CachedOutcome,
        source: Source,
    ) -> Final {
        let logged = |status| Logged {
            request,
            status,
            reason: if status == 200 { "ok" } else { "server_deny" },
            source,
            tier: call.tier,
            route: &call.route,
        };
        match outcome {
            CachedOutcome::Allow { headers, remove } => {
                self.count_allow(call.tier);
                self.log_allow(&logged(200));
                Final {
                    context_id,
                    action: FinalAction::Allow { headers, remove },
                }
            }
            CachedOutcome::Deny {
                status,
                headers,
                body,
            } => {
                self.count_deny(call.tier, "server_deny");
                self.log_denial(&logged(status));
                Final {
                    context_id,
                    action: FinalAction::Respond {
                        status,
                        headers,
                        body,
                    },
                }
            }
        }
    }

    /// The host could not dispatch the Check call (e.g. no such cluster): fail closed.
    pub(crate) fn server_call_not_started(
        &self,
        context_id: u32,
        request: &OwnedRequest,
        call: &ServerCall,
    ) -> Final {
        self.host.count(Counter::ServerErrors);
        self.host.log(
            LogLevel::Warn,
            &format!(
                "jwt_authz could not call cluster {}; failing closed",
                call.cluster
            ),
        );
        self.deny(
            context_id,
            request,
            call.tier,
            &call.route,
            DenyReason::ServerRequired,
        )
    }

    /// The server answered a Check (`grpc_status` 0) or the call failed.
    pub(crate) fn on_server_reply(
        &mut self,
        context_id: u32,
        request: &OwnedRequest,
        call: &ServerCall,
        grpc_status: u32,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Final {
        let reply = match (grpc_status, body) {
            (0, Some(body)) => decode_reply(&body),
            (0, None) => Err("empty reply"),
            _ => Err("call failed"),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(why) => {
                self.host.count(Counter::ServerErrors);
                self.host.log(LogLevel::Warn, &format!("jwt_authz ext_authz call failed ({why}, grpc status {grpc_status}); failing closed"));
                return self.deny(
                    context_id,
                    request,
                    call.tier,
                    &call.route,
                    DenyReason::ServerRequired,
                );
            }
        };
        // A Check reply renews trust in cached decisions only while the epochs feed works:
        // once polls fail, it says nothing about revocations this worker has not polled for,
        // and only a successful poll renews trust again.
        // (Polls, and so failed polls, exist only when an epochs feed is configured.)
        // A follower behind its reader, or that has not heard from it lately, counts as failing
        // too.
        let polls_failing =
            self.link.versions.failed_polls > 0 || self.feed_silent(now_ms) || self.feed_behind();
        if !reply.directive.state_unconfirmed && !polls_failing {
            self.link.versions.last_ok_ms = now_ms;
        }
        if reply.directive.policy_version > self.link.versions.policy_version {
            self.apply_policy_version(reply.directive.policy_version);
        }
        let lifetime = self
            .caches
            .decisions
            .caps
            .lifetime_ms(call.tier, reply.directive.ttl_ms, reply.outcome.is_allow())
            .min(call.max_cache_ms.unwrap_or(u64::MAX))
            .min(
                self.switches
                    .known
                    .cache_cap_ms(call.tier, now_ms)
                    .unwrap_or(u64::MAX),
            );
        // A reply that may predate changes this worker has applied (decided at an older
        // change version, or answering a call made before this worker applied a change: a
        // replica stamps what it learns out of order at versions it may share with another
        // replica's reply) is used once, never kept (the purge that would remove it may have
        // run already), and an allow for a token or subject revoked since is refused.
        let older_than_applied = reply.directive.change_version < self.link.versions.change_version
            || self.link.versions.changes_applied_ms >= call.started_ms;
        let token = request.bearer().unwrap_or("");
        // Hashed only where used: an older allow is screened, or a current reply cached (never
        // both).
        let digests = || [token_digest(token), revocation_digest(token)];
        if older_than_applied && reply.outcome.is_allow() {
            let subject_revoked_since = reply.directive.subject.as_ref().is_some_and(|s| {
                self.link
                    .subjects_applied_ms
                    .get(s)
                    .is_some_and(|at| *at >= call.started_ms)
            });
            if subject_revoked_since || self.link.revocations.names_token(&digests()) {
                return self.deny(
                    context_id,
                    request,
                    call.tier,
                    &call.route,
                    DenyReason::Revoked,
                );
            }
        }
        // A reply decided under an older policy than we now enforce is used once, not kept.
        if lifetime > 0
            && !older_than_applied
            && reply.directive.policy_version == self.link.versions.policy_version
        {
            let key = if call.policy_version == self.link.versions.policy_version {
                call.key
            } else {
                decision_key(
                    &self.caches.keyer,
                    token,
                    &request.method,
                    &call.match_path,
                    &call.route,
                    self.link.versions.policy_version,
                )
            };
            let [token_digest, revocation_digest] = digests();
            let entry = CachedDecision {
                outcome: reply.outcome.clone(),
                tier: call.tier,
                subject: reply.directive.subject.clone(),
                token_digest,
                revocation_digest,
                stored_at_ms: now_ms,
                expires_at_ms: now_ms + lifetime,
            };
            if let Some(evicted_tier) = self.caches.decisions.insert(key, entry) {
                self.host.count(Counter::CacheEvict(evicted_tier));
            }
            self.host
                .set_gauge(Gauge::CacheEntries, self.caches.decisions.len() as u64);
        }
        self.replay(context_id, request, call, reply.outcome, Source::Server)
    }

    fn apply_policy_version(&mut self, version: u64) {
        self.host.log(
            LogLevel::Info,
            &format!(
                "jwt_authz policy version {} → {version}: cached decisions dropped",
                self.link.versions.policy_version
            ),
        );
        self.start_over_at(version);
    }

    /// Enforces `policy_version` from now on: no decision cached before counts, and no cached
    /// verification either (each token is verified and screened again).
    fn start_over_at(&mut self, policy_version: u64) {
        self.link.versions.policy_version = policy_version;
        self.caches.decisions.clear();
        self.caches.tokens.clear();
        self.host.set_gauge(Gauge::PolicyVersion, policy_version);
        self.host.set_gauge(Gauge::CacheEntries, 0);
    }

    /// Whether a change-feed request is due now; marks it started. With push on and working,
    /// a request is always out (the server holds it until something changes or its wait runs
    /// out, and the next goes out when it answers); otherwise one every poll interval.
    ///
    /// In a feed group (see `feed_share`) only the reader asks so; a follower asks only to
    /// catch up, with a request answered at once.
    pub(crate) fn poll_due(&mut self, now_ms: u64) -> Option<PollOrder> {
        let push_wait_ms = self.policy.feed()?.push_wait_ms;
        let reading = self.reads_feed(now_ms);
        if self.link.versions.poll_in_flight.is_some() {
            // An answer that never came (the host lost the call): give up on it after its
            // timeout and a margin.
            let limit = poll_timeout(push_wait_ms, self.link.versions.poll_held).as_millis() as u64;
            if now_ms.saturating_sub(self.link.versions.last_poll_started_ms) < limit + 3_000 {
                return None;
            }
            self.link.versions.poll_in_flight = None;
            self.poll_failed("no answer");
        }
        if now_ms < self.link.versions.slow_down_until_ms {
            return None;
        }
        if !reading && self.feed_silent(now_ms) {
            // Nothing from the reader for too long: read on our own, at the interval.
            self.share.catch_up = true;
        }
        if !reading && !self.share.catch_up {
            return None;
        }
        let epochs = self.policy.feed()?;
        // The first read of a state (at start, after a server restart) is answered at once:
        // writes fail closed until it is read. A follower's catch-up is never held.
        let hold = reading
            && epochs.push_wait_ms > 0
            && !self.link.versions.push_down
            && self.link.versions.synced;
        // A follower's catch-up after a gap goes at once (`poll_now`); after a failed or
        // unconfirmed one, at the interval, as a reader's polls.
        if !self.link.versions.poll_now
            && now_ms.saturating_sub(self.link.versions.last_poll_started_ms) < epochs.interval_ms
        {
            return None;
        }
        self.link.versions.poll_now = false;
        self.link.versions.last_poll_started_ms = now_ms;
        self.link.versions.poll_held = hold;
        let mut path = format!(
            "/admin/epochs?since={}&format=2",
            self.link.versions.change_version
        );
        if hold {
            path.push_str(&format!("&wait_ms={}", epochs.push_wait_ms));
            // A server whose state restarted answers at once instead of holding.
            if let Some(incarnation) = &self.link.versions.incarnation {
                path.push_str("&incarnation=");
                push_query_value(&mut path, incarnation);
            }
        }
        let order = PollOrder {
            cluster: epochs.cluster.clone(),
            authority: epochs.authority.clone(),
            path,
            bearer: format!("Bearer {}", epochs.token),
            timeout: poll_timeout(epochs.push_wait_ms, hold),
        };
        self.poll_sent(self.link.versions.change_version, reading);
        Some(order)
    }

    /// When the next change-feed request is due (ms), as [`Worker::poll_due`] judges it:
    /// `None` without a feed.
    pub(crate) fn feed_due_at(&self) -> Option<u64> {
        let feed = self.policy.feed()?;
        let started = self.link.versions.last_poll_started_ms;
        if self.link.versions.poll_in_flight.is_some() {
            let limit =
                poll_timeout(feed.push_wait_ms, self.link.versions.poll_held).as_millis() as u64;
            return Some(started + limit + 3_000);
        }
        if !self.share.reading {
            // A follower: only a catch-up is ever due (at once).
            return self
                .share
                .catch_up
                .then_some(self.link.versions.slow_down_until_ms);
        }
        let next = if self.link.versions.poll_now {
            0
        } else {
            started + feed.interval_ms
        };
        Some(next.max(self.link.versions.slow_down_until_ms))
    }

    /// Queues a change-feed request, named, as the one in flight.
    pub(crate) fn send_poll(&mut self, order: PollOrder) {
        let call = self.outbox.call_id();
        self.link.versions.poll_in_flight = Some(call);
        self.outbox.push(Command::Poll { call, order });
    }

    fn poll_failed(&mut self, why: &str) {
        self.host.count(Counter::PollFailed);
        self.link.versions.failed_polls += 1;
        if self.link.versions.poll_held && !self.link.versions.push_down {
            self.link.versions.push_down = true;
            self.host.set_gauge(Gauge::PushConnected, 0);
            self.host.log(LogLevel::Warn, &format!(
                "jwt_authz change feed: held request failed ({why}); polling every {} ms until the server answers",
                self.policy.feed().map(|e| e.interval_ms).unwrap_or(0)
            ));
        }
        // Visible, without a line every poll: the first failure and every 40th.
        if self.link.versions.failed_polls % 40 == 1 {
            self.host.log(LogLevel::Warn, &format!(
                "jwt_authz epochs poll failed ({why}; {} in a row): cached decisions above authenticated stop being trusted {} ms after the last good poll",
                self.link.versions.failed_polls,
                self.policy.server.as_ref().map(|s| s.max_unreachable_ms).unwrap_or(0)
            ));
        }
    }

    /// The signing keys of a feed answer (a malformed set is logged; the keys held stay);
    /// whether they are new (a period ended: the server answered a held request for it).
    fn take_context_keys(&mut self, keys: &authz_core::feed::ContextKeys) -> bool {
        match authz_core::context::read_feed_keys(keys) {
            Ok(keys) if keys.is_empty() => {
                if self.context.keyless_answer() {
                    self.host.log(LogLevel::Error, KEYLESS_FEED);
                }
                false
            }
            Ok(keys) => self.context.set_keys(keys),
            Err(why) => {
                self.host.log(
                    LogLevel::Error,
                    &format!("jwt_authz change feed: signing keys refused: {why}"),
                );
                false
            }
        }
    }

    /// Applies a change-feed answer; returns the next request when it is due at once (a held
    /// request answered: the host dispatches the next one now).
    pub(crate) fn on_poll_response(
        &mut self,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Option<PollOrder> {
        self.link.versions.poll_in_flight = None;
        self.apply_feed_answer(status, body, now_ms, true)
    }

    /// Applies a change-feed answer: to this worker's own request (`own`), or one the group's
    /// reader shared. Returns the next request when it is due at once.
    pub(crate) fn apply_feed_answer(
        &mut self,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
        own: bool,
    ) -> Option<PollOrder> {
        let mut new_keys = false;
        let changes = match (status, body) {
            (Some(200), Some(body)) => FeedAnswer::from_slice(&body).and_then(|answer| {
                if self.policy.context.is_some() {
                    new_keys = self.take_context_keys(&answer.context_keys);
                }
                Changes::from_answer(&answer).map_err(str::to_owned)
            }),
            (Some(401 | 403), _) if own => {
                // Not a passing fault: nothing will change until the configuration does.
                self.host.count(Counter::PollUnauthorized);
                self.host.log(
                    LogLevel::Error,
                    "jwt_authz change feed: the server refused server.epochs_token (401/403): no revocations reach the routes this filter decides, and cached decisions stop being trusted; set it to one of the server's epochs_token / epochs_tokens",
                );
                Err("the server refused the feed credential".to_owned())
            }
            (Some(429), body) => {
                // A read over its secret's rate: the server says how long to wait (bounded
                // here: a wrong answer must not silence the feed for long); asking again every
                // interval from every worker would only add to its load. Without that (too
                // many held requests), polling plainly goes on at the interval.
                if let Some(after) = body.as_deref().and_then(FeedRefusal::retry_after_ms) {
                    let after = after.clamp(SLOW_DOWN_MS, MAX_SLOW_DOWN_MS);
                    self.link.versions.slow_down_until_ms = now_ms + after;
                }
                Err("the server refused the feed request (429)".to_owned())
            }
            (Some(_), _) => Err("epochs answered with an error status".to_owned()),
            (None, _) => Err("epochs unreachable".to_owned()),
        };
        let changes = match changes {
            Ok(c) => c,
            Err(why) if own => {
                self.poll_failed(&why);
                return None;
            }
            Err(_) => {
                // The reader counted and logged it.
                self.link.versions.failed_polls += 1;
                return None;
            }
        };
        if own {
            self.host.count(Counter::PollOk);
        }
        if self.link.versions.failed_polls > 0 {
            if own {
                self.host.log(
                    LogLevel::Info,
                    &format!(
                        "jwt_authz epochs poll recovered after {} failure(s)",
                        self.link.versions.failed_polls
                    ),
                );
            }
            self.link.versions.failed_polls = 0;
        }
        let held_for = now_ms.saturating_sub(self.link.versions.last_poll_started_ms);
        let wait_ms = self.policy.feed().map(|e| e.push_wait_ms).unwrap_or(0);
        if !own {
            // Another worker's request: how it was held is its reader's business.
        } else if self.link.versions.poll_held {
            // Held until a change, or for most of its wait: the server pushes. Answered at once
            // with nothing (a server that does not hold): poll at the interval instead.
            // A held request the server answered at a key period's end is a push too, and one
            // answered for a change with no rows (a switch: its version moved).
            let moved = changes.version > self.link.versions.change_version;
            if !changes.is_empty() || moved || new_keys || held_for >= wait_ms / 2 {
                self.host.count(Counter::PollHeld);
                self.link.versions.poll_now = true;
                self.host.set_gauge(Gauge::PushConnected, 1);
            }
        } else if self.link.versions.push_down && wait_ms > 0 {
            // The server answers again: try holding at once.
            self.host.log(
                LogLevel::Info,
                "jwt_authz change feed: server answers again; back to held requests",
            );
            self.link.versions.push_down = false;
            self.link.versions.poll_now = true;
        }
        if let Some(incarnation) = &changes.incarnation {
            if self
                .link
                .versions
                .incarnation
                .as_ref()
                .is_some_and(|known| known != incarnation)
            {
                // The server's counters restarted (or a server without shared state answered):
                // what we learned from the old counter says nothing about the new one, and we
                // cannot know what changed in between. Cached decisions go; the revocations
                // held stay (facts with their own expiry: a replica still resyncing must not
                // wipe them) and the new state is merged into them, read again from 0. Until
                // a confirmed answer of the new incarnation is applied, writes that honour
                // revocations fail closed.
                self.host.log(
                    LogLevel::Info,
                    &format!(
                        "jwt_authz epochs: server state restarted; {} cached decision(s) dropped, {} revocation(s) kept; reading its state again",
                        self.caches.decisions.len(),
                        self.link.revocations.len()
                    ),
                );
                self.link.versions.change_version = 0;
                self.link.versions.synced = false;
                self.link.versions.changes_applied_ms = now_ms;
                self.link.revocations.resync();
                self.link.versions.poll_now = true;
                self.share.catch_up = true;
                self.start_over_at(changes.policy_version);
                self.link.versions.incarnation = Some(incarnation.clone());
                // The new counter's switch revisions say nothing against the old one's; the
                // switches held stay until its state is read.
                self.switches.revision = 0;
                return self.poll_due(now_ms);
            }
            self.link.versions.incarnation = Some(incarnation.clone());
        }
        self.take_switches(&changes.switches, now_ms);
        // A page of a larger state vouches for nothing yet: the rest is read at once.
        let whole = !changes.more;
        if changes.more {
            self.link.versions.poll_now = true;
        }
        if changes.confirmed && whole {
            self.link.versions.last_ok_ms = now_ms;
            self.link.versions.feed_applied_ms = now_ms;
        }
        self.apply_revocations(&changes, now_ms);
        if changes.confirmed && whole {
            self.link.revocations.resynced();
            if own {
                self.caught_up(now_ms);
            }
        } else {
            self.host.log(
                LogLevel::Debug,
                "jwt_authz epochs: server state unconfirmed; cache trust not renewed",
            );
        }
        if changes.policy_version > self.link.versions.policy_version {
            self.apply_policy_version(changes.policy_version);
        }
        if self.link.versions.synced {
            // One sample per change, bounded per answer.
            for learned in changes.learned_at().take(1_000) {
                self.host.record(
                    Histogram::RevocationLag,
                    now_ms.saturating_sub(learned).saturating_mul(1000),
                );
            }
        }
        if whole && !self.link.versions.synced && wait_ms > 0 && !self.link.versions.push_down {
            // The state is read: from now on the server holds the request (push).
            self.link.versions.poll_now = true;
        }
        self.link.versions.synced |= whole;
        self.link.versions.change_version = self.link.versions.change_version.max(changes.version);
        self.share_versions();
        if self.link.versions.poll_now || self.share.catch_up {
            self.poll_due(now_ms)
        } else {
            None
        }
    }

    /// Purges cached decisions the changes make stale, and holds the revocations for
    /// locally decided routes.
    fn apply_revocations(&mut self, changes: &Changes, now_ms: u64) {
        let mut purged = 0;
        if !changes.jtis.is_empty() || !changes.statuses.is_empty() {
            // A decision cache entry does not know its token's `jti` or Status List entry:
            // every entry goes.
            purged += self.caches.decisions.len();
            self.caches.decisions.clear();
        }
        let dropped_before = self.link.revocations.dropped();
        for jti in &changes.jtis {
            self.link
                .revocations
                .revoke_jti(&jti.key, jti.expires_at_ms, now_ms);
        }
        for status in &changes.statuses {
            self.link
                .revocations
                .revoke_status(status.entry.clone(), status.expires_at_ms, now_ms);
        }
        if !changes.is_empty() {
            self.link.versions.changes_applied_ms = now_ms;
            // Kept as long as a Check call may be in flight (its timeout is at most 30 s).
            self.link
                .subjects_applied_ms
                .retain(|_, at| now_ms.saturating_sub(*at) <= 60_000);
        }
        for subject in &changes.subjects {
            self.link
                .subjects_applied_ms
                .insert(subject.subject.clone(), now_ms);
            if authz_core::principal::is_client_key(&subject.subject) {
                // A revoked client's users go too, and a cached decision does not know which
                // client a user's token came from: every entry goes.
                purged += self.caches.decisions.len();
                self.caches.decisions.clear();
            }
            purged += self.caches.decisions.purge_subject(&subject.subject);
            self.link.revocations.revoke_subject(
                &subject.subject,
                subject.revoked_at_ms,
                subject.expires_at_ms,
                now_ms,
            );
        }
        for token in &changes.tokens {
            purged += self.caches.decisions.purge_token(&token.key);
            self.link
                .revocations
                .revoke_token(token.key, token.expires_at_ms, now_ms);
        }
        for _ in dropped_before..self.link.revocations.dropped() {
            self.host.count(Counter::RevocationsDropped);
        }
        if !changes.is_empty() {
            self.host
                .set_gauge(Gauge::Revocations, self.link.revocations.len() as u64);
        }
        if purged > 0 {
            self.host.log(
                LogLevel::Info,
                &format!("jwt_authz epochs: {purged} cached decision(s) dropped"),
            );
            self.host
                .set_gauge(Gauge::CacheEntries, self.caches.decisions.len() as u64);
        }
    }

    /// Forgets revocations whose tokens have expired.
    pub(crate) fn prune_revocations(&mut self, now_ms: u64) {
        if self.link.revocations.prune(now_ms) > 0 {
            self.host
                .set_gauge(Gauge::Revocations, self.link.revocations.len() as u64);
        }
    }

    /// Publishes what this worker knows, and adopts a newer policy version another worker saw.
    pub(crate) fn share_versions(&mut self) {
        let (bytes, cas) = self.host.shared_get(VERSIONS_KEY);
        let shared: serde_json::Value = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let shared_policy = shared
            .get("policy_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        // Another worker's policy version counts only if it is about the same server state.
        let same_state = shared.get("incarnation").and_then(|v| v.as_str())
            == self.link.versions.incarnation.as_deref();
        if same_state && shared_policy > self.link.versions.policy_version {
            self.apply_policy_version(shared_policy);
        }
        // Trust is not adopted from another worker: its good poll says nothing about which
        // revocations this worker has applied.
        let mine = json!({
            "incarnation": self.link.versions.incarnation,
            "policy_version": self.link.versions.policy_version,
            "change_version": self.link.versions.change_version.max(shared.get("change_version").and_then(|v| v.as_u64()).unwrap_or(0)),
            "last_ok_ms": self.link.versions.last_ok_ms,
        });
        if mine != shared {
            let written = self
                .host
                .shared_set(VERSIONS_KEY, mine.to_string().as_bytes(), cas);
            if written == SharedWrite::Failed {
                self.host
                    .log(LogLevel::Warn, "jwt_authz could not share server versions");
            }
        }
    }
}

/// Appends `value` percent-encoded for a query string (every byte but RFC 3986's unreserved
/// characters): an incarnation is the server's text, never trusted to be URL-safe.
fn push_query_value(path: &mut String, value: &str) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// Logged once when the feed brings no signing keys to a filter that signs contexts.
const KEYLESS_FEED: &str = "jwt_authz change feed: the server sends no context signing keys (is `context` configured on the server?): routes that need a token fail closed (503)";

/// How long a worker waits at least before asking the change feed again after a 429 that
/// says how long to wait.
pub const SLOW_DOWN_MS: u64 = 1_000;

/// And at most, whatever the server's `retry_after_ms` says.
pub const MAX_SLOW_DOWN_MS: u64 = 10_000;

/// How long a change-feed request may take: a held one its wait plus a margin.
fn poll_timeout(push_wait_ms: u64, held: bool) -> Duration {
    Duration::from_millis(if held { push_wait_ms + 2_000 } else { 2_000 })
}
