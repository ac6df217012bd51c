//! Bearer secrets of the server's own endpoints (admin, change feed, batch API): a request's
//! `authorization` value compared with `Bearer <secret>` in constant time.

use axum::http::HeaderMap;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `authorization` value is `Bearer <secret>`.
pub fn value_matches(authorization: Option<&str>, secret: &str) -> bool {
    let expected = format!("Bearer {secret}");
    authorization.is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()))
}

/// Whether `headers` carry `authorization: Bearer <secret>`.
pub fn matches(headers: &HeaderMap, secret: &str) -> bool {
    value_matches(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        secret,
    )
}
