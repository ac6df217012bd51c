//! The server's change feed (`GET /admin/epochs?since=N&format=2`, optionally held open with
//! `wait_ms`) as the filter applies it: what to purge from its decision cache, which
//! revocations to hold for the routes it decides locally, which versions to remember, and when
//! the server learned each change (to measure propagation). Pure; the wire format, and what
//! each row's columns are, is `crate::feed`.
//!
//! A large state comes in pages: an answer with `"more": true` holds the oldest changes, its
//! `version` is the next page's `since`, and it is never `confirmed`. `learned_at_ms` is when
//! the answering server learned a change (its clock).

use crate::feed::{FeedAnswer, KeyRow, StatusRow, FEED_FORMAT};
use crate::token_hash::parse_digest_hex;

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
    /// The incident switches in force when the answer was built (`crate::switches`).
    pub switches: crate::feed::FeedSwitches,
}

/// Checks a token or `jti` row; `key` reads its key.
fn key_revocation<K>(
    row: &KeyRow,
    key: impl Fn(&str) -> Option<K>,
) -> Result<KeyRevocation<K>, &'static str> {
    Ok(KeyRevocation {
        key: key(&row.0).ok_or("a revocation names no valid key")?,
        expires_at_ms: row.1,
        learned_at_ms: row.2,
    })
}

fn status_revocation(row: &StatusRow) -> Result<StatusRevocation, &'static str> {
    if row.0.is_empty() {
        return Err("a status revocation names no list");
    }
    if row.1 > crate::status_list::MAX_INDEX {
        return Err("a status revocation names no entry");
    }
    Ok(StatusRevocation {
        entry: crate::status_list::StatusRef {
            uri: row.0.clone(),
            index: row.1,
        },
        expires_at_ms: row.2,
        learned_at_ms: row.3,
    })
}

impl Changes {
    /// Reads and checks a feed answer (the keys it may carry aside).
    pub fn parse(body: &[u8]) -> Result<Changes, String> {
        Changes::from_answer(&FeedAnswer::from_slice(body)?).map_err(str::to_owned)
    }

    /// What the filter applies from an answer: every row checked, an answer with one bad row
    /// refused whole (the cursor does not move past changes not applied).
    pub fn from_answer(answer: &FeedAnswer) -> Result<Changes, &'static str> {
        if answer.format != FEED_FORMAT {
            return Err("epochs answer is not format 2 (is the server older than the filter?)");
        }
        // A counter no server reaches (one change per microsecond for 285 years): taking it
        // would move the cursor past every change to come, and nothing would be read again.
        if answer.version > MAX_SANE_VERSION || answer.policy_version > MAX_SANE_VERSION {
            return Err("epochs answer has a version beyond 2^53");
        }
        let subjects = answer
            .subjects
            .iter()
            .map(|row| SubjectRevocation {
                subject: row.0.clone(),
                revoked_at_ms: row.1,
                learned_at_ms: row.3,
                expires_at_ms: row.4,
            })
            .collect();
        Ok(Changes {
            version: answer.version,
            policy_version: answer.policy_version,
            policy_changed_at_ms: answer.policy_changed_at_ms,
            subjects,
            tokens: answer
                .tokens
                .iter()
                .map(|row| key_revocation(row, parse_digest_hex))
                .collect::<Result<_, _>>()?,
            jtis: answer
                .jtis
                .iter()
                .map(|row| key_revocation(row, |s| Some(s.to_owned())))
                .collect::<Result<_, _>>()?,
            statuses: answer
                .statuses
                .iter()
                .map(status_revocation)
                .collect::<Result<_, _>>()?,
            confirmed: answer.confirmed,
            more: answer.more,
            incarnation: answer.incarnation.clone(),
            switches: answer.switches.clone(),
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
