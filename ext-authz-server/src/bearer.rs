//! Bearer secrets of the server's own endpoints (admin, change feed, batch API): a request's
//! `authorization` value compared with `Bearer <secret>` in constant time, and which of the
//! admin port's secrets it presented ([`Credential`]).

use crate::config::ServerConfig;
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

/// Which secret a request presented: the admin token, or feed secret `n` (`epochs_token`
/// first, then `epochs_tokens`). Held feed requests are counted per credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Credential {
    Admin,
    Feed(usize),
}

/// The credential an `authorization` value is, on the change feed (`feed`) or another admin
/// endpoint: the admin token everywhere, a feed secret on the change feed only. Every secret
/// is compared (in constant time), whichever matches.
pub fn credential_for(
    config: &ServerConfig,
    feed: bool,
    authorization: Option<&str>,
) -> Option<Credential> {
    let mut found = value_matches(authorization, &config.admin_token).then_some(Credential::Admin);
    if feed {
        for (i, token) in config.epochs_tokens.iter().enumerate() {
            if value_matches(authorization, token) {
                found = found.or(Some(Credential::Feed(i)));
            }
        }
    }
    found
}
