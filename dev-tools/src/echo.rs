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

/// The router: everything goes to [`echo`].
pub fn router() -> axum::Router {
    axum::Router::new().fallback(echo)
}
