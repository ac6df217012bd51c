//! Incident switches: the settings an operator changes at runtime, during an incident, without
//! a configuration edit or a restart. The server keeps them (and shares them through its shared
//! tier), puts the state of the moment on every change-feed answer (its `switches` member),
//! and both the server and every filter read them with these rules.
//!
//! | switch | effect |
//! |---|---|
//! | `flush` | every cache drops what it holds: the proxy's decision and token caches, the server's and the shared introspection caches (a one-shot: [`Switches::flushed_at_ms`]) |
//! | `jwks_refetch` | every key set is fetched again; until the new one is in, no token is verified with the keys held before (key compromise; a one-shot: [`Switches::jwks_refetch_at_ms`]) |
//! | `cache_max` | a tier's cached results are used only while younger than `max_ms` (0: never) |
//! | `fail_closed` | a tier serves nothing stale when something fails: no stale-if-error at the server, no cached decision in the proxy while its feed is not current |
//! | `async_verification_off` | routes with checks after the answer (`background_check_ms`) are checked before it |
//! | `canary` | a candidate route policy is decided beside the active one on a share of traffic, enforced nowhere ([`crate::canary`]) |
//! | `policy` | a promoted route policy: enforced instead of the configured routes and default, until reverted |
//!
//! Every switch but the two one-shots may carry an expiry (`until_ms`, the server's clock), so
//! an emergency setting cannot be forgotten; a switch past its expiry is off. The one-shots
//! are times (the server's clock when they were asked for), not counters: a reader acts when
//! the time differs from the one it acted on, and a server that restarts without shared state
//! cannot hand out a value a reader already saw.
//!
//! Pure: the clock is a parameter.

use crate::canary::{Canary, RoutePolicy};
use crate::tier::Tier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A switch that is on until cleared, or until `until_ms` (exclusive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    #[serde(default)]
    pub until_ms: Option<u64>,
}

/// Whether a switch expiring at `until_ms` (none: never) is on at `now_ms`.
fn on_until(until_ms: Option<u64>, now_ms: u64) -> bool {
    until_ms.is_none_or(|until| now_ms < until)
}

impl Held {
    fn on_at(&self, now_ms: u64) -> bool {
        on_until(self.until_ms, now_ms)
    }
}

/// A cap on how long a tier's cached results are used, until `until_ms` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub max_ms: u64,
    #[serde(default)]
    pub until_ms: Option<u64>,
}

impl Cap {
    fn on_at(&self, now_ms: u64) -> bool {
        on_until(self.until_ms, now_ms)
    }
}

/// The switches in force, as the change feed carries them. A member this reader does not know
/// (a switch of a newer server) makes the whole set unreadable: the reader then assumes the
/// switches that refuse most ([`Known::Unknown`]) rather than ignore one it cannot apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switches {
    /// The change version at which the server's switches last changed: an answer carrying a
    /// lower one than a reader holds (a lagging replica's) is older than what it holds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: u64,
    /// When the last flush was asked for (server clock, ms; 0: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flushed_at_ms: u64,
    /// When the last refetch of every key set was asked for (server clock, ms; 0: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jwks_refetch_at_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cache_max_ms: BTreeMap<Tier, Cap>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fail_closed: BTreeMap<Tier, Held>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_verification_off: Option<Held>,
    /// A candidate route policy in dry-run (boxed: most switch sets have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Box<Canary>>,
    /// A promoted route policy, enforced instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Box<RoutePolicy>>,
}

