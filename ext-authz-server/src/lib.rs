//! The companion ext_authz server: Envoy's `envoy.service.auth.v3.Authorization` over gRPC,
//! for routes that need what a proxy cannot do locally: token introspection (RFC 7662) with
//! caching, single-flight and batching, refresh-ahead, step-up, rate limits, revocation and the
//! fail-closed rules of privileged tiers.
//!
//! [`serve`] runs it on given listeners until `shutdown` resolves; `main` adds configuration
//! loading and signals. Pure decisions (freshness, fallback, step-up, circuit breaker, route
//! rules) live in `authz-core`; this crate moves bytes and holds state.

pub mod admin;
pub mod admin_canary;
pub mod admin_port;
pub mod batch;
pub mod batch_api;
pub mod bearer;
pub mod cached;
pub mod canary;
pub mod changes;
pub mod check;
pub mod clock;
pub mod config;
pub mod context_keys;
pub mod error;
pub mod feed;
pub mod feed_pacing;
pub mod idp;
pub mod idp_client;
pub mod idp_http;
pub mod introspector;
pub mod limits;
pub mod metrics;
pub mod os_thread;
pub mod otlp;
pub mod reply;
pub mod route_policies;
pub mod shared;
pub mod status_lists;
pub mod switches_file;
#[cfg(test)]
mod test_http;
pub mod versions;

use crate::changes::ChangeSink;
use crate::check::CheckService;
use crate::clock::{SharedClock, SystemClock};
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::introspector::Introspector;
use crate::versions::{Applied, Change, Versions};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Locks a mutex, taking it over if a panicking holder poisoned it: the guarded state (caches,
/// counters, revocations) stays usable, and refusing every later check would be worse.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// gRPC request metadata naming the calling proxy's locality (`region/zone`).
pub const CLIENT_LOCALITY_METADATA: &str = "x-authz-client-locality";

/// The gRPC face of [`CheckService`].
struct Grpc(Arc<CheckService>);

#[tonic::async_trait]
impl Authorization for Grpc {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // Native ext_authz can name its locality through `initial_metadata`, and carries its
        // span's trace context when Envoy traces.
        let metadata = request.metadata();
        let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let call = check::CallMetadata {
            locality: header(CLIENT_LOCALITY_METADATA).map(str::to_owned),
            trace: check::trace_parent(header),
        };
        Ok(Response::new(
            self.0.decide(request.into_inner(), call).await,
        ))
    }
}

/// The two listeners the server uses.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &ServerConfig) -> Result<Listeners, ServerError> {
        Ok(Listeners {
            grpc: TcpListener::bind(config.listen).await?,
            admin: TcpListener::bind(config.admin_listen).await?,
        })
    }
}

/// This instance's revocation state and the caches a change must reach: where changes made
/// here and changes read from the shared tier are applied.
pub struct LocalChanges {
    versions: Arc<Versions>,
    introspector: Arc<Introspector>,
    idp: Arc<idp::Idp>,
    metrics: Arc<metrics::Metrics>,
    clock: SharedClock,
    /// Where the switches are kept across restarts without a shared tier.
    switches_file: Option<switches_file::SwitchesFile>,
    /// Rebuilt when the `canary` or `policy` switch changes.
    route_policies: Arc<route_policies::RoutePolicies>,
}

impl ChangeSink for LocalChanges {
    /// The revocation state first, then its cache effects.
    fn apply(&self, change: &Change, seq: Option<u64>) -> Applied {
        let applied = self.versions.apply_at(change, seq, self.clock.now_ms());
        if applied.new {
            match change {
                Change::RevokeToken(key, _) => self.introspector.invalidate(key),
                Change::BumpPolicy { .. } => self.introspector.invalidate_all(),
                Change::Switch(switch) => self.switched(switch),
                Change::RevokeJti(..) | Change::RevokeSubject { .. } | Change::RevokeStatus(..) => {
                }
            }
        }
        applied
    }
}

impl LocalChanges {
    /// A switch changed (here or on another instance): its effects on this server's caches
    /// and keys, logged (who, what, when) and counted.
    fn switched(&self, switch: &versions::SwitchChange) {
        use authz_core::switches::Setting;
        match &switch.setting {
            Setting::Flush => {
                self.introspector.invalidate_all();
                self.idp.forget_verifications();
            }
            Setting::JwksRefetch => self.idp.demand_refetch(switch.at_ms),
            Setting::Canary { .. } | Setting::Policy { .. } => {
                self.route_policies.update(&self.versions.switches())
            }
            Setting::CacheMax { .. }
            | Setting::FailClosed { .. }
            | Setting::AsyncVerificationOff { .. } => {}
        }
        tracing::warn!(
            switch = switch.setting.name(),
            tier = switch.setting.tier().map(|t| t.as_str()),
            setting = %switch.to_json(),
            by = %switch.by,
            at_ms = switch.at_ms,
            "switch_changed"
        );
        self.metrics.inc(
            "authz_switch_changes_total",
            &[
                ("switch", switch.setting.name()),
                (
                    "on",
                    if switch.setting.turns_on() {
                        "true"
                    } else {
                        "false"
                    },
                ),
            ],
        );
        if let Some(file) = &self.switches_file {
            file.store(|| self.versions.switch_changes());
        }
    }
}

