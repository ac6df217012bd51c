//! A circuit breaker for the IdP: after `failure_threshold` consecutive failures it opens for
//! `open_ms`, during which calls fail fast; then one probe is let through (half-open), whose
//! outcome closes or re-opens it. Pure: the caller passes the time and reports outcomes.

/// The breaker's state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_ms: u64,
    consecutive_failures: u32,
    open_until_ms: Option<u64>,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            open_ms,
            consecutive_failures: 0,
            open_until_ms: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self, now_ms: u64) -> CircuitState {
        match self.open_until_ms {
            None => CircuitState::Closed,
            Some(until) if now_ms < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a call may go out now. In half-open state only one probe at a time.
    pub fn try_acquire(&mut self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen if self.probe_in_flight => false,
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                true
            }
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.open_until_ms = None;
        self.probe_in_flight = false;
    }

    pub fn on_failure(&mut self, now_ms: u64) {
        self.probe_in_flight = false;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.open_until_ms.is_some() || self.consecutive_failures >= self.failure_threshold {
            self.open_until_ms = Some(now_ms + self.open_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let mut b = CircuitBreaker::new(3, 1_000);
        for t in 0..2 {
            assert!(b.try_acquire(t));
            b.on_failure(t);
        }
        assert_eq!(b.state(2), CircuitState::Closed);
        b.on_failure(2);
        assert_eq!(b.state(3), CircuitState::Open);
        assert!(!b.try_acquire(500));
        assert!(b.try_acquire(1_002), "half-open probe");
        assert!(!b.try_acquire(1_003), "only one probe");
        b.on_failure(1_004);
        assert_eq!(b.state(1_500), CircuitState::Open, "failed probe re-opens");
        assert!(b.try_acquire(2_004));
        b.on_success();
        assert_eq!(b.state(2_005), CircuitState::Closed);
        assert!(b.try_acquire(2_005) && b.try_acquire(2_006));
    }
}
