//! The ext_authz server in this test process, through `serve` on real sockets (port 0), with
//! a stop on drop: what the server-level tests start.

use crate::{eventually, get};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use ext_authz_server::clock::{SharedClock, SystemClock};
use ext_authz_server::config::ServerConfig;
use ext_authz_server::{serve_with_clock, Listeners};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

pub struct Server {
    pub client: AuthorizationClient<Channel>,
    pub grpc_addr: std::net::SocketAddr,
    pub admin_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Stops the server (as its shutdown signal does); it drains.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server with `yaml` as its config, ready (its start-up probe of the IdP passed).
pub async fn start(yaml: &str) -> Server {
    start_with_clock(yaml, Arc::new(SystemClock)).await
}

/// A server on `clock` (a [`ManualClock`] lets a test move the server's time instead of
/// sleeping).
pub async fn start_with_clock(yaml: &str, clock: SharedClock) -> Server {
    let config = ServerConfig::from_yaml(yaml).expect("valid config");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let grpc = listeners.grpc.local_addr().expect("addr");
    let admin_port = listeners.admin.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    tokio::spawn(serve_with_clock(config, listeners, shutdown, clock));
    // Ready once its start-up probe of the IdP passed (one introspection call, which
    // [`introspections`] leaves out of the counts tests assert on).
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(5), || get(&readyz, &[]).status == 200)
    })
    .await
    .expect("readiness wait");
    let client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    Server {
        client,
        grpc_addr: grpc,
        admin_port,
        stop: Some(stop),
    }
}