/// Builds the shared check service on the system clock.
pub fn build_service(config: ServerConfig) -> Result<Arc<CheckService>, ServerError> {
    build_service_with_clock(config, Arc::new(SystemClock))
}

/// Builds the shared check service: the composition root, the one place that knows every part.
pub fn build_service_with_clock(
    config: ServerConfig,
    clock: SharedClock,
) -> Result<Arc<CheckService>, ServerError> {
    let metrics = Arc::new(metrics::Metrics::default());
    if config.allow_insecure_http {
        tracing::warn!(
            "allow_insecure_http: IdP URLs may be plaintext http to hosts that are not loopback; the client secret, introspected tokens and keys can then be read and changed on the way"
        );
    }
    if config.introspection.auth == config::ClientAuth::None {
        tracing::warn!(
            "introspection.auth_method: none: the IdP is asked without client authentication; the start-up probe proves the endpoint answers RFC 7662, not that it refuses other callers (keep it on a network only this server reaches)"
        );
    }
    if let Some(redis) = config
        .redis
        .as_ref()
        .filter(|r| r.sentinel.is_some() && r.min_replicas == 0)
    {
        tracing::warn!(
            key_prefix = %redis.key_prefix,
            "redis.sentinel without redis.min_replicas: a change answers \"published\" before any replica holds it (a failover finds it missing; the instances that hold it republish it)"
        );
    }
    if !config.idp.discovery && config.idp.jwks_uri.is_none() {
        tracing::warn!(
            "no signing keys (token.jwks_uri, or token.discovery: true): every JWT access token is introspected"
        );
    }
    let idp = idp::Idp::new(&config, clock.clone(), metrics.clone())?;
    let http = idp_http::client(
        &config,
        config.introspection.timeout,
        Some(config.introspection.max_idle_connections),
    )?;
    let client = idp_client::IdpClient::new(config.introspection.clone(), idp.clone(), http)?
        .with_client_grant(config.token.client_grant.clone());
    let lifetime_bound_ms = config.token.max_lifetime_seconds.map(|max| {
        let skew = config.token.clock_skew_seconds.max(0);
        (max.saturating_add(skew).max(0) as u64).saturating_mul(1000)
    });
    let versions = Arc::new(match config.redis {
        Some(_) => versions::Versions::shared(),
        None => versions::Versions::default(),
    });
    versions.set_page_rows(config.feed_page_rows);
    versions.set_lifetime_bound_ms(lifetime_bound_ms);
    let shared = match &config.redis {
        Some(redis) => Some(Arc::new(
            shared::Shared::new(
                redis.clone(),
                format!("{}/{}/{}", config.region, config.zone, std::process::id()),
                versions.clone(),
                metrics.clone(),
                clock.clone(),
            )
            .map_err(|e| ServerError::InvalidConfig(vec![format!("redis.url: {e}")]))?,
        )),
        None => None,
    };
    let introspector = introspector::Introspector::new(
        &config,
        client,
        metrics.clone(),
        shared.clone(),
        clock.clone(),
    );
    let limiters = Arc::new(limits::Limiters::new(&config.rate_limits));
    let route_policies = Arc::new(route_policies::RoutePolicies::new(config.routes.clone()));
    let changes: Arc<dyn ChangeSink> = Arc::new(LocalChanges {
        route_policies: route_policies.clone(),
        versions: versions.clone(),
        introspector: introspector.clone(),
        idp: idp.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        switches_file: config
            .switches_file
            .clone()
            .map(switches_file::SwitchesFile::new),
    });
    if let Some(path) = &config.switches_file {
        let kept =
            switches_file::load(path).map_err(|why| ServerError::InvalidConfig(vec![why]))?;
        for change in kept {
            let change = Change::Switch(change);
            changes.apply(&change, None);
            // With a shared tier, published on connect (the latest change of each switch wins
            // wherever it was made).
            if let Some(shared) = &shared {
                shared.keep_for_publishing(change);
            }
        }
    } else if shared.is_none() {
        tracing::warn!(
            "no shared tier and no switches_file: incident switches set through the admin API do not survive a restart of this server"
        );
    }
    let status_lists = match &config.status_lists {
        Some(settings) => {
            let write_rules = config.tier_rules(authz_core::Tier::StandardWrite);
            Some(status_lists::StatusLists::new(status_lists::Parts {
                settings: settings.clone(),
                issuer: config.token.issuer.clone(),
                skew_seconds: config.token.clock_skew_seconds,
                lifetime_bound_ms,
                current_within_ms: write_rules.max_staleness_ms + write_rules.stale_if_error_ms,
                fetch_wait: config.check_timeout / 2,
                http: idp_http::client(&config, config.idp.fetch_timeout, None)?,
                idp: idp.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                versions: versions.clone(),
                changes: changes.clone(),
                shared: shared.clone(),
            }))
        }
        None => None,
    };
    let otlp = match &config.otlp {
        Some(settings) => otlp::Exporter::start(
            settings.clone(),
            idp_http::client(&config, std::time::Duration::from_secs(5), None)?,
            metrics.clone(),
        ),
        None => None,
    };
    Ok(Arc::new(CheckService {
        otlp,
        config: Arc::new(config),
        introspector,
        idp,
        versions,
        shared,
        limiters,
        metrics,
        clock,
        changes,
        status_lists,
        route_policies,
    }))
}