impl Switches {
    /// No switch on.
    pub const NONE: Switches = Switches {
        revision: 0,
        flushed_at_ms: 0,
        jwks_refetch_at_ms: 0,
        cache_max_ms: BTreeMap::new(),
        fail_closed: BTreeMap::new(),
        async_verification_off: None,
        canary: None,
        policy: None,
    };
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One change of one switch: what the admin API asks for and the shared tier carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "switch", rename_all = "snake_case")]
pub enum Setting {
    Flush,
    JwksRefetch,
    /// `max_ms: None` lifts the cap.
    CacheMax {
        tier: Tier,
        max_ms: Option<u64>,
        until_ms: Option<u64>,
    },
    FailClosed {
        tier: Tier,
        on: bool,
        until_ms: Option<u64>,
    },
    AsyncVerificationOff {
        on: bool,
        until_ms: Option<u64>,
    },
    /// `canary: None` ends the dry run (abandoned, or promoted).
    Canary {
        canary: Option<Canary>,
    },
    /// `policy: None` reverts to the configured route policy.
    Policy {
        policy: Option<RoutePolicy>,
    },
}

/// A switch that is on, as metrics and the admin API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub switch: &'static str,
    pub tier: Option<Tier>,
    pub until_ms: Option<u64>,
}

impl Setting {
    /// The switch's name (`flush`, `jwks_refetch`, `cache_max`, `fail_closed`,
    /// `async_verification_off`).
    pub fn name(&self) -> &'static str {
        match self {
            Setting::Flush => "flush",
            Setting::JwksRefetch => "jwks_refetch",
            Setting::CacheMax { .. } => "cache_max",
            Setting::FailClosed { .. } => "fail_closed",
            Setting::AsyncVerificationOff { .. } => "async_verification_off",
            Setting::Canary { .. } => "canary",
            Setting::Policy { .. } => "policy",
        }
    }

    /// The tier a per-tier switch is about.
    pub fn tier(&self) -> Option<Tier> {
        match self {
            Setting::CacheMax { tier, .. } | Setting::FailClosed { tier, .. } => Some(*tier),
            _ => None,
        }
    }

    /// Which setting this one replaces: the switch, and its tier for a per-tier one. The last
    /// change of each slot is the switch's state.
    pub fn slot(&self) -> String {
        match self.tier() {
            Some(tier) => format!("{}:{tier}", self.name()),
            None => self.name().to_owned(),
        }
    }

    /// Whether the change turns its switch on (a one-shot always does).
    pub fn turns_on(&self) -> bool {
        match self {
            Setting::Flush | Setting::JwksRefetch => true,
            Setting::CacheMax { max_ms, .. } => max_ms.is_some(),
            Setting::FailClosed { on, .. } | Setting::AsyncVerificationOff { on, .. } => *on,
            Setting::Canary { canary } => canary.is_some(),
            Setting::Policy { policy } => policy.is_some(),
        }
    }
}

impl Switches {
    /// The switches after `setting`, asked for at `at_ms` (server clock). Switches already
    /// past their expiry at `at_ms` are dropped.
    pub fn apply(&mut self, setting: &Setting, at_ms: u64) {
        self.cache_max_ms.retain(|_, cap| cap.on_at(at_ms));
        self.fail_closed.retain(|_, held| held.on_at(at_ms));
        if self.async_verification_off.is_some_and(|h| !h.on_at(at_ms)) {
            self.async_verification_off = None;
        }
        if self.canary.as_ref().is_some_and(|c| !c.on_at(at_ms)) {
            self.canary = None;
        }
        match setting {
            Setting::Flush => self.flushed_at_ms = self.flushed_at_ms.max(at_ms),
            Setting::JwksRefetch => self.jwks_refetch_at_ms = self.jwks_refetch_at_ms.max(at_ms),
            Setting::CacheMax {
                tier,
                max_ms: Some(max_ms),
                until_ms,
            } => {
                self.cache_max_ms.insert(
                    *tier,
                    Cap {
                        max_ms: *max_ms,
                        until_ms: *until_ms,
                    },
                );
            }
            Setting::CacheMax {
                tier, max_ms: None, ..
            } => {
                self.cache_max_ms.remove(tier);
            }
            Setting::FailClosed { tier, on, until_ms } => {
                if *on {
                    self.fail_closed.insert(
                        *tier,
                        Held {
                            until_ms: *until_ms,
                        },
                    );
                } else {
                    self.fail_closed.remove(tier);
                }
            }
            Setting::AsyncVerificationOff { on, until_ms } => {
                self.async_verification_off = on.then_some(Held {
                    until_ms: *until_ms,
                });
            }
            Setting::Canary { canary } => self.canary = canary.clone().map(Box::new),
            Setting::Policy { policy } => self.policy = policy.clone().map(Box::new),
        }
    }

