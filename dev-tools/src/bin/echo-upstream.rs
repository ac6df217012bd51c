//! `echo-upstream [--port N] [--bind IP] [--context-jwks URL --context-policy FILE
//! --context-audience NAME [--context-issuer NAME] [--context-header NAME]
//! [--context-leeway SECONDS]] [--batch-url URL --batch-token SECRET]`: the demo upstream;
//! echoes every request as JSON. With `--context-jwks` it is a service that trusts only signed
//! verification contexts (see `dev_tools::echo_context`); with `--batch-url`, `GET /api/orders`
//! lists only the orders the batch API allows the caller (see `dev_tools::echo_list`). Prints
//! `echo-upstream listening on http://ADDR` first.

use dev_tools::echo_context::{guarded_router, ContextOptions};
use dev_tools::{arg, bind, port_arg, shutdown_signal, DevError};

#[tokio::main]
async fn main() -> Result<(), DevError> {
    let port = port_arg()?;
    let batch = match (arg("--batch-url"), arg("--batch-token")) {
        (None, None) => None,
        (Some(url), Some(token)) => Some(dev_tools::echo_list::BatchOptions {
            url,
            token,
            context_header: arg("--context-header")
                .unwrap_or_else(|| authz_context::DEFAULT_HEADER.into()),
        }),
        _ => {
            return Err(DevError::Argument(
                "--batch-url and --batch-token go together".into(),
            ))
        }
    };
    let router = match arg("--context-jwks") {
        None => dev_tools::echo::router(batch),
        Some(jwks_url) => guarded_router(
            ContextOptions {
                jwks_url,
                policy_file: arg("--context-policy")
                    .ok_or_else(|| DevError::Argument("--context-policy is required".into()))?,
                audience: arg("--context-audience")
                    .ok_or_else(|| DevError::Argument("--context-audience is required".into()))?,
                issuer: arg("--context-issuer").unwrap_or_else(|| "authz".into()),
                header: arg("--context-header")
                    .unwrap_or_else(|| authz_context::DEFAULT_HEADER.into()),
                leeway_seconds: match arg("--context-leeway") {
                    None => 5,
                    Some(s) => s
                        .parse()
                        .map_err(|_| DevError::Argument(format!("--context-leeway {s}")))?,
                },
            },
            batch,
        )
        .map_err(DevError::Argument)?,
    };
    let (listener, _) = bind("echo-upstream", port).await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}
