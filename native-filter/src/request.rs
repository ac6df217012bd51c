//! One request, on the Envoy worker thread that runs it: strips client-sent copies of the
//! headers the filter sets (named by `filter_core::read_request`), hands the request to the
//! process's core as an event, and carries out what comes back for it: a decision (continue
//! with headers, or a local reply) or a Check call to the ext_authz server, made from here so
//! its answer arrives here. A request that must wait gets a mailbox: decisions made for it on
//! another thread are left there, and Envoy runs its `scheduled` hook to carry them out.
//!
//! What it does not do: decide anything, or touch another request.

use crate::abi::{EnvoyFilter, HeadersStatus, RawHeaders};
use crate::calls::CallTable;
use crate::grpc::{CheckCall, GrpcReply};
use crate::host::now_us;
use crate::shared::{command_owner, Mailbox, Shared};
use authz_core::{deny_response, DenyReason};
use filter_core::{
    CallId, CallOutcome, CheckOrder, Command, Event, Final, FinalAction, LiveRequest,
};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A request's filter instance. Its hooks may nest (a local reply completes the stream inside
/// the hook that sent it), so they take `&self` and the state is in cells, never borrowed
/// across a call into Envoy.
pub struct RequestFilter {
    shared: Option<Arc<Shared>>,
    envoy: EnvoyFilter,
    context_id: u32,
    mailbox: RefCell<Option<Arc<Mailbox>>>,
    /// Check calls made from here: Envoy's stream id → the core's call and its answer so far.
    calls: RefCell<CallTable<GrpcReply>>,
    /// The request was allowed: its body and trailers may pass.
    allowed: Cell<bool>,
    ended: Cell<bool>,
}

impl RequestFilter {
    pub fn new(shared: Option<Arc<Shared>>, envoy: EnvoyFilter) -> RequestFilter {
        let context_id = shared.as_ref().map_or(0, |s| s.next_context_id());
        RequestFilter {
            shared,
            envoy,
            context_id,
            mailbox: RefCell::new(None),
            calls: RefCell::new(CallTable::default()),
            allowed: Cell::new(false),
            ended: Cell::new(false),
        }
    }

    /// Whether the request was allowed (until then its body and trailers wait).
    pub fn allowed(&self) -> bool {
        self.allowed.get()
    }

    /// The request's headers: read, handed to the core, and what it decided applied.
    pub fn on_request_headers(&self) -> HeadersStatus {
        let Some(shared) = self.shared.clone() else {
            // No valid configuration: fail closed.
            return self.fail_closed();
        };
        // One read of the header map, as bytes (a client may send any byte Envoy lets
        // through): the core picks up what it decides on and names the client-sent copies of
        // our headers (and stripped override headers) to remove.
        let read = filter_core::read_request(self.envoy.request_headers(), &shared.policy);
        // A client's copy of a header we set that cannot be removed must not reach the
        // upstream: fail closed (the core never sees the request).
        let removed = read
            .remove
            .iter()
            .all(|name| self.envoy.remove_request_header(name));
        if !removed {
            return self.fail_closed();
        }
        let context_id = self.context_id;
        let clock = now_us();
        let event = Event::for_request(context_id, read.request, clock.is_some());
        let now = clock.unwrap_or_default();
        let commands = {
            let Some(mut core) = shared.lock() else {
                return self.fail_closed();
            };
            // A signature check runs without the lock: the other threads' requests go on.
            let outside = match &event {
                Event::Request { request, .. } => core.worker.verification_outside(request, now),
                _ => None,
            };
            if let Some(job) = outside {
                drop(core);
                let started = now_us();
                let verified = job.run();
                let micros = started.zip(now_us()).map(|(a, b)| b.saturating_sub(a));
                let Some(relocked) = shared.lock() else {
                    return self.fail_closed();
                };
                core = relocked;
                core.worker.offer_verified(verified, micros);
            }
            let commands = Shared::handle_locked(&mut core, event, now);
            let decided_now = commands
                .iter()
                .any(|c| matches!(c, Command::Decide(d) if d.context_id == context_id));
            if !decided_now {
                // It waits: the decision may come up on another thread, which must find it.
                let Some(scheduler) = self.envoy.new_scheduler() else {
                    drop(core);
                    return self.cannot_wait(&shared, commands);
                };
                let mailbox = Arc::new(Mailbox::new(scheduler));
                shared.register(&core, context_id, Arc::clone(&mailbox));
                self.mailbox.replace(Some(mailbox));
            }
            shared.arm(&core, now);
            commands
        };
        self.carry_out(&shared, commands, true)
            .unwrap_or(HeadersStatus::Paused)
    }

