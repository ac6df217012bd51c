//! The change feed's wire format (`GET /admin/epochs`, format 2) as types: the server builds a
//! [`FeedAnswer`] and writes it with [`FeedAnswer::to_json`]; the filter reads one with
//! [`FeedAnswer::from_slice`] and turns it into what it applies (`epochs::Changes`, where every
//! row is checked). A refused request's body is a [`FeedRefusal`]. Neither side writes or
//! picks at the JSON by hand.
//!
//! ```json
//! {"context_keys": [{"kid": "e1", "secret": "…", "from": 1700000000, "until": 1700000600}],
//!  "format": 2, "version": 9, "policy_version": 2, "policy_changed_at_ms": 1700000000000,
//!  "subjects": [["alice", 1700000000789, 3, 1700000000789, 1700003600789]],
//!  "tokens": [["<sha256 hex>", 1700000360000, 1700000000123]],
//!  "jtis": [["j-1", null, 1700000000456]],
//!  "statuses": [["https://idp/statuslists/1", 17, 1700003600789, 1700000000789]],
//!  "more": false, "confirmed": true, "incarnation": "ab12…"}
//! ```
//!
//! Rows are arrays (a large state is hundreds of thousands of them); their columns are named by
//! the row types below. Members a reader does not know are ignored, and trailing row columns
//! an older server does not send read as absent, so either side can be upgraded first.
//! `context_keys` is only present when the server signs contexts; the server keeps one answer
//! per cursor for every poller and puts the keys of the moment in front of it
//! ([`FeedAnswer::keys_prefix`]). `switches` is the incident switches in force
//! (`crate::switches`), on every answer of a server that has them: the state of the moment,
//! not a change (a reader takes it whole from every answer it applies).

use crate::switches::Switches;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};

/// The only format a server answers and a filter reads.
pub const FEED_FORMAT: u64 = 2;

/// A revoked token (`tokens`: the SHA-256 of its compact form, in hex) or `jti` (`jtis`):
/// key, when the token it names expires (ms, if known), when the server learned it (ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow(
    pub String,
    #[serde(default)] pub Option<u64>,
    #[serde(default)] pub Option<u64>,
);

/// A revoked subject: subject, revoked at (ms: its tokens issued at or before are refused),
/// epoch, when the server learned it, when every token it refuses has expired (ms, when the
/// server's maximum token lifetime is configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRow(
    pub String,
    pub u64,
    pub u64,
    #[serde(default)] pub Option<u64>,
    #[serde(default)] pub Option<u64>,
);

/// A Status List entry the server found set: list URI, index, when every token that may name
/// it has expired (ms, if known), when the server learned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow(
    pub String,
    pub u64,
    #[serde(default)] pub Option<u64>,
    #[serde(default)] pub Option<u64>,
);

/// A context signing key as the feed carries it: its id, its secret (base64url), and the
/// window in which it signs (seconds since the epoch, `from` inclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKey {
    pub kid: String,
    pub secret: String,
    pub from: u64,
    pub until: u64,
}

/// An answer's `context_keys`: absent (the server signs nothing), a key set, or a member the
/// reader could not read (kept apart so a bad key set never costs the answer's revocations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ContextKeys {
    #[default]
    Absent,
    Keys(Vec<WireKey>),
    Malformed(String),
}

impl ContextKeys {
    fn is_absent(&self) -> bool {
        matches!(self, ContextKeys::Absent)
    }
}

impl Serialize for ContextKeys {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContextKeys::Keys(keys) => keys.serialize(serializer),
            ContextKeys::Absent | ContextKeys::Malformed(_) => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for ContextKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ContextKeys, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(match serde_json::from_value::<Vec<WireKey>>(value) {
            Ok(keys) => ContextKeys::Keys(keys),
            Err(e) => ContextKeys::Malformed(format!("context_keys: {e}")),
        })
    }
}

/// An answer's `switches`: absent (a server older than switches), the switches in force, or a
/// member the reader could not read (kept apart so that it never costs the answer's
/// revocations; the reader then knows no switches: `crate::switches::Known::Unknown`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FeedSwitches {
    #[default]
    Absent,
    Read(Switches),
    Malformed(String),
}

impl FeedSwitches {
    fn is_absent(&self) -> bool {
        matches!(self, FeedSwitches::Absent)
    }
}

