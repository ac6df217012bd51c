//! The incident switches (`authz_core::switches`) as one worker applies them: read from every
//! change-feed answer it applies (its own or one its group's reader shared), so they reach it
//! within the feed's bound, and acted on here.
//!
//! - `flush`: the decision and token caches are emptied (once per flush time).
//! - `jwks_refetch`: every fetched key set is held back (no token is verified with it) until a
//!   fetch started after the demand succeeds (`KeySources::demand_refetch`); the token cache
//!   is emptied. Requests meanwhile wait for keys as at start (`key_wait_timeout_ms`), then
//!   fail closed.
//! - `cache_max`, `fail_closed`: read at every lookup (`DecisionCache::lookup`, the token cache
//!   through [`Worker::token_cache_max_age`]) and when a decision is stored.
//! - `async_verification_off`: routes with checks after the answer ask the server before it
//!   (`server_path::server_call_for`).
//!
//! A worker with a change feed knows no switches until its first answer (and after an answer
//! whose switches it could not read): it then assumes the ones that refuse most
//! (`authz_core::switches::Known::Unknown`). A worker without a feed cannot learn any, and
//! has none.
//!
//! What it does not do: decide requests, or read a clock (every call carries `now_ms`).

use crate::host::{Host, LogLevel};
use crate::metrics::{Counter, Gauge};
use crate::worker::Worker;
use authz_core::feed::FeedSwitches;
use authz_core::switches::{Known, Switches};

/// What one worker knows of the switches, and the one-shots it acted on.
#[derive(Debug, Default)]
pub(crate) struct SwitchState {
    pub known: Known,
    /// The revision of the switches held: an answer with a lower one is older (a lagging
    /// replica's) and not taken. Reset when the server's incarnation changes.
    pub revision: u64,
    /// The flush time last acted on (`None`: no answer read yet).
    flushed_at_ms: Option<u64>,
    /// The refetch time last acted on.
    refetch_at_ms: Option<u64>,
    /// Since when the answers have carried no switches while some were held (a server
    /// rolled back to a version without them).
    absent_since_ms: Option<u64>,
}

/// Answers without switches for this long after some were held: the servers no longer have
/// switches (rolled back), and the held ones are dropped.
pub const ABSENT_SWITCHES_DROPPED_AFTER_MS: u64 = 60_000;

impl SwitchState {
    /// Before any answer: nothing known when a feed will tell, none without one.
    pub fn new(has_feed: bool) -> SwitchState {
        SwitchState {
            known: if has_feed {
                Known::Unknown
            } else {
                Known::Read(Switches::NONE)
            },
            ..SwitchState::default()
        }
    }
}

impl<H: Host> Worker<H> {
    /// Takes the switches of a feed answer this worker applies.
    pub(crate) fn take_switches(&mut self, switches: &FeedSwitches, now_ms: u64) {
        let read = match switches {
            // A server older than switches: none exist, unless another server said otherwise
            // lately (a replica not upgraded yet, beside upgraded ones).
            FeedSwitches::Absent
                if self
                    .switches
                    .known
                    .read()
                    .is_some_and(|held| *held != Switches::NONE) =>
            {
                let since = *self.switches.absent_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) < ABSENT_SWITCHES_DROPPED_AFTER_MS {
                    return;
                }
                Switches::NONE
            }
            FeedSwitches::Absent => Switches::NONE,
            FeedSwitches::Read(read) if read.revision < self.switches.revision => {
                self.host.log(
                    LogLevel::Debug,
                    "jwt_authz change feed: switches older than the ones held (a lagging server); kept",
                );
                return;
            }
            FeedSwitches::Read(read) => read.clone(),
            FeedSwitches::Malformed(why) => {
                self.host.count(Counter::SwitchesUnreadable);
                self.host.log(
                    LogLevel::Error,
                    &format!("jwt_authz change feed: {why}; assuming every tier fails closed and checks after the answer are made before it (is the server newer than the filter?)"),
                );
                self.switches.known = Known::Unknown;
                return;
            }
        };
        if read.flushed_at_ms > 0 && self.switches.flushed_at_ms != Some(read.flushed_at_ms) {
            self.flush_caches(read.flushed_at_ms);
        }
        self.switches.flushed_at_ms = Some(read.flushed_at_ms);
        if read.jwks_refetch_at_ms > 0
            && self.switches.refetch_at_ms != Some(read.jwks_refetch_at_ms)
        {
            self.refetch_keys(read.jwks_refetch_at_ms);
        }
        self.switches.refetch_at_ms = Some(read.jwks_refetch_at_ms);
        if self.switches.known.read() != Some(&read) {
            let active = read.active(now_ms);
            if !active.is_empty() || self.switches.known.read().is_some() {
                self.host.log(
                    LogLevel::Info,
                    &format!(
                        "jwt_authz incident switches now: {}",
                        serde_json::to_string(&read).unwrap_or_default()
                    ),
                );
            }
        }
        self.take_route_policies(&read);
        if !matches!(switches, FeedSwitches::Absent) {
            self.switches.absent_since_ms = None;
        }
        self.switches.revision = read.revision;
        self.switches.known = Known::Read(read);
        self.report_switches(now_ms);
    }

    /// `authz_proxy_switches_on`: the switches on now.
    pub(crate) fn report_switches(&self, now_ms: u64) {
        let on = self
            .switches
            .known
            .read()
            .map_or(0, |s| s.active(now_ms).len());
        self.host.set_gauge(Gauge::SwitchesOn, on as u64);
    }

    fn flush_caches(&mut self, at_ms: u64) {
        let (decisions, tokens) = (self.caches.decisions.len(), self.caches.tokens.len());
        self.caches.decisions.clear();
        self.caches.tokens.clear();
        self.host.set_gauge(Gauge::CacheEntries, 0);
        self.host.count(Counter::SwitchFlush);
        self.host.log(
            LogLevel::Warn,
            &format!("jwt_authz incident switch: flush (asked at {at_ms}): {decisions} cached decision(s) and {tokens} cached verification(s) dropped"),
        );
    }

    fn refetch_keys(&mut self, at_ms: u64) {
        let held_back = self.keys.demand_refetch(&self.host, at_ms);
        self.caches.tokens.clear();
        // Look at the key sources on the next wake-up (now): the refetch goes out at once.
        self.look_again();
        self.host.count(Counter::SwitchJwksRefetch);
        self.host.log(
            LogLevel::Warn,
            &format!("jwt_authz incident switch: jwks_refetch (asked at {at_ms}): {held_back} key set(s) not used until fetched again"),
        );
    }

    /// How old a cached verification may be for `request` (a `cache_max` switch on its
    /// route's tier), when any cap is on.
    pub(crate) fn token_cache_max_age(
        &self,
        request: &crate::commands::OwnedRequest,
        now_ms: u64,
    ) -> Option<u64> {
        if !self.switches.known.any_cap(now_ms) {
            return None;
        }
        let tier = self.policy.routes.find(&request.method, &request.path).tier;
        self.switches.known.cache_cap_ms(tier, now_ms)
    }
}
