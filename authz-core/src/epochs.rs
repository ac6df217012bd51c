//! The server's `/admin/epochs?since=N` answer, as the filter applies it: what to purge from
//! its decision cache and which versions to remember. Pure parsing; the filter polls.

use crate::token_hash::parse_digest_hex;
use serde_json::Value;

/// Changes since the version the filter asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The server's change version now (ask `since` this next time).
    pub version: u64,
    pub policy_version: u64,
    /// Subjects whose epoch changed (their decisions must go).
    pub subjects: Vec<String>,
    /// SHA-256 of revoked tokens.
    pub revoked_token_hashes: Vec<[u8; 32]>,
    /// Whether any `jti` was revoked (the filter cannot map those to entries: it clears all).
    pub jti_revoked: bool,
    /// Whether the server vouches that its state is current (false while its shared tier is
    /// unreachable): purges still apply, but the answer does not renew trust in the cache.
    pub confirmed: bool,
    /// Which counter `version` belongs to: a different value means the server's state was
    /// restarted (or another server without shared state answered), so versions learned
    /// before say nothing about this one.
    pub incarnation: Option<String>,
}

impl Changes {
    pub fn parse(body: &[u8]) -> Result<Changes, &'static str> {
        let v: Value = serde_json::from_slice(body).map_err(|_| "epochs answer is not json")?;
        let version = v
            .get("version")
            .and_then(Value::as_u64)
            .ok_or("epochs answer lacks version")?;
        let policy_version = v
            .get("policy_version")
            .and_then(Value::as_u64)
            .ok_or("epochs answer lacks policy_version")?;
        let subjects = match v.get("subjects") {
            Some(Value::Object(map)) => map.keys().cloned().collect(),
            _ => return Err("epochs answer lacks subjects"),
        };
        let revoked_token_hashes = match v.get("revoked_token_hashes") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .and_then(parse_digest_hex)
                        .ok_or("bad token hash")
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("epochs answer lacks revoked_token_hashes"),
        };
        let jti_revoked = v
            .get("revoked_jtis")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let confirmed = v.get("confirmed").and_then(Value::as_bool).unwrap_or(true);
        let incarnation = v
            .get("incarnation")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Changes {
            confirmed,
            incarnation,
            version,
            policy_version,
            subjects,
            revoked_token_hashes,
            jti_revoked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_answer() {
        let body = format!(
            r#"{{"version":7,"policy_version":2,"policy_changed":true,"subjects":{{"alice":1}},"revoked_token_hashes":["{}"],"revoked_jtis":[]}}"#,
            "ab".repeat(32)
        );
        let c = Changes::parse(body.as_bytes()).unwrap();
        assert_eq!((c.version, c.policy_version), (7, 2));
        assert_eq!(c.subjects, vec!["alice"]);
        assert_eq!(c.revoked_token_hashes, vec![[0xab; 32]]);
        assert!(!c.jti_revoked);
        assert!(c.confirmed, "servers without a shared tier omit it");
        let unconfirmed = Changes::parse(
            br#"{"version":7,"policy_version":2,"subjects":{},"revoked_token_hashes":[],"confirmed":false}"#,
        )
        .unwrap();
        assert!(!unconfirmed.confirmed);
        assert_eq!(unconfirmed.incarnation, None);
        let with_incarnation = Changes::parse(
            br#"{"version":7,"policy_version":2,"subjects":{},"revoked_token_hashes":[],"incarnation":"ab12"}"#,
        )
        .unwrap();
        assert_eq!(with_incarnation.incarnation.as_deref(), Some("ab12"));
        assert!(Changes::parse(b"{}").is_err());
        assert!(Changes::parse(
            br#"{"version":1,"policy_version":0,"subjects":{},"revoked_token_hashes":["zz"]}"#
        )
        .is_err());
    }
}
