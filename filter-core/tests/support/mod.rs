//! What the filter-core specifications share: one proxy's shared data with Envoy's
//! compare-and-swap rules, a host per worker over it (logs, metrics), and driving a worker as a
//! host does (one event, then every command it queued, sorted by kind).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use authz_core::ext_authz_proto::{
    encode, CacheDirective, CheckResponse, HeaderValue, HeaderValueOption, OkHttpResponse,
    RpcStatus,
};
use dev_keys::{KeyAlgorithm, SigningKey};
use filter_core::{
    CallId, CallOutcome, CheckOrder, Command, Counter, Event, FetchOrder, Final, FinalAction,
    Gauge, Histogram, Host, LogLevel, OwnedRequest, PollOrder, SharedWrite, Worker,
};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// One proxy's shared data, with Envoy's rules: every write gets a new token; a write with a
/// token succeeds only if the key still has it; a write without one (or to an absent key)
/// always succeeds.
#[derive(Default)]
pub struct Store {
    pub data: HashMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
}

/// A host for one worker: the proxy's store, plus this worker's logs and metrics.
#[derive(Clone, Default)]
pub struct FakeHost {
    pub store: Rc<RefCell<Store>>,
    pub logs: Rc<RefCell<Vec<(LogLevel, String)>>>,
    pub counts: Rc<RefCell<HashMap<Counter, u64>>>,
    pub gauges: Rc<RefCell<HashMap<Gauge, u64>>>,
    pub samples: Rc<RefCell<Vec<(Histogram, u64)>>>,
    /// Whether `now_us` answers (with the time of the event being driven); off, it answers
    /// `None`, as a host without a clock does.
    pub clocked: Rc<Cell<bool>>,
}

thread_local! {
    /// The time of the event being driven (µs): what a clocked host's `now_us` reads.
    static EVENT_US: Cell<u64> = const { Cell::new(0) };
}

impl FakeHost {
    pub fn sharing(store: &Rc<RefCell<Store>>) -> FakeHost {
        FakeHost {
            store: store.clone(),
            ..FakeHost::default()
        }
    }

    pub fn count(&self, counter: Counter) -> u64 {
        self.counts.borrow().get(&counter).copied().unwrap_or(0)
    }

    pub fn logged(&self, part: &str) -> bool {
        self.logs
            .borrow()
            .iter()
            .any(|(_, line)| line.contains(part))
    }
}

impl Host for FakeHost {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.store.borrow().data.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> SharedWrite {
        let mut store = self.store.borrow_mut();
        let current = store.data.get(key).map(|(_, c)| *c);
        if let (Some(asked), Some(current)) = (cas, current) {
            if asked != current {
                return SharedWrite::CasMismatch;
            }
        }
        store.next_cas += 1;
        let next = store.next_cas;
        store.data.insert(key.to_owned(), (value.to_vec(), next));
        SharedWrite::Written
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }

    fn debug_enabled(&self) -> bool {
        true
    }

    fn count(&self, counter: Counter) {
        *self.counts.borrow_mut().entry(counter).or_default() += 1;
    }

    fn set_gauge(&self, gauge: Gauge, value: u64) {
        self.gauges.borrow_mut().insert(gauge, value);
    }

    fn record(&self, histogram: Histogram, value: u64) {
        self.samples.borrow_mut().push((histogram, value));
    }

    fn now_us(&self) -> Option<u64> {
        self.clocked.get().then(|| EVENT_US.with(Cell::get))
    }
}

/// What the commands one event left in the queue asked for, by kind, in queue order.
#[derive(Debug, Default)]
pub struct Out {
    pub finals: Vec<Final>,
    pub fetches: Vec<(CallId, FetchOrder)>,
    pub polls: Vec<(CallId, PollOrder)>,
    pub checks: Vec<(CallId, CheckOrder)>,
    /// Answers shared with other workers: to whom, what.
    pub shared: Vec<(Vec<String>, Vec<u8>)>,
}

impl Out {
    pub fn is_empty(&self) -> bool {
        self.finals.is_empty()
            && self.fetches.is_empty()
            && self.polls.is_empty()
            && self.checks.is_empty()
    }

    /// The one decision of a request decided at once (and nothing else asked for).
    pub fn done(self) -> Final {
        assert!(
            self.finals.len() == 1 && self.fetches.is_empty() && self.checks.is_empty(),
            "expected a decision, got {self:?}"
        );
        self.finals.into_iter().next().unwrap()
    }

    /// A request paused for keys: the fetch it makes, if it is the one to make it.
    pub fn waits(self) -> Option<(CallId, FetchOrder)> {
        assert!(
            self.finals.is_empty() && self.checks.is_empty() && self.fetches.len() <= 1,
            "expected a wait, got {self:?}"
        );
        self.fetches.into_iter().next()
    }

    /// A request paused for a Check call: the call and what it asks.
    pub fn check(self) -> (CallId, CheckOrder) {
        assert!(
            self.finals.is_empty() && self.checks.len() == 1,
            "expected a Check call, got {self:?}"
        );
        self.checks.into_iter().next().unwrap()
    }

    /// The change-feed request this asked for, if any.
    pub fn poll(&self) -> Option<(CallId, PollOrder)> {
        assert!(
            self.polls.len() <= 1,
            "one feed request at a time: {self:?}"
        );
        self.polls.first().cloned()
    }
}

/// Driving a worker as a host does: one event, then every command it queued.
pub trait Drive {
    fn event(&mut self, event: Event, now_ms: u64) -> Out;

    fn request(&mut self, context_id: u32, request: OwnedRequest, now_ms: u64) -> Out {
        self.event(
            Event::Request {
                context_id,
                request,
            },
            now_ms,
        )
    }