impl Serialize for FeedSwitches {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FeedSwitches::Read(switches) => switches.serialize(serializer),
            FeedSwitches::Absent | FeedSwitches::Malformed(_) => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for FeedSwitches {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FeedSwitches, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if !value.is_object() {
            return Ok(FeedSwitches::Malformed(
                "switches: not an object".to_owned(),
            ));
        }
        Ok(match serde_json::from_value::<Switches>(value) {
            Ok(switches) => FeedSwitches::Read(switches),
            Err(e) => FeedSwitches::Malformed(format!("switches: {e}")),
        })
    }
}

/// One change-feed answer: what changed after the asked cursor (a page of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedAnswer {
    /// The context signing keys (current and next), when the server signs contexts.
    #[serde(default, skip_serializing_if = "ContextKeys::is_absent")]
    pub context_keys: ContextKeys,
    /// [`FEED_FORMAT`]; an answer without it is from a server older than the filter.
    #[serde(default)]
    pub format: u64,
    /// The server's change version: the next request's `since` (with `more`, the last stamp
    /// of this page).
    pub version: u64,
    pub policy_version: u64,
    /// When the policy version last changed (0: not known), if after the cursor.
    #[serde(default)]
    pub policy_changed_at_ms: Option<u64>,
    #[serde(default)]
    pub subjects: Vec<SubjectRow>,
    #[serde(default)]
    pub tokens: Vec<KeyRow>,
    #[serde(default)]
    pub jtis: Vec<KeyRow>,
    #[serde(default)]
    pub statuses: Vec<StatusRow>,
    /// The answer is one page of a larger state: ask again at once from `version`.
    #[serde(default)]
    pub more: bool,
    /// The server vouches that its state is current (only an explicit `true` counts).
    #[serde(default)]
    pub confirmed: bool,
    /// Names the server's change counter: another value means versions learned before say
    /// nothing about this one.
    #[serde(default)]
    pub incarnation: Option<String>,
    /// The incident switches in force when the answer was built.
    #[serde(default, skip_serializing_if = "FeedSwitches::is_absent")]
    pub switches: FeedSwitches,
}

impl FeedAnswer {
    /// Reads an answer; an error names what is wrong with it.
    pub fn from_slice(body: &[u8]) -> Result<FeedAnswer, String> {
        serde_json::from_slice(body).map_err(|e| format!("epochs answer: {e}"))
    }

    /// The answer's JSON (what the server sends).
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and arrays: writing it to a string cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The bytes to put in front of an answer written without keys, minus its opening `{`,
    /// to carry `keys`: `{"context_keys":[…],`.
    pub fn keys_prefix(keys: &[WireKey]) -> String {
        let keys = serde_json::to_string(keys).unwrap_or_else(|_| "[]".to_owned());
        format!("{{\"context_keys\":{keys},")
    }
}

