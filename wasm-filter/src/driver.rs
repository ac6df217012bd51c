//! Runs the filter core in Envoy, in the order `filter_core::worker` documents: an event in
//! (`handle`), every command out and carried out (`run`), the timer armed for the core's next
//! wake-up (`arm_timer`). Shared by the root context and the HTTP contexts: a call's answer
//! arrives at whichever context made the call, so the calls out are kept here, by the proxy's
//! call token, with the core's name for them and the context that made them.
//!
//! What it does not do: decide anything. Carrying out a command may re-enter the filter (a
//! local response ends its request at once), so the worker is never borrowed while a host call
//! runs.

use crate::check::check_message;
use crate::envoy_host::FilterWorker;
use crate::host;
use authz_core::ext_authz_proto::{CHECK_METHOD, CHECK_SERVICE};
use filter_core::{CallId, CallOutcome, Command, Event, Final, FinalAction, WakeTimer};
use proxy_wasm::types::Action;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

/// The longest the timer waits: hot counters counted inside the VM reach Envoy's on wake-ups
/// (see `envoy_host`).
pub const FLUSH_PERIOD: Duration = Duration::from_millis(250);

/// Which of the proxy's two call kinds a token belongs to (each has its own callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    Http,
    Grpc,
}

/// The core and what Envoy needs around it.
pub struct Driver {
    pub worker: RefCell<FilterWorker>,
    /// The proxy's call (kind, token) → the core's call and the context whose callbacks get
    /// the answer.
    calls: RefCell<HashMap<(CallKind, u32), (CallId, u32)>>,
    timer: Cell<WakeTimer>,
    /// The last time read (µs): an event when the clock cannot be read carries it.
    last_now_us: Cell<u64>,
    /// The policy's `server.client_locality`.
    locality: Option<String>,
}

impl Driver {
    pub fn new(worker: FilterWorker) -> Driver {
        let locality = worker
            .policy
            .server
            .as_ref()
            .and_then(|link| link.client_locality.clone());
        Driver {
            locality,
            worker: RefCell::new(worker),
            calls: RefCell::new(HashMap::new()),
            timer: Cell::new(WakeTimer::default()),
            last_now_us: Cell::new(0),
        }
    }

    /// The time now (µs), or the last time read when the clock cannot be read.
    pub fn now_us(&self) -> u64 {
        match host::now_us() {
            Some(now) => {
                self.last_now_us.set(now);
                now
            }
            None => self.last_now_us.get(),
        }
    }

    /// The timer was set outside [`Driver::arm_timer`] (the first wake-up), to fire at `at_ms`.
    pub fn timer_armed(&self, at_ms: u64) {
        let mut timer = self.timer.get();
        timer.armed(at_ms);
        self.timer.set(timer);
    }

    /// Hands `event` to the core (the worker is borrowed only meanwhile).
    pub fn handle(&self, event: Event, now_us: u64) {
        self.worker.borrow_mut().handle(event, now_us);
    }

    /// Carries out every queued command from context `home` (the one running now); a
    /// decision for `request` (the request whose headers are being handled, if any) is applied
    /// without resuming, and its action returned. Calls that cannot start are reported to the
    /// core, and what that queues is carried out too.
    pub fn run(&self, home: u32, request: Option<u32>, now_us: u64) -> Option<Action> {
        let mut action = None;
        loop {
            let mut not_started = Vec::new();
            loop {
                let command = self.worker.borrow_mut().poll_output();
                let Some(command) = command else { break };
                match command {
                    Command::Decide(decided) if Some(decided.context_id) == request => {
                        action = Some(apply_final(&decided, false));
                    }
                    Command::Decide(decided) => apply_paused(&decided, home),
                    Command::Fetch { call, order } => {
                        let token = host::dispatch_get(
                            &order.cluster,
                            &order.authority,
                            &order.path,
                            order.timeout,
                        );
                        self.started(CallKind::Http, token, call, home, &mut not_started);
                    }
                    Command::Poll { call, order } => {
                        let token = host::dispatch_get_with(
                            &order.cluster,
                            &order.authority,
                            &order.path,
                            &[("authorization", order.bearer.as_str())],
                            order.timeout,
                        );
                        self.started(CallKind::Http, token, call, home, &mut not_started);
                    }
                    Command::ShareFeed { to, message } => {
                        for name in &to {
                            // A member gone since it last refreshed its entry: skipped.
                            let _ = host::enqueue_to(name, &message);
                        }
                    }
                    Command::Check { call, order } => {
                        let token = check_message(&order, request, self.locality.as_deref())
                            .and_then(|message| {
                                host::dispatch_grpc(
                                    &order.cluster,
                                    CHECK_SERVICE,
                                    CHECK_METHOD,
                                    &message,
                                    order.timeout,
                                )
                            });
                        self.started(CallKind::Grpc, token, call, home, &mut not_started);
                    }
                }
            }
            if not_started.is_empty() {
                return action;
            }
            for call in not_started {
                let outcome = CallOutcome::NotStarted;
                self.handle(Event::CallEnded { call, outcome }, now_us);
            }
        }
    }

