//! The server's change feed (`GET /admin/epochs?since=N&format=2`, optionally held open with
//! `wait_ms`) as the filter applies it: what to purge from its decision cache, which
//! revocations to hold for the routes it decides locally, which versions to remember, and when
//! the server learned each change (to measure propagation). Pure parsing; the filter polls.
//!
//! Format 2 (the only one a server answers, asked for with `format=2` or not):
//!
//! ```json
//! {"format": 2, "version": 9, "policy_version": 2, "policy_changed_at_ms": 1700000000000,
//!  "confirmed": true, "incarnation": "ab12…",
//!  "tokens": [["<sha256 hex>", 1700000360000, 1700000000123]],
//!  "jtis": [["j-1", null, 1700000000456]],
//!  "subjects": [["alice", 1700000000789, 3, 1700000000789, 1700003600789]],
//!  "statuses": [["https://idp/statuslists/1", 17, 1700003600789, 1700000000789]]}
//! ```
//!
//! A large state comes in pages: an answer with `"more": true` holds the oldest changes, its
//! `version` is the next page's `since`, and it is never `confirmed`.
//!
//! `tokens` and `jtis` are `[key, expires_at_ms | null, learned_at_ms]`; `subjects` are
//! `[subject, revoked_at_ms, epoch, learned_at_ms, expires_at_ms | null]`, the last being when
//! every token the revocation refuses has expired (the server's maximum token lifetime after
//! it; absent or `null` when not configured); `statuses` are Status List entries the server
//! found set (`[list uri, index, expires_at_ms | null, learned_at_ms]`, the expiry being when
//! every token that may name the entry has expired); `learned_at_ms` is when the answering
//! server learned the change (its clock).

use crate::token_hash::parse_digest_hex;
use serde_json::Value;

/// A revoked token (by the SHA-256 of its compact form) or `jti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRevocation<K> {
    pub key: K,
    /// When the token it names expires (ms), if the server knew.
    pub expires_at_ms: Option<u64>,
    /// When the server learned it (ms).
    pub learned_at_ms: Option<u64>,
}

/// A revoked subject: its tokens issued at or before `revoked_at_ms` are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRevocation {
    pub subject: String,
    pub revoked_at_ms: u64,
    pub learned_at_ms: Option<u64>,
    /// When the last token the revocation refuses expires (ms), if the server knows.
    pub expires_at_ms: Option<u64>,
}

/// A Status List entry the server found set: tokens naming it are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRevocation {
    pub entry: crate::status_list::StatusRef,
    /// When every token that may name the entry has expired (ms), if the server knows.
    pub expires_at_ms: Option<u64>,
    pub learned_at_ms: Option<u64>,
}

/// Changes since the version the filter asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The server's change version now (ask `since` this next time).
    pub version: u64,
    pub policy_version: u64,
    /// When the policy version last changed (0: not known), if it changed after `since`.
    pub policy_changed_at_ms: Option<u64>,
    pub subjects: Vec<SubjectRevocation>,
    pub tokens: Vec<KeyRevocation<[u8; 32]>>,
    pub jtis: Vec<KeyRevocation<String>>,
    pub statuses: Vec<StatusRevocation>,
    /// Whether the server vouches that its state is current (false while its shared tier is
    /// unreachable): purges still apply, but the answer does not renew trust in the cache.
    pub confirmed: bool,
    /// The answer is one page of a larger state: `version` is where the next page starts
    /// (ask again at once), and the state has not been read whole yet.
    pub more: bool,
    /// Which counter `version` belongs to: a different value means the server's state was
    /// restarted (or another server without shared state answered), so versions learned
    /// before say nothing about this one.
    pub incarnation: Option<String>,
}

fn ms(v: Option<&Value>) -> Result<Option<u64>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or("a time is not a number of ms"),
    }
}

fn rows<'a>(v: &'a Value, name: &'static str) -> Result<&'a [Value], &'static str> {
    match v.get(name) {
        Some(Value::Array(items)) => Ok(items),
        None => Ok(&[]),
        Some(_) => Err("a revocation list is not an array"),
    }
}

fn key_rows<K>(
    v: &Value,
    name: &'static str,
    key: impl Fn(&str) -> Option<K>,
) -> Result<Vec<KeyRevocation<K>>, &'static str> {
    rows(v, name)?
        .iter()
        .map(|row| {
            let key = row
                .get(0)
                .and_then(Value::as_str)
                .and_then(&key)
                .ok_or("a revocation names no valid key")?;
            Ok(KeyRevocation {
                key,
                expires_at_ms: ms(row.get(1))?,
                learned_at_ms: ms(row.get(2))?,
            })
        })
        .collect()
}

