//! Development servers: a small identity provider ([`idp`]) and an echo upstream ([`echo`]).
//!
//! They exist for `make run` and the end-to-end tests, which start them as real processes on
//! real sockets. They are not production components: the IdP keeps keys in memory, mints any
//! token it is asked for, and lets anyone rotate keys or inject faults.

pub mod echo;
pub mod echo_context;
pub mod echo_list;
pub mod http1;
pub mod idp;

use std::net::SocketAddr;

/// Errors of the dev servers.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("bad argument: {0}")]
    Argument(String),
    #[error("key error: {0}")]
    Key(#[from] dev_keys::KeyError),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads `--name value` pairs from the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `--port N` (default 0: the OS picks).
pub fn port_arg() -> Result<u16, DevError> {
    match arg("--port") {
        None => Ok(0),
        Some(p) => p
            .parse()
            .map_err(|_| DevError::Argument(format!("--port {p}"))),
    }
}

/// Binds `<--bind, default 127.0.0.1>:<port>` (port 0 picks a free one) and prints the bound
/// address on the first line of stdout, which the test harness and `make run` read.
/// Containers pass `--bind 0.0.0.0`.
pub async fn bind(
    name: &str,
    port: u16,
) -> Result<(tokio::net::TcpListener, SocketAddr), DevError> {
    let host = arg("--bind").unwrap_or_else(|| "127.0.0.1".into());
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| DevError::Argument(format!("--bind {host}")))?;
    let listener = tokio::net::TcpListener::bind((ip, port)).await?;
    let addr = listener.local_addr()?;
    println!("{name} listening on http://{addr}");
    Ok((listener, addr))
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
