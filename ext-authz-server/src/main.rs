//! `ext-authz-server --config FILE`: loads and validates the configuration (every problem is
//! printed to stderr, exit code 2, before any port is bound), binds the gRPC and admin ports,
//! serves until SIGTERM or Ctrl-C, then drains.
//!
//! Logs: one JSON object per line on stdout, through `tracing` (fields at the top level:
//! `timestamp`, `level`, `message`, then the event's fields; `AUTHZ_LOG` sets the filter, e.g.
//! `warn` or `info,ext_authz_server::check=warn`; default `info`). The first line announces the
//! bound addresses (`"message":"listening"`, `grpc`, `admin`).

use ext_authz_server::config::ServerConfig;
use ext_authz_server::error::ServerError;
use ext_authz_server::{serve, Listeners};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// JSON lines on stdout, filtered by `AUTHZ_LOG` (default `info`).
fn init_logs() {
    let filter = EnvFilter::try_from_env("AUTHZ_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}

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
    tracing::info!("shutting_down");
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
    init_logs();
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot_bind");
            return ExitCode::from(1);
        }
    };
    let (grpc, admin) = (listeners.grpc.local_addr(), listeners.admin.local_addr());
    if let (Ok(grpc), Ok(admin)) = (grpc, admin) {
        tracing::info!(grpc = %grpc, admin = %admin, "listening");
    }
    match serve(config, listeners, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServerError::InvalidConfig(problems)) => {
            for problem in &problems {
                tracing::error!(problem = problem.as_str(), "invalid_configuration");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::from(1)
        }
    }
}
