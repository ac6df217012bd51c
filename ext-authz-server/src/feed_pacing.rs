//! Paces the change feed's catch-up answers (issue 18 §3): the bytes a feed credential may
//! be sent per second in answers it did not wait for to cursors far behind the state (a
//! first read, the pages of a large state, a re-read), so a holder of a feed secret looping
//! on `since=0` takes a bounded share of the server's CPU and network instead of all of it.
//!
//! Which answers are paced is the feed's call (`feed::reply`): never an answer to a
//! held request woken by a change (the push), nor one to a cursor near the state, so
//! revocations reach running workers within the freshness bound whatever a looping client
//! does.
//!
//! The pacer is a GCRA over bytes, per credential, with time as a parameter: each answer
//! reserves its size at the credential's rate; up to `burst` bytes go at once; an answer
//! that would have to wait longer than `max_wait` is refused (429 with `Retry-After`) and
//! reserves nothing, so the bytes a credential can have queued are bounded whatever the
//! number of its connections; an answer goes at once when nothing is queued, whatever its
//! size (so none is refused for ever).

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

    /// How an answer of `bytes` is paced at `now_ns` for a credential whose next byte was due
    /// at `arrival_ns`, and the arrival time to keep when it is not refused.
    fn pace(&self, arrival_ns: u128, bytes: u64, now_ns: u128) -> (Pace, Option<u128>) {
        let next_arrival = arrival_ns.max(now_ns) + self.ns_for(bytes);
        if arrival_ns <= now_ns {
            // Nothing queued: it goes now, whatever its size (one answer larger than the
            // burst and the longest wait together would otherwise never go), and what it
            // costs beyond the burst delays the next ones.
            return (Pace::Now, Some(next_arrival));
        }
        let send_at = next_arrival.saturating_sub(self.ns_for(self.burst_bytes));
        let wait =
            Duration::from_nanos(u64::try_from(send_at.saturating_sub(now_ns)).unwrap_or(u64::MAX));
        if wait > self.max_wait {
            // An answer this size is taken again once the queue ahead has drained to
            // `max_wait`.
            let retry_after = wait.saturating_sub(self.max_wait);
            return (Pace::Refused { retry_after }, None);
        }
        let pace = if wait.is_zero() {
            Pace::Now
        } else {
            Pace::After(wait)
        };
        (pace, Some(next_arrival))
    }

    fn arrival_of(arrivals: &HashMap<K, u128>, credential: K) -> u128 {
        arrivals.get(&credential).copied().unwrap_or(0)
    }

    /// How `credential` may be sent an answer of `bytes` at `now_ns`; reserves them unless
    /// refused.
    pub fn reserve(&self, credential: K, bytes: u64, now_ns: u128) -> Pace {
        let mut arrivals = crate::lock(&self.arrival_ns);
        let (pace, next_arrival) =
            self.pace(Self::arrival_of(&arrivals, credential), bytes, now_ns);
        if let Some(next_arrival) = next_arrival {
            arrivals.insert(credential, next_arrival);
        }
        pace
    }

    /// Whether an answer of about `estimate` bytes to `credential` would be refused now, and
    /// for how long; reserves nothing. Checked before an answer is built, so a refused client
    /// costs no page build.
    pub fn would_refuse(&self, credential: K, estimate: u64, now_ns: u128) -> Option<Duration> {
        let arrivals = crate::lock(&self.arrival_ns);
        match self.pace(Self::arrival_of(&arrivals, credential), estimate, now_ns) {
            (Pace::Refused { retry_after }, _) => Some(retry_after),
            _ => None,
        }
    }
}

/// The state's change version over the last `window`, sampled (at most once a second) as the
/// feed is read: a cursor at or above the version of `window` ago belongs to a worker that
/// was current then (a running worker's next read, however many changes came since), and is
/// never paced. Time is a parameter (ns on the caller's monotonic clock).
#[derive(Debug)]
pub struct RecentVersions {
    window_ns: u128,
    /// Whether a worker's cursor outlives this process (a shared tier keeps the incarnation
    /// across replica restarts): until this process has watched a whole window, any cursor
    /// may be a running worker's.
    cursors_outlive_process: bool,
    /// (when, version), oldest first; exactly one sample at or before `now - window` once the
    /// server has been read that long.
    samples: Mutex<std::collections::VecDeque<(u128, u64)>>,
}

/// One sample per this long, at most.
const SAMPLE_EVERY_NS: u128 = 1_000_000_000;

impl RecentVersions {
    pub fn new(window: Duration, cursors_outlive_process: bool) -> RecentVersions {
        RecentVersions {
            window_ns: window.as_nanos(),
            cursors_outlive_process,
            samples: Mutex::default(),
        }
    }

