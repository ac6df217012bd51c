//! The filter configuration's state, one per Envoy process: the core (one `filter_core::Worker`
//! for every worker thread, behind a lock, so keys, token and decision caches and the change
//! feed are the process's, not a thread's), the requests that wait for a decision, and the
//! work that must run on Envoy's main thread.
//!
//! The order of `filter_core::worker` is kept: an event goes in under the lock, every command
//! comes out under the same lock, and the lock is released before any command is carried out
//! (carrying one out may re-enter the filter: a local reply runs our encoder hooks).
//!
//! Where a command is carried out:
//! - a decision or a Check call for a request: on that request's thread. When it comes up
//!   elsewhere (keys arrived on the main thread, a deadline passed), it is put in the request's
//!   mailbox and the request's scheduler is committed; the request carries it out when Envoy
//!   runs its `scheduled` hook.
//! - JWKS fetches, change-feed requests and checks after the answer: configuration-level
//!   callouts, made on the main thread (posted there through the configuration's scheduler
//!   when they come up on a worker thread). One of each per process.
//!
//! Lock order: core, then the mailbox table, then a mailbox. Nothing holds a mailbox or the
//! table while it takes the core.

use crate::abi::{
    CalloutAnswer, ConfigScheduler, EnvoyConfig, FilterScheduler, Outgoing, RawHeaders,
};
use crate::calls::CallTable;
use crate::grpc::{CheckCall, GrpcReply};
use crate::host::{now_us, random_key, NativeHost, NativeWorker};
use crate::wake::WakeThread;
use authz_core::Policy;
use filter_core::{CallId, CallOutcome, CheckOrder, CheckPurpose, Command, Event};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The first wake-up comes this soon after the configuration is created: it starts the first
/// key fetch and the first change-feed read (clusters may not be ready during creation).
const FIRST_WAKE: Duration = Duration::from_millis(20);

/// The configuration scheduler's event ids.
pub const EVENT_WAKE: u64 = 1;
pub const EVENT_MAIN_WORK: u64 = 2;

/// The core.
pub struct Core {
    pub worker: NativeWorker,
}

/// The configuration-level calls out (made and answered on the main thread only; the lock is
/// never held while Envoy is called, which may answer inline).
#[derive(Default)]
struct ConfigCalls {
    /// One-shot callouts (key fetches, change-feed requests) by Envoy's callout id.
    callouts: CallTable<Option<CalloutAnswer>>,
    /// Streams (checks after the answer) by Envoy's stream id, with their answer so far.
    streams: CallTable<GrpcReply>,
}

/// Commands for one paused request, and the scheduler that wakes its thread.
#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<MailboxInner>,
}

#[derive(Default)]
struct MailboxInner {
    /// `None` once the request is gone.
    scheduler: Option<FilterScheduler>,
    pending: Vec<Command>,
}

impl Mailbox {
    /// A mailbox whose commands wake the request through `scheduler`.
    pub fn new(scheduler: FilterScheduler) -> Mailbox {
        Mailbox {
            inner: Mutex::new(MailboxInner {
                scheduler: Some(scheduler),
                pending: Vec::new(),
            }),
        }
    }

    /// Leaves `command` for the request and wakes its thread; false when the request is gone.
    fn post(&self, command: Command) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let Some(scheduler) = &inner.scheduler else {
            return false;
        };
        scheduler.commit(0);
        inner.pending.push(command);
        true
    }

    /// The commands left for the request (on its thread, in its `scheduled` hook).
    pub fn take(&self) -> Vec<Command> {
        match self.inner.lock() {
            Ok(mut inner) => std::mem::take(&mut inner.pending),
            Err(_) => Vec::new(),
        }
    }

    /// The request is gone: no more commands are left for it; its scheduler is deleted here
    /// (on its thread), under the lock `post` commits under.
    pub fn close(&self) -> Vec<Command> {
        match self.inner.lock() {
            Ok(mut inner) => {
                inner.scheduler = None;
                std::mem::take(&mut inner.pending)
            }
            Err(_) => Vec::new(),
        }
    }
}