    /// The candidate in dry-run at `now_ms`, if any.
    pub fn canary_at(&self, now_ms: u64) -> Option<&Canary> {
        self.canary.as_deref().filter(|c| c.on_at(now_ms))
    }

    /// How long a result of `tier` cached at most may be used at `now_ms`, when capped.
    pub fn cache_cap_ms(&self, tier: Tier, now_ms: u64) -> Option<u64> {
        self.cache_max_ms
            .get(&tier)
            .filter(|cap| cap.on_at(now_ms))
            .map(|cap| cap.max_ms)
    }

    /// Whether any tier's cache is capped at `now_ms`.
    pub fn any_cap(&self, now_ms: u64) -> bool {
        self.cache_max_ms.values().any(|cap| cap.on_at(now_ms))
    }

    /// Whether `tier` serves nothing stale at `now_ms`.
    pub fn fails_closed(&self, tier: Tier, now_ms: u64) -> bool {
        self.fail_closed.get(&tier).is_some_and(|h| h.on_at(now_ms))
    }

    /// Whether checks after the answer are made before it at `now_ms`.
    pub fn async_verification_off(&self, now_ms: u64) -> bool {
        self.async_verification_off.is_some_and(|h| h.on_at(now_ms))
    }

    /// The switches on at `now_ms` (the one-shots are not: they act once).
    pub fn active(&self, now_ms: u64) -> Vec<Active> {
        let caps = self
            .cache_max_ms
            .iter()
            .filter(|(_, cap)| cap.on_at(now_ms))
            .map(|(tier, cap)| Active {
                switch: "cache_max",
                tier: Some(*tier),
                until_ms: cap.until_ms,
            });
        let closed = self
            .fail_closed
            .iter()
            .filter(|(_, held)| held.on_at(now_ms))
            .map(|(tier, held)| Active {
                switch: "fail_closed",
                tier: Some(*tier),
                until_ms: held.until_ms,
            });
        let sync = self
            .async_verification_off
            .filter(|held| held.on_at(now_ms))
            .map(|held| Active {
                switch: "async_verification_off",
                tier: None,
                until_ms: held.until_ms,
            });
        caps.chain(closed).chain(sync).collect()
    }
}

/// What a reader knows of the switches: the state an answer carried, or nothing yet (before
/// its first answer, or when the answer's switches could not be read). Knowing nothing, a
/// reader assumes the switches that refuse most: every tier fails closed and checks after the
/// answer are made before it (caps need no assumption: they are applied by age, so they reach
/// results cached before they were known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Known {
    #[default]
    Unknown,
    Read(Switches),
}

impl Known {
    pub fn cache_cap_ms(&self, tier: Tier, now_ms: u64) -> Option<u64> {
        match self {
            Known::Unknown => None,
            Known::Read(s) => s.cache_cap_ms(tier, now_ms),
        }
    }

    pub fn any_cap(&self, now_ms: u64) -> bool {
        matches!(self, Known::Read(s) if s.any_cap(now_ms))
    }

    pub fn fails_closed(&self, tier: Tier, now_ms: u64) -> bool {
        match self {
            Known::Unknown => true,
            Known::Read(s) => s.fails_closed(tier, now_ms),
        }
    }

    pub fn async_verification_off(&self, now_ms: u64) -> bool {
        match self {
            Known::Unknown => true,
            Known::Read(s) => s.async_verification_off(now_ms),
        }
    }