    /// A Check call's answer headers.
    pub fn on_stream_headers(&self, stream_id: u64, headers: RawHeaders) {
        self.calls
            .borrow_mut()
            .update(stream_id, |reply| reply.headers(headers));
    }

    /// A Check call's answer data.
    pub fn on_stream_data(&self, stream_id: u64, data: &[u8]) {
        self.calls
            .borrow_mut()
            .update(stream_id, |reply| reply.data(data));
    }

    /// A Check call's answer trailers.
    pub fn on_stream_trailers(&self, stream_id: u64, trailers: RawHeaders) {
        self.calls
            .borrow_mut()
            .update(stream_id, |reply| reply.trailers(trailers));
    }

    /// A Check call made from here ended (`completed`, or reset).
    pub fn on_stream_end(&self, stream_id: u64, completed: bool) {
        let finished = self.calls.borrow_mut().ended(stream_id, completed);
        if let Some((call, reply, completed)) = finished {
            self.check_ended(call, reply.outcome(completed));
        }
    }

    fn check_ended(&self, call: CallId, outcome: CallOutcome) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if self.ended.get() {
            return;
        }
        let now = now_us().unwrap_or_default();
        let commands = shared.handle(Event::CallEnded { call, outcome }, now);
        self.carry_out(&shared, commands, false);
    }

    /// Envoy ran this request's scheduler: carry out what was left in its mailbox.
    pub fn on_scheduled(&self) {
        let mailbox = self.mailbox.borrow().clone();
        let (Some(shared), Some(mailbox)) = (self.shared.clone(), mailbox) else {
            return;
        };
        if self.ended.get() {
            return;
        }
        let commands = mailbox.take();
        self.carry_out(&shared, commands, false);
    }

    /// The request is done (complete or destroyed, whichever comes first): the core forgets
    /// it, and the calls it made are abandoned.
    pub fn on_end(&self) {
        if self.ended.replace(true) {
            return;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut abandoned = self.calls.borrow_mut().drain();
        if self.mailbox.replace(None).is_some() {
            for command in shared.unregister(self.context_id) {
                if let Command::Check { call, .. } = command {
                    abandoned.push(call);
                }
            }
        }
        let now = now_us().unwrap_or_default();
        let mut commands = shared.handle(
            Event::RequestEnded {
                context_id: self.context_id,
            },
            now,
        );
        for call in abandoned {
            let outcome = CallOutcome::Abandoned;
            commands.extend(shared.handle(Event::CallEnded { call, outcome }, now));
        }
        shared.dispatch(commands, false);
    }

    /// Carries out `commands`: this request's here (`inline`: while its headers are handled, so
    /// a decision is the hook's answer, not a resume), the others where they belong. Returns
    /// the hook's answer when a decision for this request was applied inline.
    fn carry_out(
        &self,
        shared: &Shared,
        commands: Vec<Command>,
        inline: bool,
    ) -> Option<HeadersStatus> {
        let mut status = None;
        let mut queue = commands;
        while !queue.is_empty() {
            let mut others = Vec::new();
            let mut ended = Vec::new();
            for command in queue {
                if command_owner(&command) != Some(self.context_id) || self.ended.get() {
                    others.push(command);
                    continue;
                }
                match command {
                    Command::Decide(decided) => {
                        let applied = self.apply(&decided, !inline);
                        if inline {
                            status = Some(applied);
                        }
                    }
                    Command::Check { call, order } => {
                        if let Some(done) = self.start_check(shared, call, &order) {
                            ended.push(done);
                        }
                    }
                    other => others.push(other),
                }
            }
            shared.dispatch(others, false);
            queue = shared.report_ended(ended);
        }
        status
    }

    /// Makes the Check call for this request (its live headers, after stripping); returns the
    /// call and how it ended when it could not start or was answered while it started.
    fn start_check(
        &self,
        shared: &Shared,
        call: CallId,
        order: &CheckOrder,
    ) -> Option<(CallId, CallOutcome)> {
        let headers = self.envoy.request_headers();
        let source = self.envoy.source_address();
        let protocol = self.envoy.protocol();
        let live = LiveRequest {
            headers: &headers,
            source: source.as_deref(),
            protocol: protocol.as_deref(),
        };
        let Some(message) = filter_core::check_message(order, Some(live), shared.locality.clone())
        else {
            return Some((call, CallOutcome::NotStarted));
        };
        let check = CheckCall::new(order, &message);
        match self.envoy.start_stream(&check.outgoing(order)) {
            Some(id) => {
                let finished = self.calls.borrow_mut().started(id, call);
                finished.map(|(call, reply, completed)| (call, reply.outcome(completed)))
            }
            None => Some((call, CallOutcome::NotStarted)),
        }
    }

    /// Applies a decision to this request; `resume` when it was paused.
    fn apply(&self, decided: &Final, resume: bool) -> HeadersStatus {
        match &decided.action {
            FinalAction::Allow { headers, remove } => {
                let removed = remove
                    .iter()
                    .all(|name| self.envoy.remove_request_header(name.as_bytes()));
                let set = headers
                    .iter()
                    .all(|(name, value)| self.envoy.set_request_header(name, value));
                if !(removed && set) {
                    // The upstream would not get what the decision says: refused.
                    let refused = Final {
                        context_id: decided.context_id,
                        action: self.internal_error(),
                    };
                    return self.apply(&refused, resume);
                }
                self.allowed.set(true);
                if resume {
                    self.envoy.continue_decoding();
                }
                HeadersStatus::Continue
            }
            action => {
                if let Some((status, headers, body)) = action.local_reply() {
                    self.envoy.send_response(status, &headers, body);
                }
                HeadersStatus::Replied
            }
        }
    }

    /// The request cannot wait (no scheduler to resume it): the other requests' commands are
    /// carried out, its own calls are reported as not started, and it is refused.
    fn cannot_wait(&self, shared: &Shared, commands: Vec<Command>) -> HeadersStatus {
        let (mine, others): (Vec<Command>, Vec<Command>) = commands
            .into_iter()
            .partition(|c| command_owner(c) == Some(self.context_id));
        shared.dispatch(others, false);
        let not_started = mine
            .into_iter()
            .filter_map(|c| match c {
                Command::Check { call, .. } => Some((call, CallOutcome::NotStarted)),
                _ => None,
            })
            .collect();
        let follow_ups = shared.report_ended(not_started);
        shared.dispatch(follow_ups, false);
        self.fail_closed()
    }

    fn fail_closed(&self) -> HeadersStatus {
        let decided = Final {
            context_id: self.context_id,
            action: self.internal_error(),
        };
        self.apply(&decided, false)
    }

    /// The refusal of a request the filter cannot carry out (the configuration's realm, as
    /// every other denial).
    fn internal_error(&self) -> FinalAction {
        let realm = self
            .shared
            .as_ref()
            .map_or("api", |s| s.policy.realm.as_str());
        FinalAction::Deny(deny_response(&DenyReason::Internal, realm))
    }
}
