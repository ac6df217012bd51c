//! `dev-idp [--port N] [--bind IP] [--issuer URL] [--audience AUD] [--client-id ID] [--client-secret S] [--jwks-down]`: the development
//! identity provider. Prints `dev-idp listening on http://ADDR` first.

use dev_tools::idp::{initial_faults, router, Idp, IdpSettings};
use dev_tools::{arg, bind, port_arg, shutdown_signal, DevError};

#[tokio::main]
async fn main() -> Result<(), DevError> {
    let port = port_arg()?;
    let settings = IdpSettings {
        issuer: arg("--issuer").unwrap_or_else(|| "https://dev-idp.local".into()),
        audience: arg("--audience").unwrap_or_else(|| "demo-api".into()),
        client_id: arg("--client-id").unwrap_or_else(|| "authz-server".into()),
        client_secret: arg("--client-secret").unwrap_or_else(|| "authz-server-secret".into()),
    };
    let idp = Idp::new(settings)?;
    initial_faults(&idp, std::env::args().any(|a| a == "--jwks-down"));
    let (listener, _) = bind("dev-idp", port).await?;
    axum::serve(listener, router(idp))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