    /// The switches read, if any.
    pub fn read(&self) -> Option<&Switches> {
        match self {
            Known::Unknown => None,
            Known::Read(s) => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(tier: Tier, max_ms: Option<u64>, until_ms: Option<u64>) -> Setting {
        Setting::CacheMax {
            tier,
            max_ms,
            until_ms,
        }
    }

    #[test]
    fn each_switch_is_on_until_cleared_or_until_its_expiry() {
        let mut s = Switches::default();
        s.apply(&cap(Tier::Privileged, Some(0), Some(5_000)), 1_000);
        s.apply(
            &Setting::FailClosed {
                tier: Tier::Authenticated,
                on: true,
                until_ms: None,
            },
            1_000,
        );
        s.apply(
            &Setting::AsyncVerificationOff {
                on: true,
                until_ms: Some(3_000),
            },
            1_000,
        );
        assert_eq!(s.cache_cap_ms(Tier::Privileged, 4_999), Some(0));
        assert_eq!(s.cache_cap_ms(Tier::Privileged, 5_000), None);
        assert_eq!(s.cache_cap_ms(Tier::Authenticated, 1_000), None);
        assert!(s.any_cap(4_999) && !s.any_cap(5_000));
        assert!(s.fails_closed(Tier::Authenticated, u64::MAX));
        assert!(!s.fails_closed(Tier::Privileged, 1_000));
        assert!(s.async_verification_off(2_999) && !s.async_verification_off(3_000));
        assert_eq!(s.active(2_000).len(), 3);
        assert_eq!(s.active(4_000).len(), 2);
        // Cleared.
        s.apply(&cap(Tier::Privileged, None, None), 2_000);
        s.apply(
            &Setting::FailClosed {
                tier: Tier::Authenticated,
                on: false,
                until_ms: None,
            },
            2_000,
        );
        assert_eq!(s.cache_cap_ms(Tier::Privileged, 2_000), None);
        assert!(!s.fails_closed(Tier::Authenticated, 2_000));
        // A later change drops what had expired by then.
        s.apply(&Setting::Flush, 10_000);
        assert_eq!(s.async_verification_off, None);
        assert_eq!(s.flushed_at_ms, 10_000);
    }

    #[test]
    fn one_shots_keep_the_latest_time() {
        let mut s = Switches::default();
        s.apply(&Setting::JwksRefetch, 7_000);
        s.apply(&Setting::JwksRefetch, 6_000);
        assert_eq!(s.jwks_refetch_at_ms, 7_000);
        assert!(s.active(7_000).is_empty());
    }

    #[test]
    fn the_wire_form_reads_back_and_an_empty_set_is_empty() {
        assert_eq!(serde_json::to_string(&Switches::default()).unwrap(), "{}");
        let mut s = Switches::default();
        s.apply(&cap(Tier::Regulated, Some(250), None), 1);
        s.apply(
            &Setting::FailClosed {
                tier: Tier::Privileged,
                on: true,
                until_ms: Some(9),
            },
            1,
        );
        s.apply(&Setting::Flush, 3);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"flushed_at_ms":3,"cache_max_ms":{"regulated":{"max_ms":250,"until_ms":null}},"fail_closed":{"privileged":{"until_ms":9}}}"#
        );
        assert_eq!(serde_json::from_str::<Switches>(&json).unwrap(), s);
        let setting: Setting = serde_json::from_str(
            r#"{"switch":"cache_max","tier":"privileged","max_ms":0,"until_ms":null}"#,
        )
        .unwrap();
        assert_eq!(setting.slot(), "cache_max:privileged");
        assert!(setting.turns_on());
    }

    #[test]
    fn knowing_nothing_assumes_what_refuses_most() {
        let unknown = Known::Unknown;
        assert!(unknown.fails_closed(Tier::Authenticated, 0));
        assert!(unknown.async_verification_off(0));
        assert_eq!(unknown.cache_cap_ms(Tier::Privileged, 0), None);
        let read = Known::Read(Switches::default());
        assert!(!read.fails_closed(Tier::Authenticated, 0));
        assert!(!read.async_verification_off(0));
    }
}
