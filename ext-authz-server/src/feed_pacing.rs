//! Paces the change feed's catch-up answers (issue 18 §3): the bytes a feed credential may
//! be sent in answers it did not wait for (a first read, the pages of a large state, a
//! cursor behind the state) per second, so a holder of a feed secret looping on `since=0`
//! takes a bounded share of the server's CPU and network instead of all of it.
//!
//! An answer to a held request woken by a change (the push) is never paced: revocations
//! reach workers within the freshness bound whatever a looping client does.
//!
//! The pacer is a GCRA over bytes, per credential, with time as a parameter: each answer
//! reserves its size at the credential's rate; up to `burst` bytes go at once; an answer
//! that would have to wait longer than `max_wait` is refused (429 with `Retry-After`) and
//! reserves nothing, so the bytes a credential can have queued are bounded whatever the
//! number of its connections.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Send it now.
    Now,
    /// Send it after this long (its bytes are reserved).
    After(Duration),
    /// Refuse it (429); the credential's budget allows it again in about this long.
    Refused { retry_after: Duration },
}

/// A byte-rate pacer per credential `K`.
#[derive(Debug)]
pub struct FeedPacer<K> {
    bytes_per_second: u64,
    /// Bytes that may go at once after an idle second.
    burst_bytes: u64,
    max_wait: Duration,
    /// Per credential: the theoretical arrival time (ns on the caller's clock) of its next
    /// byte; at most one entry per credential (credentials are configured, not client input).
    arrival_ns: Mutex<HashMap<K, u128>>,
}

impl<K: Hash + Eq + Copy> FeedPacer<K> {
    /// `bytes_per_second` (at least 1) per credential, `burst_bytes` of them at once, and
    /// answers that would wait longer than `max_wait` refused.
    pub fn new(bytes_per_second: u64, burst_bytes: u64, max_wait: Duration) -> FeedPacer<K> {
        FeedPacer {
            bytes_per_second: bytes_per_second.max(1),
            burst_bytes,
            max_wait,
            arrival_ns: Mutex::new(HashMap::new()),
        }
    }

    fn ns_for(&self, bytes: u64) -> u128 {
        u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second)
    }

    /// How `credential` may be sent an answer of `bytes` at `now_ns`; reserves them unless
    /// refused.
    pub fn reserve(&self, credential: K, bytes: u64, now_ns: u128) -> Pace {
        let mut arrivals = crate::lock(&self.arrival_ns);
        let arrival = arrivals.get(&credential).copied().unwrap_or(0).max(now_ns);
        let next_arrival = arrival + self.ns_for(bytes);
        let send_at = next_arrival.saturating_sub(self.ns_for(self.burst_bytes));
        let wait =
            Duration::from_nanos(u64::try_from(send_at.saturating_sub(now_ns)).unwrap_or(u64::MAX));
        if wait > self.max_wait {
            // Its budget allows an answer this size again once the queue ahead has drained
            // to `max_wait`.
            return Pace::Refused {
                retry_after: wait.saturating_sub(self.max_wait),
            };
        }
        arrivals.insert(credential, next_arrival);
        if wait.is_zero() {
            Pace::Now
        } else {
            Pace::After(wait)
        }
    }

    /// Whether any answer to `credential` would be refused now: checked before an answer is
    /// built, so a refused client costs no page build either.
    pub fn over_budget(&self, credential: K, now_ns: u128) -> Option<Duration> {
        let arrivals = crate::lock(&self.arrival_ns);
        let arrival = arrivals.get(&credential).copied().unwrap_or(0).max(now_ns);
        let send_at = arrival.saturating_sub(self.ns_for(self.burst_bytes));
        let wait =
            Duration::from_nanos(u64::try_from(send_at.saturating_sub(now_ns)).unwrap_or(u64::MAX));
        (wait > self.max_wait).then(|| wait.saturating_sub(self.max_wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u128 = 1_000_000_000;

    fn pacer() -> FeedPacer<u8> {
        // 1000 bytes/s, 1000 at once, waits up to 1 s.
        FeedPacer::new(1_000, 1_000, Duration::from_secs(1))
    }

    #[test]
    fn a_burst_goes_at_once_then_answers_wait_their_turn_then_are_refused() {
        let p = pacer();
        let now = 100 * SECOND;
        assert_eq!(p.reserve(1, 1_000, now), Pace::Now, "the burst");
        assert_eq!(
            p.reserve(1, 500, now),
            Pace::After(Duration::from_millis(500))
        );
        assert_eq!(p.reserve(1, 500, now), Pace::After(Duration::from_secs(1)));
        assert_eq!(
            p.reserve(1, 500, now),
            Pace::Refused {
                retry_after: Duration::from_millis(500)
            },
            "beyond the longest wait"
        );
        assert_eq!(
            p.over_budget(1, now),
            None,
            "a refused answer reserved nothing: an empty one could still wait its turn"
        );
        assert_eq!(p.reserve(2, 1_000, now), Pace::Now, "per credential");
        // Half a second later the queue has drained by 500 bytes.
        assert_eq!(
            p.reserve(1, 500, now + SECOND / 2),
            Pace::After(Duration::from_secs(1))
        );
        assert_eq!(
            p.reserve(1, 500, now + SECOND / 2),
            Pace::Refused {
                retry_after: Duration::from_millis(500)
            }
        );
        assert_eq!(
            p.over_budget(1, now + 2 * SECOND),
            None,
            "drained to one second of queue"
        );
        assert!(p.reserve(1, 1_000, now).eq(&Pace::Refused {
            retry_after: Duration::from_millis(1_500)
        }));
        assert_eq!(
            p.over_budget(1, now),
            Some(Duration::from_millis(500)),
            "even an empty answer would wait 1.5 s"
        );
    }

    #[test]
    fn an_idle_credential_regains_its_burst_and_no_more() {
        let p = pacer();
        let now = 100 * SECOND;
        assert_eq!(p.reserve(1, 1_000, now), Pace::Now);
        assert_eq!(p.reserve(1, 1_000, now + 60 * SECOND), Pace::Now);
        assert_eq!(
            p.reserve(1, 1_000, now + 60 * SECOND),
            Pace::After(Duration::from_secs(1)),
            "idle time does not pile up beyond the burst"
        );
    }

    #[test]
    fn an_answer_larger_than_the_burst_waits_for_its_excess() {
        let p = pacer();
        assert_eq!(
            p.reserve(1, 1_800, 5 * SECOND),
            Pace::After(Duration::from_millis(800))
        );
        assert_eq!(
            p.reserve(1, 5_000, 5 * SECOND),
            Pace::Refused {
                retry_after: Duration::from_millis(4_800)
            }
        );
    }
}
