//! Which requests a worker times, and the clock reads that time them (see
//! [`crate::metrics::TIMED_EVERY`]): one in `TIMED_EVERY` requests by count, whether it is
//! decided at once or later (a Check call, keys), so the decision latency histogram is an
//! unbiased sample of every request. A timed request's decision latency and sub-microsecond
//! stages go to `authz_proxy_decision_microseconds` and `authz_proxy_check_microseconds`; an
//! untimed one costs no clock read and no histogram write. The stages that take time (a
//! verification, a Check call, a wait for keys) are timed for every request.

use crate::host::Host;
use crate::metrics::{Histogram, Stage, TIMED_EVERY};

/// The worker's timing state.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    /// Requests that arrived so far (the share is taken by count).
    arrived: u64,
    /// The request being decided, when it is timed: when it arrived (µs).
    current: Option<u64>,
}

impl Timing {
    /// A request arrived at `now_us`: it becomes the one being decided, timed if it is the
    /// share's.
    pub fn arrive(&mut self, now_us: u64) {
        self.arrived = self.arrived.wrapping_add(1);
        self.current = self.arrived.is_multiple_of(TIMED_EVERY).then_some(now_us);
    }

    /// A request decided later (it waited) becomes the one being decided: timed from its
    /// arrival if it was in the share then.
    pub fn resume(&mut self, timed_since: Option<u64>) {
        self.current = timed_since;
    }

    /// No request is being decided.
    pub fn clear(&mut self) {
        self.current = None;
    }

    /// Whether the request being decided is timed.
    pub fn timed(&self) -> bool {
        self.current.is_some()
    }

    /// When the request being decided arrived, if it is timed: what a request that waits
    /// keeps, to [`Timing::resume`] with.
    pub fn timed_since(&self) -> Option<u64> {
        self.current
    }

    /// Records the decision latency of the request being decided, if it is timed.
    pub fn decided<H: Host>(&self, host: &H, histogram: Histogram) {
        if let Some(arrived) = self.current {
            record_elapsed(host, histogram, arrived);
        }
    }
}

/// A stopwatch over a timed request's consecutive stages: [`Lap::start`] reads the clock only
/// when `timed`, and each [`Lap::lap`] records the time since the previous read.
pub(crate) struct Lap(Option<u64>);

impl Lap {
    pub fn start<H: Host>(host: &H, timed: bool) -> Lap {
        Lap(if timed { host.now_us() } else { None })
    }

    /// Records `stage` as the time since the last read (nothing when untimed).
    pub fn lap<H: Host>(&mut self, host: &H, stage: Stage) {
        if let Some(since) = self.0 {
            self.0 = host.now_us();
            if let Some(now) = self.0 {
                host.record(Histogram::Stage(stage), now.saturating_sub(since));
            }
        }
    }
}

/// Records `stage` as the time since `since_us` (one clock read).
pub(crate) fn record_since<H: Host>(host: &H, stage: Stage, since_us: u64) {
    record_elapsed(host, Histogram::Stage(stage), since_us);
}

/// Records into `histogram` the time since `since_us` (one clock read; nothing without a
/// clock).
fn record_elapsed<H: Host>(host: &H, histogram: Histogram, since_us: u64) {
    if let Some(now) = host.now_us() {
        host.record(histogram, now.saturating_sub(since_us));
    }
}
