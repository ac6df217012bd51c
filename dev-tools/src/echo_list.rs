//! The echo upstream's list endpoint (`echo-upstream --batch-url URL --batch-token SECRET`):
//! `GET /api/orders` lists a fixed set of orders, keeping only those the authorization server's
//! batch API allows the caller to `read` — one batch call for the whole list, not one check per
//! order. The caller is named by the signed verification context the proxy attached (or by
//! its bearer token when the proxy forwards it). Answers `{"orders": [...], "denied":
//! [{"id", "reason"}], "computed": n}`; a refused batch is passed on as its status.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// Where the batch API is, and its secret.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub url: String,
    pub token: String,
    /// The signed context's header.
    pub context_header: String,
}

/// The orders the endpoint lists: id, tenant, owner.
pub const ORDERS: [(&str, &str, &str); 6] = [
    ("o-1", "acme", "alice"),
    ("o-2", "acme", "bob"),
    ("o-3", "globex", "alice"),
    ("o-4", "globex", "carol"),
    ("o-5", "initech", "alice"),
    ("o-6", "acme", "carol"),
];

/// `GET /api/orders`.
pub async fn list_orders(State(options): State<Arc<BatchOptions>>, request: Request) -> Response {
    let headers = request.headers();
    let context = headers
        .get(options.context_header.as_str())
        .and_then(|v| v.to_str().ok());
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = match (context, token) {
        (Some(context), _) => json!({"context": context}),
        (None, Some(token)) => json!({"token": token}),
        (None, None) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    let mut batch = caller;
    batch["action"] = json!("read");
    batch["resources"] = ORDERS
        .iter()
        .map(|(id, tenant, owner)| json!({"type": "order", "id": id, "tenant": tenant, "owner": owner}))
        .collect();
    let answer = crate::http1::request(
        "POST",
        &options.url,
        &[
            ("authorization", &format!("Bearer {}", options.token)),
            ("content-type", "application/json"),
        ],
        batch.to_string().as_bytes(),
    )
    .await;
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("echo-upstream: batch API {}: {e}", options.url);
            return StatusCode::BAD_GATEWAY.into_response();
        }
    };
    if status != 200 {
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::BAD_GATEWAY)
            .into_response();
    }
    let Ok(decided) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let decisions = decided["decisions"].as_array().cloned().unwrap_or_default();
    let mut orders = Vec::new();
    let mut denied = Vec::new();
    for ((id, tenant, owner), decision) in ORDERS.iter().zip(&decisions) {
        if decision["allowed"] == true {
            orders.push(json!({"id": id, "tenant": tenant, "owner": owner}));
        } else {
            denied.push(json!({"id": id, "reason": decision["reason"]}));
        }
    }
    Json(json!({"orders": orders, "denied": denied, "computed": decided["computed"]}))
        .into_response()
}
