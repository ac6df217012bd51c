//! Token Status Lists (draft-ietf-oauth-status-list) as both hosts see them: the `status`
//! claim a JWT carries ([`StatusRef::of`]: which list, which entry), the policy's
//! `status_lists:` section ([`StatusListsConfig`]: the lists a token may name), and the rule
//! every host applies to a verified token ([`screen`]: a token naming a list the policy does
//! not name is refused; one whose entry the server found set is refused).
//!
//! The server fetches and verifies the lists (`ext-authz-server/src/status_lists.rs`) and
//! publishes the entries found set through the change feed (`statuses` rows); a filter holds
//! them with its other revocations.
//!
//! What it does not do: fetch, decompress or verify a list, or read a clock.

use crate::claims::Claims;
use serde::Deserialize;
use serde_json::{Map, Value};

pub mod defaults {
    /// How often the server fetches each list.
    pub const REFRESH_SECONDS: u64 = 30;
    /// The largest Status List Token the server takes (bytes, as fetched).
    pub const MAX_LIST_BYTES: u64 = 1 << 20;
    /// The most entries a list may have set: each is a revocation every worker holds.
    pub const MAX_SET_ENTRIES: usize = 100_000;
}

/// The largest entry index a token may name: 2^32 − 1 (a list of that many 8-bit entries is
/// far past what `max_list_bytes` lets through anyway).
pub const MAX_INDEX: u64 = u32::MAX as u64;

/// The list entry a token names: `status.status_list.{uri, idx}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusRef {
    pub uri: String,
    pub index: u64,
}

impl StatusRef {
    /// The entry `claims` names, `None` when the token has no `status` claim (or one with no
    /// `status_list`: other status mechanisms are not ours to judge). A `status_list` that is
    /// not an object with a string `uri` and an integer `idx` in 0..=[`MAX_INDEX`] is an error:
    /// the token is refused.
    pub fn of(claims: &Claims) -> Result<Option<StatusRef>, &'static str> {
        StatusRef::of_raw(&claims.raw)
    }

    /// [`StatusRef::of`] from a payload's claims object.
    pub fn of_raw(raw: &Map<String, Value>) -> Result<Option<StatusRef>, &'static str> {
        let Some(status) = raw.get("status") else {
            return Ok(None);
        };
        let Value::Object(status) = status else {
            return Err("status claim is not an object");
        };
        let Some(list) = status.get("status_list") else {
            return Ok(None);
        };
        let uri = list
            .get("uri")
            .and_then(Value::as_str)
            .filter(|uri| !uri.is_empty())
            .ok_or("status_list has no uri")?;
        let index = list
            .get("idx")
            .and_then(Value::as_u64)
            .filter(|idx| *idx <= MAX_INDEX)
            .ok_or("status_list idx is not an integer in 0..2^32")?;
        Ok(Some(StatusRef {
            uri: uri.to_owned(),
            index,
        }))
    }
}

/// `status_lists:` as written (filter JSON and server YAML share it).
#[derive(Debug, Clone, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatusListsConfig {
    /// Every Status List the provider's tokens may name (`status.status_list.uri`), exactly as
    /// tokens write it. A token naming any other list is refused; one naming none passes.
    #[serde(default)]
    pub uris: Vec<String>,
    /// The server's: how often it fetches each list (1–3600 s; sooner when the list's `ttl`
    /// or `exp` says). Between fetches, a route the server decides fetches again when the
    /// list is older than its tier's `max_staleness_ms`, and refuses (503) when none newer
    /// than `max_staleness_ms + stale_if_error_ms` can be had.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::REFRESH_SECONDS)))]
    pub refresh_seconds: Option<u64>,
    /// The server's: the largest Status List Token it takes, bytes (1 KiB–64 MiB); its
    /// decompressed list may be at most 16 times that.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_LIST_BYTES)))]
    pub max_list_bytes: Option<u64>,
    /// The server's: the most entries one list may have set (1–1000000). Each is a
    /// revocation the change feed carries and every filter worker holds (under its
    /// `max_revocations`): a list with more is refused, the last good one kept.
    #[cfg_attr(feature = "schema", schemars(extend("default" = defaults::MAX_SET_ENTRIES)))]
    pub max_set_entries: Option<usize>,
    #[serde(flatten)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub unknown: Map<String, Value>,
}