/// What one filter configuration shares across Envoy's threads.
pub struct Shared {
    core: Mutex<Core>,
    /// The policy the core was built with (read without the lock: requests' headers are read
    /// against it).
    pub policy: Policy,
    envoy: EnvoyConfig,
    scheduler: Arc<ConfigScheduler>,
    wake: Mutex<Option<WakeThread>>,
    mailboxes: Mutex<HashMap<u32, Arc<Mailbox>>>,
    main_work: Mutex<Vec<Command>>,
    calls: Mutex<ConfigCalls>,
    next_context: AtomicU32,
    /// This proxy's `region/zone` (the policy's `server.client_locality`: the ABI exposes no
    /// node to read it from).
    pub locality: Option<String>,
}

impl Shared {
    /// The configuration's state, on the main thread while Envoy creates the configuration.
    pub fn new(policy: Policy, envoy: EnvoyConfig) -> Option<Arc<Shared>> {
        let scheduler = Arc::new(envoy.new_scheduler()?);
        let locality = policy
            .server
            .as_ref()
            .and_then(|link| link.client_locality.clone());
        let mut worker = NativeWorker::new(
            policy.clone(),
            NativeHost::define(envoy.clone()),
            random_key(),
        );
        worker.set_locality(locality.clone());
        let shared = Arc::new(Shared {
            core: Mutex::new(Core { worker }),
            policy,
            envoy,
            scheduler: Arc::clone(&scheduler),
            wake: Mutex::new(None),
            mailboxes: Mutex::new(HashMap::new()),
            main_work: Mutex::new(Vec::new()),
            calls: Mutex::new(ConfigCalls::default()),
            next_context: AtomicU32::new(1),
            locality,
        });
        let poster = Arc::clone(&scheduler);
        let thread = WakeThread::start(move || poster.commit(EVENT_WAKE)).ok()?;
        thread.wake_in(FIRST_WAKE);
        if let Ok(mut wake) = shared.wake.lock() {
            *wake = Some(thread);
        }
        Some(shared)
    }

    /// Stops the waking thread (the configuration is being destroyed, on the main thread).
    pub fn stop(&self) {
        if let Ok(mut wake) = self.wake.lock() {
            wake.take();
        }
    }

    /// A new request's id, unique in this process.
    pub fn next_context_id(&self) -> u32 {
        self.next_context.fetch_add(1, Ordering::Relaxed)
    }