    fn started(
        &self,
        kind: CallKind,
        token: Option<u32>,
        call: CallId,
        home: u32,
        failed: &mut Vec<CallId>,
    ) {
        match token {
            Some(token) => {
                self.calls.borrow_mut().insert((kind, token), (call, home));
            }
            None => failed.push(call),
        }
    }

    /// A call's answer reached context `home`: the core gets it, and what it queues is
    /// carried out. A token that is not ours (or no longer) is ignored.
    pub fn call_ended(&self, kind: CallKind, token: u32, outcome: CallOutcome, home: u32) {
        let Some((call, _)) = self.calls.borrow_mut().remove(&(kind, token)) else {
            return;
        };
        let now_us = self.now_us();
        self.handle(Event::CallEnded { call, outcome }, now_us);
        self.run(home, None, now_us);
        self.arm_timer(now_us / 1000);
    }

    /// Context `context_id` (a request) went away: the core forgets it, and the calls it made
    /// are abandoned (their answers would have come to it). Queues nothing, so this is safe
    /// from a callback that runs while commands are carried out.
    pub fn request_ended(&self, context_id: u32) {
        let now_us = self.now_us();
        let abandoned: Vec<CallId> = {
            let mut calls = self.calls.borrow_mut();
            let tokens: Vec<(CallKind, u32)> = calls
                .iter()
                .filter(|(_, (_, owner))| *owner == context_id)
                .map(|(token, _)| *token)
                .collect();
            tokens
                .into_iter()
                .filter_map(|token| calls.remove(&token).map(|(call, _)| call))
                .collect()
        };
        self.handle(Event::RequestEnded { context_id }, now_us);
        for call in abandoned {
            let outcome = CallOutcome::Abandoned;
            self.handle(Event::CallEnded { call, outcome }, now_us);
        }
    }

    /// Answers other VMs shared arrived on this VM's queue: the core applies them in order,
    /// and what that queues is carried out from the root context.
    pub fn shared_answers(&self, root: u32, messages: Vec<Vec<u8>>) {
        if messages.is_empty() {
            return;
        }
        let now_us = self.now_us();
        for message in messages {
            self.handle(Event::SharedFeedAnswer { message }, now_us);
        }
        self.run(root, None, now_us);
        self.arm_timer(now_us / 1000);
    }

    /// The timer fired: the core wakes, its commands are carried out from the root context,
    /// and the timer is set for the next wake-up.
    pub fn wake(&self, root: u32) {
        let Some(now_us) = host::now_us() else { return };
        self.last_now_us.set(now_us);
        self.worker.borrow().host.flush();
        let mut timer = self.timer.get();
        timer.fired();
        self.timer.set(timer);
        self.handle(Event::Wake, now_us);
        self.run(root, None, now_us);
        self.arm_timer(now_us / 1000);
    }

    /// Sets the timer for the core's next wake-up when it is not set to fire by then; at the
    /// latest [`FLUSH_PERIOD`] from now, for the counters counted in the VM (see
    /// `filter_core::timer`). Envoy's timer is periodic: a period set now runs from now.
    pub fn arm_timer(&self, now_ms: u64) {
        let wanted = self.worker.borrow().poll_timeout();
        let mut timer = self.timer.get();
        let Some(period) = timer.period_for(now_ms, wanted, FLUSH_PERIOD) else {
            return;
        };
        if host::set_tick_period(period) {
            self.timer.set(timer);
        }
    }
}

/// Applies a decision to the current effective context. `resume` is true when the request
/// was paused earlier.
pub fn apply_final(decision: &Final, resume: bool) -> Action {
    match &decision.action {
        FinalAction::Allow { headers, remove } => {
            for name in remove {
                host::remove_request_header(name.as_bytes());
            }
            for (name, value) in headers {
                host::set_request_header(name, value);
            }
            if resume {
                host::resume_request();
            }
            Action::Continue
        }
        action => {
            if let Some((status, headers, body)) = action.local_reply() {
                host::send_response(status, &headers, body);
            }
            Action::Pause
        }
    }
}

/// Applies the decision of a paused request from context `home` (the one running now), by
/// switching the effective context to the request and back.
fn apply_paused(decision: &Final, home: u32) {
    if decision.context_id == home {
        apply_final(decision, true);
        return;
    }
    if host::set_effective_context(decision.context_id) {
        apply_final(decision, true);
    }
    host::set_effective_context(home);
}
