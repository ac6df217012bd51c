//! `echo-upstream [--port N] [--bind IP]`: the demo upstream; echoes every request as JSON. Prints
//! `echo-upstream listening on http://ADDR` first.

use dev_tools::{bind, port_arg, shutdown_signal, DevError};

#[tokio::main]
async fn main() -> Result<(), DevError> {
    let port = port_arg()?;
    let (listener, _) = bind("echo-upstream", port).await?;
    axum::serve(listener, dev_tools::echo::router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