/// `status_lists:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusListsSettings {
    pub uris: Vec<String>,
    pub refresh_seconds: u64,
    pub max_list_bytes: u64,
    pub max_set_entries: usize,
}

impl StatusListsConfig {
    /// The settings; every problem is added to `problems` with `at` before it.
    /// `allow_plain_http`: whether `http://` lists are accepted (loopback, or the server's
    /// `allow_insecure_http`); a list is read by the server, never by the filter.
    pub fn settings(
        &self,
        at: &str,
        allow_plain_http: impl Fn(&str) -> bool,
        problems: &mut Vec<String>,
    ) -> StatusListsSettings {
        for name in self.unknown.keys() {
            problems.push(format!("{at}: unknown field \"{name}\""));
        }
        if self.uris.is_empty() {
            problems.push(format!(
                "{at}.uris: empty (name every list the provider's tokens may refer to)"
            ));
        }
        for (i, uri) in self.uris.iter().enumerate() {
            let https = uri.starts_with("https://");
            let http = uri.starts_with("http://");
            if !(https || http) || uri.len() < 10 || uri.contains(char::is_whitespace) {
                problems.push(format!("{at}.uris[{i}]: \"{uri}\" is not an http(s) URL"));
            } else if http && !allow_plain_http(uri) {
                problems.push(format!(
                    "{at}.uris[{i}]: \"{uri}\" is plain http to a host that is not loopback (set allow_insecure_http to accept it)"
                ));
            }
            if self.uris.iter().take(i).any(|earlier| earlier == uri) {
                problems.push(format!("{at}.uris[{i}]: \"{uri}\" is named twice"));
            }
        }
        let refresh_seconds = self.refresh_seconds.unwrap_or(defaults::REFRESH_SECONDS);
        if !(1..=3_600).contains(&refresh_seconds) {
            problems.push(format!(
                "{at}.refresh_seconds: {refresh_seconds} is outside 1–3600"
            ));
        }
        let max_list_bytes = self.max_list_bytes.unwrap_or(defaults::MAX_LIST_BYTES);
        if !(1_024..=64 << 20).contains(&max_list_bytes) {
            problems.push(format!(
                "{at}.max_list_bytes: {max_list_bytes} is outside 1024–67108864"
            ));
        }
        let max_set_entries = self.max_set_entries.unwrap_or(defaults::MAX_SET_ENTRIES);
        if !(1..=1_000_000).contains(&max_set_entries) {
            problems.push(format!(
                "{at}.max_set_entries: {max_set_entries} is outside 1–1000000"
            ));
        }
        StatusListsSettings {
            uris: self.uris.clone(),
            refresh_seconds,
            max_list_bytes,
            max_set_entries,
        }
    }
}

/// Why a verified token's status refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusRefusal {
    /// The `status` claim cannot be read.
    Malformed(&'static str),
    /// The token names a list the policy does not name: nothing watches it.
    UnknownList,
    /// The token's entry is set (revoked or suspended) in its list.
    Set,
}

impl StatusRefusal {
    /// A stable label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            StatusRefusal::Malformed(_) => "status_claim_malformed",
            StatusRefusal::UnknownList => "status_list_unknown",
            StatusRefusal::Set => "status_list_revoked",
        }
    }
}