    /// The core, locked.
    pub fn lock(&self) -> Option<MutexGuard<'_, Core>> {
        self.core.lock().ok()
    }

    /// Hands `event` to the locked core and takes every command it queues.
    pub fn handle_locked(core: &mut Core, event: Event, now_us: u64) -> Vec<Command> {
        core.worker.handle(event, now_us);
        std::iter::from_fn(|| core.worker.poll_output()).collect()
    }

    /// Hands `event` to the core; returns the commands it queues. Arms the wake-up.
    pub fn handle(&self, event: Event, now_us: u64) -> Vec<Command> {
        let Some(mut core) = self.lock() else {
            return Vec::new();
        };
        let commands = Shared::handle_locked(&mut core, event, now_us);
        self.arm(&core, now_us);
        commands
    }

    /// Asks the waking thread for the core's next wake-up.
    pub fn arm(&self, core: &Core, now_us: u64) {
        let Some(at_ms) = core.worker.poll_timeout() else {
            return;
        };
        let after = Duration::from_millis(at_ms.saturating_sub(now_us / 1000));
        if let Ok(wake) = self.wake.lock() {
            if let Some(thread) = wake.as_ref() {
                thread.wake_in(after);
            }
        }
    }

    /// Registers the mailbox of paused request `context_id` (under the core's lock, so that a
    /// decision made for it later always finds it).
    pub fn register(&self, _core: &Core, context_id: u32, mailbox: Arc<Mailbox>) {
        if let Ok(mut mailboxes) = self.mailboxes.lock() {
            mailboxes.insert(context_id, mailbox);
        }
    }

    /// Request `context_id` is gone: its mailbox is closed and forgotten; what was left in it
    /// is returned (calls in it never started).
    pub fn unregister(&self, context_id: u32) -> Vec<Command> {
        let mailbox = match self.mailboxes.lock() {
            Ok(mut mailboxes) => mailboxes.remove(&context_id),
            Err(_) => None,
        };
        mailbox.map(|m| m.close()).unwrap_or_default()
    }

    /// Carries out commands that do not belong to the request running now (`None` on the
    /// main thread or in a hook of another request): a request's go to its mailbox, the rest
    /// to the main thread. Calls that cannot start are reported, and what that queues is
    /// carried out too.
    pub fn dispatch(&self, commands: Vec<Command>, on_main: bool) {
        let mut queue = commands;
        while !queue.is_empty() {
            let mut ended = Vec::new();
            for command in queue {
                self.dispatch_one(command, on_main, &mut ended);
            }
            queue = self.report_ended(ended);
        }
    }

    /// Reports calls that ended while they were being started (or could not start); returns
    /// the commands that queues.
    pub fn report_ended(&self, calls: Vec<(CallId, CallOutcome)>) -> Vec<Command> {
        if calls.is_empty() {
            return Vec::new();
        }
        let now = now_us().unwrap_or_default();
        let Some(mut core) = self.lock() else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        for (call, outcome) in calls {
            let event = Event::CallEnded { call, outcome };
            commands.extend(Shared::handle_locked(&mut core, event, now));
        }
        self.arm(&core, now);
        commands
    }

    fn dispatch_one(
        &self,
        command: Command,
        on_main: bool,
        ended: &mut Vec<(CallId, CallOutcome)>,
    ) {
        match command_owner(&command) {
            Some(context_id) => {
                let mailbox = match self.mailboxes.lock() {
                    Ok(mailboxes) => mailboxes.get(&context_id).cloned(),
                    Err(_) => None,
                };
                let check = match &command {
                    Command::Check { call, .. } => Some(*call),
                    _ => None,
                };
                let posted = mailbox.is_some_and(|mailbox| mailbox.post(command));
                // A request that is gone takes no decision; its Check never starts.
                if let (false, Some(call)) = (posted, check) {
                    ended.push((call, CallOutcome::NotStarted));
                }
            }
            None if on_main => {
                if let Some(done) = self.config_call(command) {
                    ended.push(done);
                }
            }
            None => {
                if let Ok(mut work) = self.main_work.lock() {
                    work.push(command);
                }
                self.scheduler.commit(EVENT_MAIN_WORK);
            }
        }
    }

    /// Makes a configuration-level call (main thread); returns the call and how it ended when
    /// it could not start or was answered while it started.
    fn config_call(&self, command: Command) -> Option<(CallId, CallOutcome)> {
        let (call, cluster, headers, timeout) = match command {
            Command::Fetch { call, order } => (
                call,
                order.cluster,
                get_headers(&order.authority, &order.path, None),
                order.timeout,
            ),
            Command::Poll { call, order } => (
                call,
                order.cluster,
                get_headers(&order.authority, &order.path, Some(&order.bearer)),
                order.timeout,
            ),
            Command::Check { call, order } => return self.check_after_answer(call, &order),
            // One core per process joins no feed group: it reads the feed itself.
            Command::Decide(_) | Command::ShareFeed { .. } => return None,
        };
        let request = Outgoing {
            cluster: &cluster,
            headers: &headers,
            body: &[],
            timeout,
        };
        let Some(id) = self.envoy.http_callout(&request) else {
            return Some((call, CallOutcome::NotStarted));
        };
        let finished = self
            .calls
            .lock()
            .ok()
            .and_then(|mut calls| calls.callouts.started(id, call));
        finished.map(|(call, answer, _)| (call, http_outcome(answer)))
    }

    /// A check after the answer: a configuration-level stream (its answer's status is in the
    /// trailers).
    fn check_after_answer(
        &self,
        call: CallId,
        order: &CheckOrder,
    ) -> Option<(CallId, CallOutcome)> {
        let Some(message) = filter_core::check_message(order, None, self.locality.clone()) else {
            return Some((call, CallOutcome::NotStarted));
        };
        let check = CheckCall::new(order, &message);
        let Some(id) = self.envoy.start_stream(&check.outgoing(order)) else {
            return Some((call, CallOutcome::NotStarted));
        };
        let finished = self
            .calls
            .lock()
            .ok()
            .and_then(|mut calls| calls.streams.started(id, call));
        finished.map(|(call, reply, completed)| (call, reply.outcome(completed)))
    }

    /// A call ended: the core gets it, and what it queues is carried out (main thread).
    fn call_ended(&self, call: CallId, outcome: CallOutcome) {
        let now = now_us().unwrap_or_default();
        let commands = self.handle(Event::CallEnded { call, outcome }, now);
        self.dispatch(commands, true);
    }

    /// A one-shot configuration-level callout ended (main thread).
    pub fn callout_ended(&self, callout_id: u64, answer: CalloutAnswer) {
        let finished = self.calls.lock().ok().and_then(|mut calls| {
            calls
                .callouts
                .update(callout_id, |kept| *kept = Some(answer));
            calls.callouts.ended(callout_id, true)
        });
        if let Some((call, answer, _)) = finished {
            self.call_ended(call, http_outcome(answer));
        }
    }

    fn with_stream(&self, stream_id: u64, update: impl FnOnce(&mut GrpcReply)) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.streams.update(stream_id, update);
        }
    }

    pub fn stream_headers(&self, stream_id: u64, headers: RawHeaders) {
        self.with_stream(stream_id, |reply| reply.headers(headers));
    }

    pub fn stream_data(&self, stream_id: u64, data: &[u8]) {
        self.with_stream(stream_id, |reply| reply.data(data));
    }

    pub fn stream_trailers(&self, stream_id: u64, trailers: RawHeaders) {
        self.with_stream(stream_id, |reply| reply.trailers(trailers));
    }

    /// A configuration-level stream ended, `completed` or reset (main thread).
    pub fn stream_ended(&self, stream_id: u64, completed: bool) {
        let finished = self
            .calls
            .lock()
            .ok()
            .and_then(|mut calls| calls.streams.ended(stream_id, completed));
        if let Some((call, reply, completed)) = finished {
            self.call_ended(call, reply.outcome(completed));
        }
    }

    /// The configuration's scheduler ran `event_id` on the main thread: a wake-up, or work
    /// posted from a worker thread.
    pub fn scheduled(&self, event_id: u64) {
        let mut commands = match self.main_work.lock() {
            Ok(mut work) => std::mem::take(&mut *work),
            Err(_) => Vec::new(),
        };
        if event_id == EVENT_WAKE {
            if let Some(now) = now_us() {
                commands.extend(self.handle(Event::Wake, now));
            }
        }
        self.dispatch(commands, true);
    }
}

/// What a one-shot callout's answer (none: it failed) tells the core.
fn http_outcome(answer: Option<CalloutAnswer>) -> CallOutcome {
    match answer {
        Some(answer) => CallOutcome::Http {
            status: answer.status(),
            body: (answer.completed && !answer.body.is_empty()).then_some(answer.body),
        },
        None => CallOutcome::Http {
            status: None,
            body: None,
        },
    }
}

/// The request a command must be carried out on, if any.
pub fn command_owner(command: &Command) -> Option<u32> {
    match command {
        Command::Decide(decided) => Some(decided.context_id),
        Command::Check { order, .. } => match order.purpose {
            CheckPurpose::Decide { context_id } => Some(context_id),
            CheckPurpose::AfterAnswer => None,
        },
        Command::Fetch { .. } | Command::Poll { .. } | Command::ShareFeed { .. } => None,
    }
}

/// The headers of a GET of `path` at `authority`, with an `authorization` header if given.
fn get_headers(authority: &str, path: &str, bearer: Option<&str>) -> Vec<(String, String)> {
    let mut headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), authority.to_owned()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    if let Some(bearer) = bearer {
        headers.push(("authorization".to_owned(), bearer.to_owned()));
    }
    headers
}