/// How long a refusal (429) of the change feed asks the reader to wait: its body's
/// `retry_after_ms` (the filter's host passes it the body, not the `Retry-After` header).
pub fn refusal_retry_after_ms(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("retry_after_ms")?
        .as_u64()
}

impl Changes {
    pub fn parse(body: &[u8]) -> Result<Changes, &'static str> {
        Changes::parse_value(&Self::read(body)?)
    }

    /// The JSON of a feed answer (what [`Changes::parse_value`] and
    /// `context::read_feed_keys` read).
    pub fn read(body: &[u8]) -> Result<Value, &'static str> {
        serde_json::from_slice(body).map_err(|_| "epochs answer is not json")
    }

    /// [`Changes::parse`] of an answer already read as JSON.
    pub fn parse_value(v: &Value) -> Result<Changes, &'static str> {
        if v.get("format").and_then(Value::as_u64) != Some(2) {
            return Err("epochs answer is not format 2 (is the server older than the filter?)");
        }
        let version = v
            .get("version")
            .and_then(Value::as_u64)
            .ok_or("epochs answer lacks version")?;
        let policy_version = v
            .get("policy_version")
            .and_then(Value::as_u64)
            .ok_or("epochs answer lacks policy_version")?;
        // A counter no server reaches (one change per microsecond for 285 years): taking it
        // would move the cursor past every change to come, and nothing would be read again.
        if version > MAX_SANE_VERSION || policy_version > MAX_SANE_VERSION {
            return Err("epochs answer has a version beyond 2^53");
        }
        let subjects = rows(v, "subjects")?
            .iter()
            .map(|row| {
                Ok(SubjectRevocation {
                    subject: row
                        .get(0)
                        .and_then(Value::as_str)
                        .ok_or("a subject revocation names no subject")?
                        .to_owned(),
                    revoked_at_ms: ms(row.get(1))?.ok_or("a subject revocation has no time")?,
                    learned_at_ms: ms(row.get(3))?,
                    expires_at_ms: ms(row.get(4))?,
                })
            })
            .collect::<Result<_, &'static str>>()?;
        Ok(Changes {
            version,
            policy_version,
            policy_changed_at_ms: ms(v.get("policy_changed_at_ms"))?,
            subjects,
            tokens: key_rows(v, "tokens", parse_digest_hex)?,
            jtis: key_rows(v, "jtis", |s| Some(s.to_owned()))?,
            statuses: rows(v, "statuses")?
                .iter()
                .map(|row| {
                    Ok(StatusRevocation {
                        entry: crate::status_list::StatusRef {
                            uri: row
                                .get(0)
                                .and_then(Value::as_str)
                                .filter(|uri| !uri.is_empty())
                                .ok_or("a status revocation names no list")?
                                .to_owned(),
                            index: row
                                .get(1)
                                .and_then(Value::as_u64)
                                .filter(|i| *i <= crate::status_list::MAX_INDEX)
                                .ok_or("a status revocation names no entry")?,
                        },
                        expires_at_ms: ms(row.get(2))?,
                        learned_at_ms: ms(row.get(3))?,
                    })
                })
                .collect::<Result<_, &'static str>>()?,
            // Only an explicit `true` renews trust: an answer that does not say is unconfirmed.
            confirmed: v.get("confirmed").and_then(Value::as_bool).unwrap_or(false),
            more: v.get("more").and_then(Value::as_bool).unwrap_or(false),
            incarnation: v
                .get("incarnation")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Whether the answer carries any change.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
            && self.tokens.is_empty()
            && self.jtis.is_empty()
            && self.statuses.is_empty()
            && self.policy_changed_at_ms.is_none()
    }

    /// When the server learned each change in the answer (ms), for propagation lag.
    pub fn learned_at(&self) -> impl Iterator<Item = u64> + '_ {
        self.tokens
            .iter()
            .filter_map(|t| t.learned_at_ms)
            .chain(self.jtis.iter().filter_map(|j| j.learned_at_ms))
            .chain(self.subjects.iter().filter_map(|s| s.learned_at_ms))
            .chain(self.statuses.iter().filter_map(|s| s.learned_at_ms))
            .chain(self.policy_changed_at_ms)
            .filter(|at| *at > 0)
    }
}