/// Where changes to `service`'s state go.
pub fn change_sink(service: &CheckService) -> Arc<dyn ChangeSink> {
    service.changes.clone()
}

/// Serves Check, gRPC health and the admin port until `shutdown` resolves; then reports
/// NOT_SERVING, fails `/readyz`, waits `drain`, and stops accepting.
pub async fn serve(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with_clock(config, listeners, shutdown, Arc::new(SystemClock)).await
}

/// [`serve`] on a given clock (tests move a manual one instead of sleeping).
pub async fn serve_with_clock(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: SharedClock,
) -> Result<(), ServerError> {
    let drain = config.drain;
    // TLS (rediss://) uses rustls with the ring provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let service = build_service_with_clock(config, clock)?;
    let changes = change_sink(&service);
    let ready = Arc::new(AtomicBool::new(true));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AuthorizationServer<Grpc>>()
        .await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = admin::Admin {
        service: service.clone(),
        changes: changes.clone(),
        ready: ready.clone(),
        feed: Arc::new(feed::Feed {
            service: service.clone(),
            watchers: feed::FeedWatchers::new(
                service.config.feed_catch_up_bytes_per_second,
                service.shared.is_some(),
            ),
            stop: stop_rx.clone(),
        }),
        stop: stop_rx.clone(),
        main: tokio::runtime::Handle::current(),
    };
    let admin_app = admin::router(admin.clone()).merge(batch_api::router(
        service.clone(),
        tokio::runtime::Handle::current(),
    ));
    // The admin API and the change feed on a runtime of their own (two threads, so a push
    // to thousands of held requests uses both cores when they are idle), at a lower
    // priority: a flood of feed reads cannot take the checks' CPU (see `os_thread`).
    let admin_listener = listeners.admin.into_std().map_err(ServerError::Io)?;
    let (admin_done, admin_task) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("authz-admin".into())
        .spawn(move || {
            os_thread::lower_priority_of_this_thread();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("authz-admin")
                .on_thread_start(os_thread::lower_priority_of_this_thread)
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    match TcpListener::from_std(admin_listener) {
                        Ok(listener) => admin_port::serve(listener, admin_app, admin).await,
                        Err(e) => tracing::error!(error = %e, "admin_listener_failed"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "admin_runtime_failed"),
            }
            let _ = admin_done.send(());
        })
        .map_err(ServerError::Io)?;
    let shared_task = service
        .shared
        .clone()
        .map(|shared| tokio::spawn(shared::run(shared, changes.clone())));
    let probe_task = tokio::spawn(service.introspector.clone().confirm_idp());
    let idp_task = tokio::spawn(service.idp.clone().run());
    let lists_task = service
        .status_lists
        .as_ref()
        .map(|lists| lists.spawn_refresh());
    let limiters = service.limiters.clone();
    let versions = service.versions.clone();
    let metrics = service.metrics.clone();
    let clock = service.clock.clone();
    let prune_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let now = clock.now_ms();
            limiters.prune(now);
            // Revocations of tokens that have expired are forgotten: bounded memory, and
            // epochs answers that stay small.
            versions.prune_expired(now);
            let (tokens, jtis) = versions.revoked_counts();
            metrics.set_gauge("authz_revocations", &[("kind", "token")], tokens as f64);
            metrics.set_gauge("authz_revocations", &[("kind", "jti")], jtis as f64);
        }
    });

    let drained = {
        let ready = ready.clone();
        let reporter = health_reporter.clone();
        async move {
            shutdown.await;
            ready.store(false, Ordering::SeqCst);
            reporter
                .set_not_serving::<AuthorizationServer<Grpc>>()
                .await;
            tokio::time::sleep(drain).await;
        }
    };
    // Check replies are small: without TCP_NODELAY, Nagle's algorithm meets the client's
    // delayed ACK and a reply can sit for ~40 ms.
    let incoming = futures::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
        |stream| {
            if let Ok(s) = &stream {
                let _ = s.set_nodelay(true);
            }
            stream
        },
    );
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(batch_api::BatchServer::new(service.clone()))
        .add_service(AuthorizationServer::new(Grpc(service)))
        .serve_with_incoming_shutdown(incoming, drained)
        .await;
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    prune_task.abort();
    probe_task.abort();
    idp_task.abort();
    if let Some(task) = lists_task {
        task.abort();
    }
    if let Some(task) = shared_task {
        task.abort();
    }
    result.map_err(ServerError::from)
}
