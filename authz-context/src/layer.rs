//! A tower layer for a service behind the authorization layer: a request passes only with a
//! valid context for its method and route (named by the service's own `route_of`), and its
//! [`Claims`] go into the request's extensions for handlers to read. Every refusal is the same
//! empty 401; the reason goes to `on_refusal` (for the service's log), never to the client.
//!
//! Keys are the service's to refresh ([`ContextKeys::replace`] with a fetched JWKS): the
//! authorization server publishes each key a rotation period before it signs, so refreshing
//! once per period (its `cache-control: max-age` says how often) is enough.

use crate::{Claims, Expected, KeySet, Refusal, Verifier};
use http::{HeaderName, Method, Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

/// The keys a layer verifies with, shared with whatever refreshes them.
#[derive(Debug, Clone, Default)]
pub struct ContextKeys(Arc<RwLock<KeySet>>);

impl ContextKeys {
    /// Replaces the keys (after a JWKS fetch).
    pub fn replace(&self, keys: KeySet) {
        if let Ok(mut held) = self.0.write() {
            *held = keys;
        }
    }

    fn verify(
        &self,
        verifier: &Verifier,
        context: &str,
        request: &Expected<'_>,
        now: u64,
    ) -> Result<Claims, Refusal> {
        let keys = self.0.read().map_err(|_| Refusal::UnknownKey)?;
        verifier.verify(context, &keys, request, now)
    }
}

/// What the layer requires of a request, as the service's `route_of` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// No context needed (a public endpoint): passes untouched.
    Open,
    /// A context made for this route (the policy's route name), the request's method and, on
    /// a route with a tenant rule, this tenant.
    Route {
        route: String,
        tenant: Option<String>,
    },
}

type RouteOf = dyn Fn(&Method, &str) -> Guard + Send + Sync;
type OnRefusal = dyn Fn(Refusal, &Method, &str) + Send + Sync;

struct Settings {
    verifier: Verifier,
    keys: ContextKeys,
    header: HeaderName,
    route_of: Box<RouteOf>,
    on_refusal: Box<OnRefusal>,
}

/// The layer.
#[derive(Clone)]
pub struct ContextLayer(Arc<Settings>);

impl ContextLayer {
    /// Contexts in `header`, verified by `verifier` with `keys`, bound to the route
    /// `route_of(method, path)` names (or not needed, [`Guard::Open`]); `on_refusal` hears each
    /// refusal's reason, method and path (for a log line).
    pub fn new(
        verifier: Verifier,
        keys: ContextKeys,
        header: HeaderName,
        route_of: impl Fn(&Method, &str) -> Guard + Send + Sync + 'static,
        on_refusal: impl Fn(Refusal, &Method, &str) + Send + Sync + 'static,
    ) -> ContextLayer {
        ContextLayer(Arc::new(Settings {
            verifier,
            keys,
            header,
            route_of: Box::new(route_of),
            on_refusal: Box::new(on_refusal),
        }))
    }
}

impl<S> tower_layer::Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService {
            inner,
            settings: self.0.clone(),
        }
    }
}

/// The service the layer wraps around `S`.
#[derive(Clone)]
pub struct ContextService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> ContextService<S> {
    /// `Ok(None)`: an open endpoint.
    fn check<B>(&self, request: &Request<B>) -> Result<Option<Claims>, Refusal> {
        let s = &self.settings;
        let (route, tenant) = match (s.route_of)(request.method(), request.uri().path()) {
            Guard::Open => return Ok(None),
            Guard::Route { route, tenant } => (route, tenant),
        };
        let values: Vec<_> = request.headers().get_all(&s.header).iter().collect();
        let context = match values.as_slice() {
            [] => return Err(Refusal::Missing),
            [one] => one.to_str().map_err(|_| Refusal::Malformed)?,
            _ => return Err(Refusal::Malformed),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let expected = Expected {
            method: request.method().as_str(),
            route: &route,
            tenant: tenant.as_deref(),
        };
        s.keys
            .verify(&s.verifier, context, &expected, now)
            .map(Some)
    }
}

impl<S, B, RB> tower_service::Service<Request<B>> for ContextService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.check(&request) {
            Ok(claims) => {
                if let Some(claims) = claims {
                    request.extensions_mut().insert(claims);
                }
                Box::pin(self.inner.call(request))
            }
            Err(refusal) => {
                (self.settings.on_refusal)(refusal, request.method(), request.uri().path());
                let mut response = Response::new(RB::default());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
