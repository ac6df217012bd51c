//! When a host with one re-armable periodic timer (proxy-wasm's tick, a native scheduler) sets
//! it, so the worker is woken at [`crate::Worker::poll_timeout`] without re-arming on every
//! event: [`WakeTimer::period_for`] says the period to set now, or that the timer is fine as it
//! is.
//!
//! A wanted time already past is taken as "in a millisecond", and the timer is left alone while
//! it will fire by then: events that keep coming less than a millisecond apart cannot keep
//! pushing a due wake-up away (re-arming a periodic timer restarts it).
//!
//! What it does not do: read a clock or touch a timer (the host does both).

use std::time::Duration;

/// What the host's timer is armed for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WakeTimer {
    /// When it fires next (ms), if armed.
    armed_at: Option<u64>,
}

impl WakeTimer {
    /// The period to set at `now_ms` so the timer fires by `wanted_ms` and at the latest
    /// `max_wait` from now (a host's own periodic work), or `None` when it already will. Call
    /// [`WakeTimer::fired`] when it fires.
    pub fn period_for(
        &mut self,
        now_ms: u64,
        wanted_ms: Option<u64>,
        max_wait: Duration,
    ) -> Option<Duration> {
        let latest = now_ms.saturating_add(max_wait.as_millis() as u64);
        let at = wanted_ms
            .unwrap_or(latest)
            .min(latest)
            .max(now_ms.saturating_add(1));
        if self.armed_at.is_some_and(|armed| armed <= at) {
            return None;
        }
        self.armed_at = Some(at);
        Some(Duration::from_millis(at.saturating_sub(now_ms)))
    }

    /// The host armed its timer some other way, to fire at `at_ms`.
    pub fn armed(&mut self, at_ms: u64) {
        self.armed_at = Some(at_ms);
    }

    /// The timer fired: the next [`WakeTimer::period_for`] sets it again.
    pub fn fired(&mut self) {
        self.armed_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(250);

    #[test]
    fn a_due_wake_up_is_not_pushed_away_by_events_that_keep_coming() {
        let mut timer = WakeTimer::default();
        // Wanted in the past: in a millisecond.
        assert_eq!(
            timer.period_for(1_000, Some(0), MAX),
            Some(Duration::from_millis(1))
        );
        // The same wish a little later (the next request, same or next millisecond): left alone.
        assert_eq!(timer.period_for(1_000, Some(0), MAX), None);
        assert_eq!(timer.period_for(1_001, Some(500), MAX), None);
        timer.fired();
        assert_eq!(
            timer.period_for(1_002, Some(1_100), MAX),
            Some(Duration::from_millis(98))
        );
    }

    #[test]
    fn an_earlier_wish_re_arms_and_a_later_one_does_not() {
        let mut timer = WakeTimer::default();
        assert_eq!(
            timer.period_for(0, Some(200), MAX),
            Some(Duration::from_millis(200))
        );
        assert_eq!(timer.period_for(10, Some(300), MAX), None);
        assert_eq!(
            timer.period_for(20, Some(50), MAX),
            Some(Duration::from_millis(30))
        );
        assert_eq!(timer.period_for(30, None, MAX), None);
    }

    #[test]
    fn nothing_wanted_or_far_away_waits_at_most_the_host_s_own_period() {
        let mut timer = WakeTimer::default();
        assert_eq!(timer.period_for(0, None, MAX), Some(MAX));
        timer.fired();
        assert_eq!(timer.period_for(0, Some(10_000), MAX), Some(MAX));
        let mut started = WakeTimer::default();
        started.armed(20);
        assert_eq!(
            started.period_for(5, Some(30), MAX),
            None,
            "fires at 20 anyway"
        );
        assert_eq!(
            started.period_for(5, Some(0), MAX),
            Some(Duration::from_millis(1)),
            "sooner"
        );
    }
}