    fn wake(&mut self, now_ms: u64) -> Out {
        self.event(Event::Wake, now_ms)
    }

    /// An HTTP call's answer (`status` `None`: the call failed).
    fn answer(
        &mut self,
        call: CallId,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Out {
        let outcome = CallOutcome::Http { status, body };
        self.event(Event::CallEnded { call, outcome }, now_ms)
    }

    /// A gRPC call's answer.
    fn grpc(&mut self, call: CallId, status: u32, body: Option<Vec<u8>>, now_ms: u64) -> Out {
        let outcome = CallOutcome::Grpc { status, body };
        self.event(Event::CallEnded { call, outcome }, now_ms)
    }

    /// A call ended without an answer (`NotStarted`, `Abandoned`).
    fn lost(&mut self, call: CallId, outcome: CallOutcome, now_ms: u64) -> Out {
        self.event(Event::CallEnded { call, outcome }, now_ms)
    }

    fn ended(&mut self, context_id: u32, now_ms: u64) -> Out {
        self.event(Event::RequestEnded { context_id }, now_ms)
    }
}

impl<H: Host> Drive for Worker<H> {
    fn event(&mut self, event: Event, now_ms: u64) -> Out {
        EVENT_US.with(|at| at.set(now_ms * 1000));
        self.handle(event, now_ms * 1000);
        let mut out = Out::default();
        while let Some(command) = self.poll_output() {
            match command {
                Command::Decide(decided) => out.finals.push(decided),
                Command::Fetch { call, order } => out.fetches.push((call, order)),
                Command::Poll { call, order } => out.polls.push((call, order)),
                Command::Check { call, order } => out.checks.push((call, order)),
                Command::ShareFeed { to, message } => out.shared.push((to, message)),
            }
        }
        out
    }
}

/// A Check reply as its bytes.
pub fn reply(response: CheckResponse) -> Vec<u8> {
    encode(&response)
}

/// An allow for `alice`, decided after every change these specs feed (change version 1000).
pub fn ok_reply(ttl_ms: u64, policy_version: u64, unconfirmed: bool) -> Vec<u8> {
    ok_reply_with(CacheDirective {
        ttl_ms,
        policy_version,
        change_version: 1_000,
        subject: Some("alice".into()),
        state_unconfirmed: unconfirmed,
        ..CacheDirective::default()
    })
}

/// An allow for `alice` with this cache directive.
pub fn ok_reply_with(directive: CacheDirective) -> Vec<u8> {
    reply(CheckResponse {
        status: Some(RpcStatus {
            code: 0,
            message: String::new(),
        }),
        ok_response: Some(OkHttpResponse {
            headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "X-Auth-Subject".into(),
                    value: "alice".into(),
                }),
                append_action: 0,
            }],
            headers_to_remove: vec!["authorization".into()],
        }),
        denied_response: None,
        dynamic_metadata: Some(directive.to_metadata()),
    })
}

/// A format-2 feed answer from the fields given (confirmed unless they say otherwise).
pub fn feed(mut fields: Value) -> Vec<u8> {
    fields["format"] = json!(2);
    if fields.get("confirmed").is_none() {
        fields["confirmed"] = json!(true);
    }
    fields.to_string().into_bytes()
}

/// The issuer of the specs' provider.
pub const ISSUER: &str = "https://idp.test";
/// A time well after the tokens' `iat` (ms).
pub const T0: u64 = 1_900_000_000_000;

/// A provider signing with one ES256 key (`kid`), for tokens valid at [`T0`].
pub struct Idp {
    pub key: SigningKey,
}

impl Idp {
    pub fn new(kid: &str) -> Idp {
        Idp {
            key: SigningKey::generate(KeyAlgorithm::Es256, kid).expect("key"),
        }
    }

    pub fn jwks(&self) -> Vec<u8> {
        dev_keys::jwks(&[&self.key]).to_string().into_bytes()
    }

    pub fn token(&self, sub: &str) -> String {
        let claims = json!({"iss": ISSUER, "aud": "api", "sub": sub,
                            "iat": T0 / 1000 - 10, "exp": T0 / 1000 + 3600});
        self.key.sign(&claims).expect("sign")
    }
}

/// The specs' provider, its keys fetched from the `idp` cluster.
pub fn remote_provider() -> Value {
    json!([{"name": "idp", "issuer": ISSUER, "audiences": ["api"],
            "jwks": {"remote": {"cluster": "idp", "path": "/jwks",
                                "min_refetch_interval_seconds": 30,
                                "refresh_interval_seconds": 300,
                                "timeout_ms": 1000}}}])
}

/// A worker for `policy` (with a change feed) that has its keys and has read `first_answer`
/// from its feed; the held request it sent next.
pub fn started_with_feed(
    policy: authz_core::Policy,
    store: &Rc<RefCell<Store>>,
    idp: &Idp,
    first_answer: Value,
) -> (Worker<FakeHost>, FakeHost, CallId) {
    let host = FakeHost::sharing(store);
    let mut w = Worker::new(policy, host.clone(), [1, 2]);
    let woke = w.wake(T0);
    let (poll, _) = woke.poll().expect("a first feed request");
    for (fetch, _) in &woke.fetches {
        w.answer(*fetch, Some(200), Some(idp.jwks()), T0);
    }
    let (held, _) = w
        .answer(poll, Some(200), Some(feed(first_answer)), T0)
        .poll()
        .expect("a held request next");
    (w, host, held)
}

/// The HTTP status a decision answers with.
pub fn status_of(step: &Final) -> u16 {
    match &step.action {
        FinalAction::Allow { .. } => 200,
        FinalAction::Deny(response) => response.status,
        FinalAction::Respond { status, .. } => *status,
    }
}
