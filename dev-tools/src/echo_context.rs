//! The echo upstream as a service that trusts only signed verification contexts
//! (`echo-upstream --context-jwks URL --context-policy FILE --context-audience NAME`): every
//! request on a route whose tier needs a token must carry a valid context for its method, route
//! and (on a route with a tenant rule) tenant (`authz_context::layer::ContextLayer`), or it gets an empty 401 and the reason is
//! printed on stderr. Routes come from the filter's own configuration (the JSON the Wasm filter
//! loads), so the echo names a request's route as the filter did. The JWKS is fetched from the
//! authorization server's admin port every second (a dev tool: loopback, plain HTTP).

use authz_context::layer::{ContextKeys, ContextLayer, Guard};
use authz_context::{KeySet, Verifier};
use std::time::Duration;

/// What `--context-*` configured.
pub struct ContextOptions {
    pub jwks_url: String,
    pub policy_file: String,
    pub audience: String,
    pub issuer: String,
    pub header: String,
    /// Clock skew allowed on `iat` and `exp`, seconds.
    pub leeway_seconds: u64,
}

/// The echo router (with the list endpoint when `batch` is given) behind a [`ContextLayer`],
/// and the task that keeps its keys fresh.
pub fn guarded_router(
    options: ContextOptions,
    batch: Option<crate::echo_list::BatchOptions>,
) -> Result<axum::Router, String> {
    let policy_bytes = std::fs::read(&options.policy_file)
        .map_err(|e| format!("--context-policy {}: {e}", options.policy_file))?;
    let policy = authz_core::Policy::from_json(&policy_bytes)
        .map_err(|e| format!("--context-policy {}: {e}", options.policy_file))?;
    let header = axum::http::HeaderName::try_from(options.header.as_str())
        .map_err(|_| format!("--context-header {}", options.header))?;
    let keys = ContextKeys::default();
    tokio::spawn(refresh_keys(options.jwks_url.clone(), keys.clone()));
    let mut verifier = Verifier::new(&options.issuer, &options.audience);
    verifier.leeway_seconds = options.leeway_seconds;
    let layer = ContextLayer::new(
        verifier,
        keys,
        header,
        move |method, path| {
            let match_path = authz_core::routes::match_path(path);
            let route = policy.routes.find_matched(method.as_str(), &match_path);
            if !route.tier.requires_token() {
                return Guard::Open;
            }
            let tenant = route
                .require
                .tenant
                .as_ref()
                .map(|rule| rule.tenant_of(&match_path).unwrap_or_default().to_owned());
            Guard::Route {
                route: route.name.clone(),
                tenant,
            }
        },
        |refusal, method, path| {
            eprintln!("echo-upstream: context refused ({refusal}) for {method} {path}");
        },
    );
    Ok(crate::echo::router(batch).layer(layer))
}

/// Fetches the JWKS every second, keeping the last good one.
async fn refresh_keys(url: String, keys: ContextKeys) {
    loop {
        match fetch(&url)
            .await
            .and_then(|body| KeySet::from_jwks(&body).map_err(|e| e.to_string()))
        {
            Ok(set) => keys.replace(set),
            Err(e) => eprintln!("echo-upstream: context JWKS {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A GET of `url`; the body of a 200.
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    match crate::http1::request("GET", url, &[], b"").await? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("status {status}")),
    }
}
