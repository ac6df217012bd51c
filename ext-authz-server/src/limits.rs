//! Rate limits (GCRA, `governor`): per subject and per client address on privileged checks,
//! and per client address on failed-token attempts. A limit answers 429; it is never cached
//! and never becomes an exemption: every check consults the limiter again.

use crate::config::{Rate, RateLimits};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

pub struct Limiters {
    privileged_per_subject: Option<DefaultKeyedRateLimiter<String>>,
    privileged_per_address: Option<DefaultKeyedRateLimiter<String>>,
    failed_tokens_per_address: Option<DefaultKeyedRateLimiter<String>>,
}

fn limiter(rate: Option<Rate>) -> Option<DefaultKeyedRateLimiter<String>> {
    let rate = rate?;
    let period = rate.period / rate.per_period;
    let burst = NonZeroU32::new(rate.burst)?;
    Some(RateLimiter::keyed(
        Quota::with_period(period)?.allow_burst(burst),
    ))
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
        }
    }

    pub fn privileged_subject_allowed(&self, subject: &str) -> bool {
        allows(&self.privileged_per_subject, subject)
    }

    pub fn privileged_address_allowed(&self, address: &str) -> bool {
        allows(&self.privileged_per_address, address)
    }

    /// Counts one failed-token attempt; false when the address is over its budget.
    pub fn failed_attempt_allowed(&self, address: &str) -> bool {
        allows(&self.failed_tokens_per_address, address)
    }

    /// Drops state of keys that have not been seen recently (bounded memory).
    pub fn prune(&self) {
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
}
