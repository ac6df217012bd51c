//! The root context: loads and validates the plugin configuration, owns the worker state,
//! runs the timer, dispatches JWKS fetches, change-feed requests and checks after the answer
//! and receives their answers, and applies the decisions of requests that waited for keys.

use crate::effects::{apply_finals, dispatch_fetch, on_fetch_answer};
use crate::envoy_host::{random_key, EnvoyHost, FilterWorker};
use crate::host;
use crate::http::node_locality;
use crate::http::AuthzHttp;
use authz_core::ext_authz_proto::{encode_check_request, CheckFacts, CHECK_METHOD, CHECK_SERVICE};
use authz_core::{Error, Policy};
use filter_core::{BackgroundOrder, PollOrder, TICK};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// The timer period: the JWKS tick, or the epochs poll interval when that is shorter.
fn worker_tick(worker: &Option<Rc<RefCell<FilterWorker>>>) -> Duration {
    let poll = worker
        .as_ref()
        .and_then(|w| w.borrow().policy.feed().map(|e| e.interval_ms));
    match poll {
        Some(ms) if ms > 0 => TICK.min(Duration::from_millis(ms)),
        _ => TICK,
    }
}

/// The first tick comes this soon after configuration: it starts the first key fetch and the
/// first change-feed read, and until the feed has been read writes that honour revocations
/// fail closed. Later ticks come every [`worker_tick`].
const FIRST_TICK: Duration = Duration::from_millis(20);

pub struct AuthzRoot {
    context_id: u32,
    worker: Option<Rc<RefCell<FilterWorker>>>,
    /// Whether the timer runs at its regular period yet (after the first tick).
    regular_ticks: bool,
}

impl AuthzRoot {
    pub fn new(context_id: u32) -> AuthzRoot {
        AuthzRoot {
            context_id,
            worker: None,
            regular_ticks: false,
        }
    }

    fn tick(&self) {
        let Some(worker) = &self.worker else { return };
        let Some(now) = host::now_ms() else { return };
        worker.borrow().host.flush();
        let work = worker.borrow_mut().on_tick(now);
        for order in &work.fetches {
            dispatch_fetch(worker, order, self.context_id);
        }
        apply_finals(work.finals, self.context_id);
        if let Some(poll) = work.poll {
            dispatch_poll(worker, poll, now);
        }
        for order in work.background {
            dispatch_background(worker, order, now);
        }
    }
}

/// Dispatches a check after the answer from the root context (the request it concerns has
/// been answered, and its context may be gone before the server answers).
fn dispatch_background(worker: &Rc<RefCell<FilterWorker>>, order: BackgroundOrder, now: u64) {
    let request = &order.check.request;
    let headers = request
        .authorization
        .iter()
        .map(|value| ("authorization".to_owned(), value.clone()))
        .collect();
    let message = encode_check_request(CheckFacts {
        method: request.method.clone(),
        path: request.path.clone(),
        headers,
        tier: order.check.tier.as_str().to_owned(),
        client_locality: node_locality(),
        background: true,
        ..CheckFacts::default()
    });
    match host::dispatch_grpc(
        &order.cluster,
        CHECK_SERVICE,
        CHECK_METHOD,
        &message,
        order.timeout,
    ) {
        Some(token) => worker.borrow_mut().background_started(token, order, now),
        None => worker.borrow().background_not_started(&order),
    }
}

/// Dispatches a change-feed request; a request that cannot start counts as a failed one.
fn dispatch_poll(worker: &Rc<RefCell<FilterWorker>>, poll: PollOrder, now: u64) {
    let bearer = poll.bearer.as_str();
    let started = host::dispatch_get_with(
        &poll.cluster,
        &poll.authority,
        &poll.path,
        &[("authorization", bearer)],
        poll.timeout,
    );
    match started {
        Some(token) => worker.borrow_mut().poll_started(token),
        // A failed start never asks for an immediate retry (it would loop): the next tick does.
        None => {
            let _ = worker.borrow_mut().on_poll_response(None, None, now);
        }
    }
}

impl Context for AuthzRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(worker) = &self.worker else { return };
        if worker.borrow().owns_poll(token_id) {
            let status = host::call_response_status();
            let body = host::call_response_body(body_size);
            let now = host::now_ms().unwrap_or(0);
            let next = worker.borrow_mut().on_poll_response(status, body, now);
            // A held request answered: the next one goes out at once (push).
            if let Some(poll) = next {
                dispatch_poll(worker, poll, now);
            }
            return;
        }
        on_fetch_answer(worker, token_id, body_size, self.context_id);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(worker) = &self.worker else { return };
        if !worker.borrow().owns_background(token_id) {
            return;
        }
        let body = host::grpc_response_body(status_code, response_size);
        let now = host::now_ms().unwrap_or(0);
        worker
            .borrow_mut()
            .on_background_reply(token_id, status_code, body, now);
    }
}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = host::plugin_configuration().unwrap_or_default();
        // The feed secret may be a `${NAME}` reference to the VM's environment (a Secret
        // through the proxy's environment; see `authz_core::env_refs`).
        let environment = |name: &str| std::env::var(name).ok();
        let policy = match Policy::from_json_with_env(&bytes, &environment) {
            Ok(policy) => policy,
            Err(Error::InvalidConfig(problems)) => {
                host::error(&format!(
                    "jwt_authz configuration rejected: {} problem(s)",
                    problems.len()
                ));
                for problem in &problems {
                    host::error(&format!("jwt_authz configuration problem: {problem}"));
                }
                return false;
            }
            Err(other) => {
                host::error(&format!("jwt_authz configuration rejected: {other}"));
                return false;
            }
        };
        host::info(&format!(
            "jwt_authz configured: {} provider(s), {} route(s), default tier {}",
            policy.providers.len(),
            policy.routes.routes.len(),
            policy.routes.default.tier
        ));
        let worker = Rc::new(RefCell::new(FilterWorker::new(
            policy,
            EnvoyHost::define(),
            random_key(),
        )));
        self.worker = Some(worker);
        self.regular_ticks = false;
        if !host::set_tick_period(FIRST_TICK) {
            host::error("jwt_authz could not start its timer");
            return false;
        }
        // The first fetch starts on the first tick (soon): during on_configure Envoy's clusters
        // may not be initialised yet, and a call dispatched then can be lost until its lease
        // ends.
        true
    }

    fn on_tick(&mut self) {
        if !self.regular_ticks {
            self.regular_ticks = host::set_tick_period(worker_tick(&self.worker));
        }
        self.tick();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzHttp::new(context_id, self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
