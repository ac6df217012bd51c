//! Rate limits (GCRA, `governor`): per subject and per client address on privileged checks,
//! and per client address on failed-token attempts. A limit answers 429; it is never cached
//! and never becomes an exemption: every check consults the limiter again.

use crate::config::{Rate, RateLimits};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::RwLock;

pub struct Limiters {
    privileged_per_subject: Option<DefaultKeyedRateLimiter<String>>,
    privileged_per_address: Option<DefaultKeyedRateLimiter<String>>,
    failed_tokens_per_address: Option<DefaultKeyedRateLimiter<String>>,
    /// Addresses found over their failed-token budget, and until when (ms): their checks that
    /// would need the IdP are refused before the call. Bounded (see [`MAX_BLOCKED`]).
    /// Read on every check, written only when an address goes over its budget.
    blocked: RwLock<HashMap<String, u64>>,
    /// How long an address stays blocked: one emission interval of its budget.
    block_ms: u64,
}

/// At most this many blocked addresses are remembered (oldest dropped first when full).
pub const MAX_BLOCKED: usize = 100_000;

fn limiter(rate: Option<Rate>) -> Option<DefaultKeyedRateLimiter<String>> {
    let rate = rate?;
    let period = rate.period / rate.per_period;
    let burst = NonZeroU32::new(rate.burst)?;
    Some(RateLimiter::keyed(
        Quota::with_period(period)?.allow_burst(burst),
    ))
}

/// The key an address is limited under: an IPv6 client by its /64 (one host commonly holds a
/// whole /64, and rotates addresses inside it), an IPv4-mapped one as IPv4, anything else as
/// it is.
pub fn address_key(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        _ => address.to_owned(),
    }
}

fn allows(limiter: &Option<DefaultKeyedRateLimiter<String>>, key: &str) -> bool {
    limiter
        .as_ref()
        .is_none_or(|l| l.check_key(&key.to_owned()).is_ok())
}

impl Limiters {
    pub fn new(limits: &RateLimits) -> Limiters {
        Limiters {
            privileged_per_subject: limiter(limits.privileged_per_subject),
            privileged_per_address: limiter(limits.privileged_per_address),
            failed_tokens_per_address: limiter(limits.failed_tokens_per_address),
            blocked: RwLock::new(HashMap::new()),
            block_ms: limits
                .failed_tokens_per_address
                .map(|r| (r.period / r.per_period.max(1)).as_millis() as u64)
                .unwrap_or(0)
                .max(1),
        }
    }

    pub fn privileged_subject_allowed(&self, subject: &str) -> bool {
        allows(&self.privileged_per_subject, subject)
    }

    pub fn privileged_address_allowed(&self, address: &str) -> bool {
        allows(&self.privileged_per_address, &address_key(address))
    }

    /// Counts one failed-token attempt; false when the address is over its budget, which also
    /// blocks the address's IdP-bound checks for a while ([`Limiters::address_blocked`]).
    pub fn failed_attempt_allowed(&self, address: &str, now_ms: u64) -> bool {
        let address = &address_key(address);
        let allowed = allows(&self.failed_tokens_per_address, address);
        if !allowed {
            let mut blocked = self.blocked.write().unwrap_or_else(|p| p.into_inner());
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, until| *until > now_ms);
            }
            if blocked.len() < MAX_BLOCKED {
                blocked.insert(address.to_owned(), now_ms + self.block_ms);
            }
        }
        allowed
    }

    /// Whether `address` went over its failed-token budget recently: a check from it that
    /// would need the IdP is refused (429) without the call.
    pub fn address_blocked(&self, address: &str, now_ms: u64) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&address_key(address))
            .is_some_and(|until| *until > now_ms)
    }

    /// Drops state of keys that have not been seen recently (bounded memory).
    pub fn prune(&self, now_ms: u64) {
        for l in [
            &self.privileged_per_subject,
            &self.privileged_per_address,
            &self.failed_tokens_per_address,
        ]
        .into_iter()
        .flatten()
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.blocked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_limits_per_key() {
        let limits = RateLimits {
            privileged_per_subject: Some(Rate {
                per_period: 1,
                period: Duration::from_secs(60),
                burst: 3,
            }),
            ..RateLimits::default()
        };
        let l = Limiters::new(&limits);
        assert!((0..3).all(|_| l.privileged_subject_allowed("alice")));
        assert!(!l.privileged_subject_allowed("alice"));
        assert!(
            l.privileged_subject_allowed("bob"),
            "limits are per subject"
        );
        assert!(
            l.privileged_address_allowed("10.0.0.1"),
            "unconfigured limits allow"
        );
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(address_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            address_key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            address_key("2001:db8:1:2::7")
        );
        assert_ne!(
            address_key("2001:db8:1:3::1"),
            address_key("2001:db8:1:2::1")
        );
        assert_eq!(address_key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(address_key("192.0.2.7"), "192.0.2.7");
        assert_eq!(address_key(""), "");
        let limits = RateLimits {
            privileged_per_address: Some(Rate {
                per_period: 1,
                period: std::time::Duration::from_secs(60),
                burst: 1,
            }),
            ..RateLimits::default()
        };
        let l = Limiters::new(&limits);
        assert!(l.privileged_address_allowed("2001:db8:1:2::1"));
        assert!(
            !l.privileged_address_allowed("2001:db8:1:2::2"),
            "another address of the same /64 shares the budget"
        );
        assert!(l.privileged_address_allowed("2001:db8:1:3::1"));
    }

    #[test]
    fn an_address_over_its_failed_budget_is_blocked_for_one_interval() {
        let limits = RateLimits {
            failed_tokens_per_address: Some(Rate {
                per_period: 60,
                period: Duration::from_secs(60),
                burst: 2,
            }),
            ..RateLimits::default()
        };
        let l = Limiters::new(&limits);
        assert!(l.failed_attempt_allowed("10.0.0.9", 1_000));
        assert!(l.failed_attempt_allowed("10.0.0.9", 1_000));
        assert!(!l.address_blocked("10.0.0.9", 1_000));
        assert!(!l.failed_attempt_allowed("10.0.0.9", 1_000));
        assert!(l.address_blocked("10.0.0.9", 1_500));
        assert!(!l.address_blocked("10.0.0.8", 1_500), "per address");
        assert!(!l.address_blocked("10.0.0.9", 2_001), "one interval (1 s)");
        l.prune(2_001);
        assert!(l.blocked.read().unwrap().is_empty());
    }
}