/// The largest change or policy version an answer may carry (2^53: exact in every JSON
/// reader).
pub const MAX_SANE_VERSION: u64 = 1 << 53;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_how_long_to_wait() {
        assert_eq!(
            refusal_retry_after_ms(br#"{"error": "x", "retry_after_ms": 2500}"#),
            Some(2_500)
        );
        assert_eq!(refusal_retry_after_ms(br#"{"error": "x"}"#), None);
        assert_eq!(refusal_retry_after_ms(br#"{"retry_after_ms": -1}"#), None);
        assert_eq!(refusal_retry_after_ms(b"not json"), None);
    }

    #[test]
    fn status_list_entries_name_a_list_and_an_index() {
        let c = Changes::parse(
            br#"{"format":2,"version":3,"policy_version":1,"statuses":[["https://idp/l",17,9000,44],["https://idp/l",4294967295,null,null]]}"#,
        )
        .unwrap();
        assert_eq!(c.statuses.len(), 2);
        assert_eq!(c.statuses[0].entry.uri, "https://idp/l");
        assert_eq!(c.statuses[0].entry.index, 17);
        assert_eq!(c.statuses[0].expires_at_ms, Some(9000));
        assert_eq!(c.statuses[1].expires_at_ms, None);
        assert!(!c.is_empty());
        assert_eq!(c.learned_at().collect::<Vec<_>>(), vec![44]);
        for bad in [
            r#"[["",1,null,null]]"#,
            r#"[["https://idp/l",-1,null,null]]"#,
            r#"[["https://idp/l",4294967296,null,null]]"#,
            r#"[["https://idp/l","1",null,null]]"#,
            r#"[[5,1,null,null]]"#,
            r#"[["https://idp/l",1,"soon",null]]"#,
        ] {
            let body = format!(r#"{{"format":2,"version":3,"policy_version":1,"statuses":{bad}}}"#);
            assert!(Changes::parse(body.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_servers_answer() {
        let body = format!(
            r#"{{"format":2,"version":7,"policy_version":2,"policy_changed_at_ms":50,"subjects":[["alice",40,1,41]],"tokens":[["{}",9000,42]],"jtis":[["j",null,43]]}}"#,
            "ab".repeat(32)
        );
        let c = Changes::parse(body.as_bytes()).unwrap();
        assert_eq!((c.version, c.policy_version), (7, 2));
        assert_eq!(c.subjects[0].subject, "alice");
        assert_eq!(c.subjects[0].revoked_at_ms, 40);
        assert_eq!(
            c.subjects[0].expires_at_ms, None,
            "an older server sends four"
        );
        assert_eq!(c.tokens[0].key, [0xab; 32]);
        assert_eq!(c.tokens[0].expires_at_ms, Some(9000));
        assert_eq!(c.jtis[0].key, "j");
        assert_eq!(c.jtis[0].expires_at_ms, None);
        let mut learned: Vec<u64> = c.learned_at().collect();
        learned.sort_unstable();
        assert_eq!(learned, vec![41, 42, 43, 50]);
        assert!(!c.confirmed, "an answer that does not say is not confirmed");
        assert!(!c.is_empty());
        let quiet = Changes::parse(
            br#"{"format":2,"version":7,"policy_version":2,"confirmed":false,"incarnation":"ab12"}"#,
        )
        .unwrap();
        assert!(quiet.is_empty());
        assert!(!quiet.confirmed);
        assert_eq!(quiet.incarnation.as_deref(), Some("ab12"));
        assert!(Changes::parse(b"{}").is_err());
        for insane in [
            r#"{"format":2,"version":9007199254740993,"policy_version":2,"confirmed":true}"#,
            r#"{"format":2,"version":7,"policy_version":18446744073709551615,"confirmed":true}"#,
        ] {
            assert!(Changes::parse(insane.as_bytes()).is_err(), "{insane}");
        }
        assert!(
            Changes::parse(br#"{"version":1,"policy_version":0,"subjects":{}}"#).is_err(),
            "the first format is refused with a reason"
        );
        assert!(Changes::parse(
            br#"{"format":2,"version":1,"policy_version":0,"tokens":[["zz",null,1]]}"#
        )
        .is_err());
        assert!(Changes::parse(
            br#"{"format":2,"version":1,"policy_version":0,"subjects":[["a","x",1,1]]}"#
        )
        .is_err());
        let bounded = Changes::parse(
            br#"{"format":2,"version":1,"policy_version":0,"subjects":[["a",5,1,6,3600005]]}"#,
        )
        .unwrap();
        assert_eq!(bounded.subjects[0].expires_at_ms, Some(3_600_005));
    }
}
