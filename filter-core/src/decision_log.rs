//! The filter's decision log, in Envoy's log: one info line per denial and, at the policy's
//! `log_allows_per_million` (spread evenly by count), per allow; other allows are debug lines.
//! Every line has the same fields after its outcome:
//!
//! `jwt_authz <allow|deny> status=… reason=… source=<local|server|hit> tier=… route=… method=…
//! path=… token=… policy_version=… data_age_ms=… zone=… trace_id=…`
//!
//! `source`: decided here from the JWT (`local`), by the server now (`server`), or from a server
//! decision this worker cached (`hit`). `data_age_ms`: how old the data behind the decision is:
//! the cached decision's age (`hit`), 0 for the server's own answer, and for a local decision
//! how long ago this worker last applied a whole, confirmed change-feed answer: the
//! revocations and switches it decided with are at least that fresh (`-` without a feed, or
//! before the first answer). `zone`: this proxy's `region/zone` (the policy's
//! `server.client_locality`, else, in the Wasm build, the Envoy node's locality; `-` when
//! neither is set; bytes outside `[A-Za-z0-9._/-]` become `_`). The path has no query string; the token is a hash prefix, never the
//! token; the trace is the request's (`authz_core::trace_context`).
//!
//! What it does not do: count (the metrics are counted where decisions are made).

use crate::commands::OwnedRequest;
use crate::host::{Host, LogLevel};
use crate::worker::Worker;
use authz_core::Tier;

/// Where a decision came from, as the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Local,
    Server,
    /// A cached server decision, stored `age_ms` ago.
    Hit {
        age_ms: u64,
    },
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Server => "server",
            Source::Hit { .. } => "hit",
        }
    }
}

/// One decision, for its log line.
pub(crate) struct Logged<'a> {
    pub request: &'a OwnedRequest,
    pub status: u16,
    pub reason: &'a str,
    pub source: Source,
    pub tier: Tier,
    pub route: &'a str,
}

/// A locality with every character a configured one may not hold
/// ([`authz_core::config::is_locality_byte`]) replaced by `_` (one `key=value` token).
fn log_safe(text: &str) -> String {
    text.chars()
        .map(|c| match u8::try_from(c) {
            Ok(b) if authz_core::config::is_locality_byte(b) => c,
            _ => '_',
        })
        .collect()
}

impl<H: Host> Worker<H> {
    /// The line of a decision (`allow` when `status` is 200).
    fn decision_line(&self, d: &Logged<'_>) -> String {
        let data_age_ms = match d.source {
            Source::Hit { age_ms } => Some(age_ms),
            Source::Server => Some(0),
            Source::Local => {
                let heard = self.link.versions.feed_applied_ms;
                (self.policy.feed().is_some() && heard > 0)
                    .then(|| self.event_ms.saturating_sub(heard))
            }
        };
        format!(
            "jwt_authz {} status={} reason={} source={} tier={} route={} method={} path={} token={} policy_version={} data_age_ms={} zone={} trace_id={}",
            if d.status == 200 { "allow" } else { "deny" },
            d.status,
            d.reason,
            d.source.as_str(),
            d.tier,
            d.route,
            d.request.method,
            authz_core::routes::path_only(&d.request.path),
            d.request.token_label(),
            self.link.versions.policy_version,
            data_age_ms.map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
            self.locality.as_deref().map_or_else(|| "-".to_owned(), log_safe),
            d.request.trace_id.as_deref().unwrap_or("-")
        )
    }

    /// Logs a denial (info).
    pub(crate) fn log_denial(&self, denial: &Logged<'_>) {
        self.host.log(LogLevel::Info, &self.decision_line(denial));
    }

    /// Logs an allow: info at the policy's share, else debug (when debug lines are shown).
    pub(crate) fn log_allow(&self, allow: &Logged<'_>) {
        let n = self.allows_seen.get();
        self.allows_seen.set(n.wrapping_add(1));
        let share = self.policy.log_allows_per_million;
        if share > 0 && authz_core::canary::share_takes(share, n) {
            self.host.log(LogLevel::Info, &self.decision_line(allow));
        } else if self.debug_logs {
            self.host.log(LogLevel::Debug, &self.decision_line(allow));
        }
    }
}