/// The body of a refused feed request: why, and (when the server paces the credential) how
/// long to wait before asking again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedRefusal {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl FeedRefusal {
    /// How long a refusal asks the reader to wait, if its body says.
    pub fn retry_after_ms(body: &[u8]) -> Option<u64> {
        serde_json::from_slice::<FeedRefusal>(body)
            .ok()?
            .retry_after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> FeedAnswer {
        FeedAnswer {
            context_keys: ContextKeys::Absent,
            format: FEED_FORMAT,
            version: 9,
            policy_version: 2,
            policy_changed_at_ms: Some(50),
            subjects: vec![SubjectRow("alice".into(), 40, 1, Some(41), None)],
            tokens: vec![KeyRow("ab".repeat(32), Some(9000), Some(42))],
            jtis: vec![KeyRow("j".into(), None, Some(43))],
            statuses: vec![StatusRow("https://idp/l".into(), 17, None, Some(44))],
            more: false,
            confirmed: true,
            incarnation: Some("ab12".into()),
            switches: FeedSwitches::Read(Switches::default()),
        }
    }

    #[test]
    fn what_the_server_writes_the_filter_reads() {
        let sent = answer();
        let json = sent.to_json();
        assert!(!json.contains("context_keys"), "{json}");
        assert_eq!(FeedAnswer::from_slice(json.as_bytes()).unwrap(), sent);
        // The rows are arrays, as every filter since format 2 reads them.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value["subjects"][0],
            serde_json::json!(["alice", 40, 1, 41, null])
        );
        assert_eq!(value["jtis"][0], serde_json::json!(["j", null, 43]));
    }

    #[test]
    fn keys_put_in_front_of_a_kept_answer_are_read_back() {
        let keys = vec![WireKey {
            kid: "e1".into(),
            secret: "c2VjcmV0".into(),
            from: 100,
            until: 200,
        }];
        let kept = answer().to_json();
        let sent = format!("{}{}", FeedAnswer::keys_prefix(&keys), &kept[1..]);
        let read = FeedAnswer::from_slice(sent.as_bytes()).unwrap();
        assert_eq!(read.context_keys, ContextKeys::Keys(keys));
        assert_eq!(read.tokens, answer().tokens);
    }

    #[test]
    fn a_malformed_key_set_is_kept_apart_from_the_revocations() {
        let body = br#"{"format":2,"version":1,"policy_version":0,"context_keys":[{"kid":"x"}],"jtis":[["j",null,1]]}"#;
        let read = FeedAnswer::from_slice(body).unwrap();
        assert!(matches!(read.context_keys, ContextKeys::Malformed(_)));
        assert_eq!(read.jtis.len(), 1);
    }

    #[test]
    fn switches_are_read_and_a_malformed_set_is_kept_apart_from_the_revocations() {
        let body = br#"{"format":2,"version":1,"policy_version":0,"switches":{"fail_closed":{"privileged":{"until_ms":null}}}}"#;
        let read = FeedAnswer::from_slice(body).unwrap();
        let FeedSwitches::Read(switches) = read.switches else {
            panic!("{:?}", read.switches)
        };
        assert!(switches.fails_closed(crate::Tier::Privileged, 0));
        for bad in [
            r#"{"fail_closed":{"platinum":{}}}"#,
            r#"{"rate_limits_off":{}}"#,
            r#"{"cache_max_ms":{"privileged":{"until_ms":1}}}"#,
            r#"[]"#,
        ] {
            let body = format!(
                r#"{{"format":2,"version":1,"policy_version":0,"switches":{bad},"jtis":[["j",null,1]]}}"#
            );
            let read = FeedAnswer::from_slice(body.as_bytes()).unwrap();
            assert!(matches!(read.switches, FeedSwitches::Malformed(_)), "{bad}");
            assert_eq!(read.jtis.len(), 1);
        }
        let old =
            FeedAnswer::from_slice(br#"{"format":2,"version":1,"policy_version":0}"#).unwrap();
        assert_eq!(old.switches, FeedSwitches::Absent);
    }

    #[test]
    fn older_rows_and_unknown_members_are_read() {
        let body = br#"{"format":2,"version":1,"policy_version":0,"subjects":[["a",5,1,6]],"jtis":[["j"]],"later":{"x":1}}"#;
        let read = FeedAnswer::from_slice(body).unwrap();
        assert_eq!(
            read.subjects,
            vec![SubjectRow("a".into(), 5, 1, Some(6), None)]
        );
        assert_eq!(read.jtis, vec![KeyRow("j".into(), None, None)]);
        assert!(!read.confirmed && !read.more);
    }

    #[test]
    fn wrong_types_are_refused_with_a_reason() {
        for bad in [
            r#"{"format":2,"version":"1","policy_version":0}"#,
            r#"{"format":2,"version":1}"#,
            r#"{"format":2,"version":1,"policy_version":0,"subjects":{}}"#,
            r#"{"format":2,"version":1,"policy_version":0,"subjects":[["a","x",1,1]]}"#,
            r#"{"format":2,"version":1,"policy_version":0,"confirmed":"yes"}"#,
            "not json",
        ] {
            let err = FeedAnswer::from_slice(bad.as_bytes()).unwrap_err();
            assert!(err.starts_with("epochs answer: "), "{bad}: {err}");
        }
    }

    #[test]
    fn a_refusal_says_how_long_to_wait() {
        let refusal = FeedRefusal {
            error: "slow down".into(),
            retry_after_ms: Some(2_500),
        };
        let body = serde_json::to_vec(&refusal).unwrap();
        assert_eq!(FeedRefusal::retry_after_ms(&body), Some(2_500));
        assert_eq!(FeedRefusal::retry_after_ms(br#"{"error": "x"}"#), None);
        assert_eq!(
            FeedRefusal::retry_after_ms(br#"{"error":"x","retry_after_ms":-1}"#),
            None
        );
        assert_eq!(FeedRefusal::retry_after_ms(b"not json"), None);
    }
}