    /// Records `version` at `now_ns` and returns the version as of `window` ago. Never above
    /// the version of that moment: samples are taken at or before it, and versions only grow.
    /// Until the samples cover a whole window: the first version recorded (every cursor of
    /// this process's state was read from it at or after that), or, when cursors outlive the
    /// process, 1 (a worker current at another replica a moment ago may hold any cursor).
    pub fn floor(&self, version: u64, now_ns: u128) -> u64 {
        let mut samples = crate::lock(&self.samples);
        if samples
            .back()
            .is_none_or(|(at, _)| now_ns.saturating_sub(*at) >= SAMPLE_EVERY_NS)
        {
            samples.push_back((now_ns, version));
        }
        let horizon = now_ns.saturating_sub(self.window_ns);
        while samples.get(1).is_some_and(|(at, _)| *at <= horizon) {
            samples.pop_front();
        }
        let covered =
            now_ns >= self.window_ns && samples.front().is_some_and(|(at, _)| *at <= horizon);
        match samples.front() {
            Some((_, oldest)) if covered || !self.cursors_outlive_process => *oldest,
            _ => version.min(1),
        }
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

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_goes_at_once_then_answers_wait_their_turn_then_are_refused() {
        let p = pacer();
        let now = 100 * SECOND;
        assert_eq!(p.reserve(1, 600, now), Pace::Now, "the burst");
        assert_eq!(p.reserve(1, 400, now), Pace::Now, "the rest of the burst");
        assert_eq!(p.reserve(1, 500, now), Pace::After(ms(500)));
        assert_eq!(p.reserve(1, 500, now), Pace::After(ms(1_000)));
        assert_eq!(
            p.would_refuse(1, 500, now),
            Some(ms(500)),
            "checked before building: refused in forward time"
        );
        assert_eq!(
            p.reserve(1, 500, now),
            Pace::Refused {
                retry_after: ms(500)
            },
            "beyond the longest wait"
        );
        assert_eq!(
            p.would_refuse(1, 0, now),
            None,
            "a refusal reserved nothing"
        );
        assert_eq!(p.reserve(2, 1_000, now), Pace::Now, "per credential");
        // Half a second later the queue has drained by 500 bytes: one more waits its turn.
        let later = now + SECOND / 2;
        assert_eq!(p.would_refuse(1, 500, later), None);
        assert_eq!(p.reserve(1, 500, later), Pace::After(ms(1_000)));
        assert_eq!(
            p.reserve(1, 500, later),
            Pace::Refused {
                retry_after: ms(500)
            }
        );
        // Once the queue is empty, the next answer goes at once.
        assert_eq!(p.reserve(1, 500, now + 3 * SECOND), Pace::Now);
    }

    #[test]
    fn the_floor_is_the_version_of_a_window_ago() {
        let recent = RecentVersions::new(Duration::from_secs(60), false);
        assert_eq!(recent.floor(100, 0), 100, "the first version read");
        assert_eq!(recent.floor(150, SECOND / 2), 100, "one sample a second");
        assert_eq!(recent.floor(200, 30 * SECOND), 100);
        assert_eq!(recent.floor(300, 61 * SECOND), 100, "30 s was not 60 s ago");
        assert_eq!(recent.floor(400, 90 * SECOND), 200, "the version 60 s ago");
        assert_eq!(recent.floor(400, 1_000 * SECOND), 400, "quiet since");
        assert!(recent.samples.lock().map(|s| s.len()).unwrap_or(0) <= 2);
    }

    #[test]
    fn where_cursors_outlive_the_process_every_cursor_is_recent_until_a_window_is_watched() {
        // A replica of a shared tier, started amid a burst: a worker current at another
        // replica a moment ago holds a cursor far below this replica's first version.
        let recent = RecentVersions::new(Duration::from_secs(60), true);
        let start = 5 * SECOND;
        assert_eq!(recent.floor(10_300, start), 1);
        assert_eq!(recent.floor(10_400, start + 30 * SECOND), 1);
        assert_eq!(
            recent.floor(10_500, start + 61 * SECOND),
            10_300,
            "a whole window watched"
        );
        assert_eq!(
            RecentVersions::new(Duration::from_secs(60), true).floor(0, 0),
            0
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
            Pace::After(ms(1_000)),
            "idle time does not pile up beyond the burst"
        );
    }

    #[test]
    fn an_answer_larger_than_the_burst_and_the_wait_goes_when_nothing_is_queued() {
        let p = pacer();
        let now = 5 * SECOND;
        assert_eq!(
            p.reserve(1, 5_000, now),
            Pace::Now,
            "never refused for ever for its size"
        );
        // It cost 5 s of budget: the next answer waits until 4 s of it have drained.
        assert_eq!(
            p.reserve(1, 100, now),
            Pace::Refused {
                retry_after: ms(3_100)
            }
        );
        assert_eq!(p.would_refuse(1, 100, now + 3_100_000_000), None);
        assert_eq!(p.reserve(1, 100, now + 5 * SECOND), Pace::Now);
    }
}
