//! The demo upstream: answers every request with a JSON echo of its method, path and headers,
//! so a caller can see exactly what the proxy forwarded.

use axum::extract::Request;
use axum::Json;
use serde_json::{json, Map, Value};

/// Echoes the request as JSON.
pub async fn echo(request: Request) -> Json<Value> {
    let mut headers = Map::new();
    for (name, value) in request.headers() {
        headers.insert(
            name.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    Json(json!({
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    }))
}

/// The router: everything goes to [`echo`], but `GET /api/orders` when `batch` is given (the
/// list endpoint, `crate::echo_list`).
pub fn router(batch: Option<crate::echo_list::BatchOptions>) -> axum::Router {
    let echo_all = axum::Router::new().fallback(echo);
    match batch {
        None => echo_all,
        Some(options) => echo_all.merge(
            axum::Router::new()
                .route(
                    "/api/orders",
                    axum::routing::get(crate::echo_list::list_orders),
                )
                .with_state(std::sync::Arc::new(options)),
        ),
    }
}
