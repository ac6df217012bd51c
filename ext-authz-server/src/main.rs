//! `ext-authz-server --config FILE`: loads and validates the configuration (every problem is
//! printed, exit code 2, before any port is bound), binds the gRPC and admin ports, serves until
//! SIGTERM or Ctrl-C, then drains.

use ext_authz_server::config::ServerConfig;
use ext_authz_server::error::ServerError;
use ext_authz_server::{serve, Listeners};
use std::process::ExitCode;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
    eprintln!("ext-authz-server: shutting down (draining)");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!("usage: ext-authz-server --config FILE");
        return ExitCode::from(2);
    };
    let config = match ServerConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ext-authz-server: {e}");
            return ExitCode::from(2);
        }
    };
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ext-authz-server: cannot bind: {e}");
            return ExitCode::from(1);
        }
    };
    let (grpc, admin) = (listeners.grpc.local_addr(), listeners.admin.local_addr());
    if let (Ok(grpc), Ok(admin)) = (grpc, admin) {
        println!("ext-authz-server listening grpc={grpc} admin={admin}");
    }
    match serve(config, listeners, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServerError::InvalidConfig(p)) => {
            eprintln!("ext-authz-server: invalid configuration: {p:?}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ext-authz-server: {e}");
            ExitCode::from(1)
        }
    }
}
