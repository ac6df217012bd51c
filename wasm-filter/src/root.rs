//! The root context: loads and validates the plugin configuration, creates the worker and its
//! driver, joins the proxy's feed group with a shared queue of its own, and turns the timer,
//! the answers to calls made from here (wake-ups make the change-feed requests, checks after
//! the answer and scheduled key fetches) and the feed answers other VMs share on its queue into
//! events.

use crate::driver::{CallKind, Driver};
use crate::envoy_host::{random_key, EnvoyHost, FilterWorker};
use crate::host;
use crate::http::AuthzHttp;
use authz_core::{Error, Policy};
use filter_core::CallOutcome;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use std::time::Duration;

/// The first wake-up comes this soon after configuration: it starts the first key fetch and
/// the first change-feed read, and until the feed has been read writes that honour revocations
/// fail closed. Later ones come when the core asks (`poll_timeout`).
const FIRST_TICK: Duration = Duration::from_millis(20);

pub struct AuthzRoot {
    context_id: u32,
    driver: Option<Rc<Driver>>,
    /// This VM's queue, where answers the proxy's feed reader shares arrive.
    feed_queue: Option<u32>,
}

/// The most shared answers taken off the queue per notification or timer wake-up (more wait for
/// the next).
const MAX_SHARED_PER_WAKE: usize = 64;

impl AuthzRoot {
    pub fn new(context_id: u32) -> AuthzRoot {
        AuthzRoot {
            context_id,
            driver: None,
            feed_queue: None,
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
        let Some(driver) = &self.driver else { return };
        let outcome = CallOutcome::Http {
            status: host::call_response_status(),
            body: host::call_response_body(body_size),
        };
        driver.call_ended(CallKind::Http, token_id, outcome, self.context_id);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(driver) = &self.driver else { return };
        let outcome = CallOutcome::Grpc {
            status: status_code,
            body: host::grpc_response_body(status_code, response_size),
        };
        driver.call_ended(CallKind::Grpc, token_id, outcome, self.context_id);
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
        let mut worker = FilterWorker::new(policy, EnvoyHost::define(), random_key());
        let configured = worker
            .policy
            .server
            .as_ref()
            .and_then(|link| link.client_locality.clone());
        worker.set_locality(configured.or_else(crate::check::node_locality));
        if worker.policy.feed().is_some() {
            // One VM of the proxy reads the change feed and shares its answers through each
            // VM's queue; a VM without a queue reads on its own.
            let [high, low] = random_key();
            let name = format!("jwt_authz/v1/feed_member/{high:016x}{low:016x}");
            match host::register_queue(&name) {
                Some(queue) => {
                    self.feed_queue = Some(queue);
                    worker.join_feed(name);
                }
                None => host::warn(
                    "jwt_authz could not register a shared queue: this VM reads the change feed on its own",
                ),
            }
        }
        let driver = Rc::new(Driver::new(worker));
        driver.timer_armed(driver.now_us() / 1000 + FIRST_TICK.as_millis() as u64);
        self.driver = Some(driver);
        if !host::set_tick_period(FIRST_TICK) {
            host::error("jwt_authz could not start its timer");
            return false;
        }
        // The first fetch starts on the first tick (soon): during on_configure Envoy's clusters
        // may not be initialised yet, and a call dispatched then can be lost until its lease
        // ends.
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let (Some(driver), Some(queue)) = (&self.driver, self.feed_queue) else {
            return;
        };
        if queue_id == queue {
            driver.shared_answers(
                self.context_id,
                host::dequeue_all(queue, MAX_SHARED_PER_WAKE),
            );
        }
    }

    fn on_tick(&mut self) {
        if let Some(driver) = &self.driver {
            // Whatever one notification left on the queue is taken now.
            if let Some(queue) = self.feed_queue {
                driver.shared_answers(
                    self.context_id,
                    host::dequeue_all(queue, MAX_SHARED_PER_WAKE),
                );
            }
            driver.wake(self.context_id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzHttp::new(context_id, self.driver.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
