//! The core's wake-ups in a process without a timer API: the dynamic-module ABI has schedulers
//! (run a closure's worth of work on an Envoy thread, now) but no timers. One thread per filter
//! configuration sleeps until the earliest wake-up asked for, then posts a wake to Envoy's main
//! thread through the configuration's scheduler, where the core is woken.
//!
//! What it does not do: touch the core (it never locks it) or Envoy (the `post` closure does).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Wanted {
    /// The earliest wake-up asked for and not yet posted.
    at: Option<Instant>,
    stopping: bool,
}

/// The waking thread of one filter configuration. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct WakeThread {
    state: Arc<(Mutex<Wanted>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl WakeThread {
    /// Starts the thread; `post` runs on it each time a wanted wake-up comes.
    pub fn start(post: impl Fn() + Send + 'static) -> std::io::Result<WakeThread> {
        let state: Arc<(Mutex<Wanted>, Condvar)> = Arc::default();
        let theirs = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("authz-wake".into())
            .spawn(move || run(&theirs, post))?;
        Ok(WakeThread {
            state,
            thread: Some(thread),
        })
    }

    /// Asks for a wake-up `after` from now; an earlier one already asked for stands.
    pub fn wake_in(&self, after: Duration) {
        let at = Instant::now() + after;
        let (lock, signal) = &*self.state;
        let Ok(mut wanted) = lock.lock() else { return };
        if wanted.at.is_none_or(|current| at < current) {
            wanted.at = Some(at);
            signal.notify_one();
        }
    }
}

fn run(state: &(Mutex<Wanted>, Condvar), post: impl Fn()) {
    let (lock, signal) = state;
    let Ok(mut wanted) = lock.lock() else { return };
    loop {
        if wanted.stopping {
            return;
        }
        let now = Instant::now();
        match wanted.at {
            Some(at) if at <= now => {
                wanted.at = None;
                drop(wanted);
                post();
                wanted = match lock.lock() {
                    Ok(guard) => guard,
                    Err(_) => return,
                };
            }
            Some(at) => {
                wanted = match signal.wait_timeout(wanted, at - now) {
                    Ok((guard, _)) => guard,
                    Err(_) => return,
                };
            }
            None => {
                wanted = match signal.wait(wanted) {
                    Ok(guard) => guard,
                    Err(_) => return,
                };
            }
        }
    }
}

impl Drop for WakeThread {
    fn drop(&mut self) {
        let (lock, signal) = &*self.state;
        if let Ok(mut wanted) = lock.lock() {
            wanted.stopping = true;
            signal.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn posts_once_per_wanted_wake_up_and_the_earliest_wins() {
        let posted = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&posted);
        let thread = WakeThread::start(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let started = Instant::now();
        thread.wake_in(Duration::from_secs(30));
        thread.wake_in(Duration::from_millis(20));
        while posted.load(Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "never woke");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        // The 30 s wake-up was replaced by the earlier one, not kept beside it.
        assert_eq!(posted.load(Ordering::SeqCst), 1);
        drop(thread);
    }
}