/// The rule for a verified token's `status`, given the lists the policy names and whether an
/// entry is known to be set (`is_set`). A token without a `status_list` passes.
pub fn screen(
    claims: &Claims,
    uris: &[String],
    is_set: impl Fn(&StatusRef) -> bool,
) -> Result<Option<StatusRef>, StatusRefusal> {
    let Some(entry) = StatusRef::of(claims).map_err(StatusRefusal::Malformed)? else {
        return Ok(None);
    };
    if !uris.contains(&entry.uri) {
        return Err(StatusRefusal::UnknownList);
    }
    if is_set(&entry) {
        return Err(StatusRefusal::Set);
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Claims {
        Claims::from_json(v.to_string().as_bytes()).unwrap()
    }

    const URI: &str = "https://idp.example/statuslists/1";

    #[test]
    fn the_status_claim_names_a_list_entry() {
        let c = claims(serde_json::json!({"status": {"status_list": {"idx": 7, "uri": URI}}}));
        assert_eq!(
            StatusRef::of(&c),
            Ok(Some(StatusRef {
                uri: URI.into(),
                index: 7
            }))
        );
        assert_eq!(StatusRef::of(&claims(serde_json::json!({}))), Ok(None));
        assert_eq!(
            StatusRef::of(&claims(serde_json::json!({"status": {"other": 1}}))),
            Ok(None)
        );
        for bad in [
            serde_json::json!({"status": 1}),
            serde_json::json!({"status": {"status_list": {"idx": 7}}}),
            serde_json::json!({"status": {"status_list": {"idx": -1, "uri": URI}}}),
            serde_json::json!({"status": {"status_list": {"idx": 1.5, "uri": URI}}}),
            serde_json::json!({"status": {"status_list": {"idx": "7", "uri": URI}}}),
            serde_json::json!({"status": {"status_list": {"idx": 4294967296u64, "uri": URI}}}),
            serde_json::json!({"status": {"status_list": {"idx": 7, "uri": ""}}}),
            serde_json::json!({"status": {"status_list": {"idx": 7, "uri": 5}}}),
        ] {
            assert!(StatusRef::of(&claims(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_naming_an_unknown_list_or_a_set_entry_is_refused() {
        let uris = vec![URI.to_owned()];
        let named = |idx: u64, uri: &str| {
            claims(serde_json::json!({"status": {"status_list": {"idx": idx, "uri": uri}}}))
        };
        let set = |e: &StatusRef| e.index == 3;
        assert!(screen(&named(2, URI), &uris, set).is_ok());
        assert_eq!(screen(&named(3, URI), &uris, set), Err(StatusRefusal::Set));
        assert_eq!(
            screen(&named(2, "https://idp.example/statuslists/2"), &uris, set),
            Err(StatusRefusal::UnknownList)
        );
        // Exactly as written: no normalisation that could make two lists one.
        assert_eq!(
            screen(&named(2, "https://IDP.example/statuslists/1"), &uris, set),
            Err(StatusRefusal::UnknownList)
        );
        assert_eq!(screen(&claims(serde_json::json!({})), &uris, set), Ok(None));
    }

    #[test]
    fn settings_name_every_problem() {
        let config: StatusListsConfig = serde_json::from_value(serde_json::json!({
            "uris": ["ftp://x/y", "http://idp.example/l", URI, URI],
            "refresh_seconds": 0, "max_list_bytes": 1, "extra": 1
        }))
        .unwrap();
        let mut problems = Vec::new();
        config.settings("status_lists", |_| false, &mut problems);
        let text = problems.join("\n");
        for expected in [
            "unknown field \"extra\"",
            "uris[0]",
            "uris[1]: \"http://idp.example/l\" is plain http",
            "uris[3]",
            "refresh_seconds: 0",
            "max_list_bytes: 1 ",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
        let mut none = Vec::new();
        let ok: StatusListsConfig =
            serde_json::from_value(serde_json::json!({"uris": [URI]})).unwrap();
        let settings = ok.settings("status_lists", |_| false, &mut none);
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(settings.refresh_seconds, defaults::REFRESH_SECONDS);
    }
}
