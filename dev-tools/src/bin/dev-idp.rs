//! `dev-idp [--port N] [--bind IP] [--issuer URL] [--audience AUD] [--client-id ID] [--client-secret S] [--jwks-down] [--status-list]`:
//! the development identity provider. Prints `dev-idp listening on http://ADDR` first. With
//! `--status-list` it serves a Token Status List at `http://ADDR/statuslists/1` and every
//! minted JWT names an entry of it.

use dev_tools::idp::{initial_faults, router, Idp, IdpSettings};
use dev_tools::{arg, bind, port_arg, shutdown_signal, DevError};

#[tokio::main]
async fn main() -> Result<(), DevError> {
    let port = port_arg()?;
    let (listener, addr) = bind("dev-idp", port).await?;
    let settings = IdpSettings {
        issuer: arg("--issuer").unwrap_or_else(|| "https://dev-idp.local".into()),
        audience: arg("--audience").unwrap_or_else(|| "demo-api".into()),
        client_id: arg("--client-id").unwrap_or_else(|| "authz-server".into()),
        client_secret: arg("--client-secret").unwrap_or_else(|| "authz-server-secret".into()),
        status_list_uri: std::env::args().any(|a| a == "--status-list").then(|| {
            // Bound to every address: the list is named by the loopback one.
            let mut named = addr;
            if named.ip().is_unspecified() {
                named.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{named}/statuslists/1")
        }),
    };
    let idp = Idp::new(settings)?;
    initial_faults(&idp, std::env::args().any(|a| a == "--jwks-down"));
    axum::serve(listener, router(idp))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
