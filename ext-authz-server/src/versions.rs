//! Revocation state and versions: revoked token hashes and `jti`s, per-subject epochs, and the
//! policy version. Every change bumps one monotonic change counter, so a client (the filter's
//! cache, next issue) can ask "what changed since version N" cheaply.
//!
//! Subject revocation means: every token of that subject issued (`iat`) at or before the
//! revocation is refused from now on; tokens issued later (a new login) pass.
//!
//! In memory only. Revoked token hashes are kept up to a bound (oldest dropped first), which is
//! safe as long as the bound covers the tokens' remaining lifetimes; `jti` revocations likewise.

use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A SHA-256 of a token.
pub type TokenKey = [u8; 32];

const MAX_REVOKED: usize = 1_000_000;

#[derive(Debug, Default)]
struct SubjectEpoch {
    epoch: u64,
    changed_at_version: u64,
    revoked_at_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    policy_version: u64,
    policy_changed_at_version: u64,
    subjects: HashMap<String, SubjectEpoch>,
    revoked_tokens: HashMap<TokenKey, u64>,
    revoked_token_order: VecDeque<TokenKey>,
    revoked_jtis: HashMap<String, u64>,
    revoked_jti_order: VecDeque<String>,
}

/// Shared revocation and version state.
#[derive(Debug, Default)]
pub struct Versions {
    state: Mutex<State>,
}

use authz_core::token_hash::digest_hex as hex;
pub use authz_core::token_hash::parse_digest_hex as parse_token_hash;

impl Versions {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn revoke_token(&self, key: TokenKey) -> u64 {
        self.with(|s| {
            s.version += 1;
            if s.revoked_tokens.insert(key, s.version).is_none() {
                s.revoked_token_order.push_back(key);
            }
            while s.revoked_token_order.len() > MAX_REVOKED {
                if let Some(old) = s.revoked_token_order.pop_front() {
                    s.revoked_tokens.remove(&old);
                }
            }
            s.version
        })
    }

    pub fn revoke_jti(&self, jti: &str) -> u64 {
        self.with(|s| {
            s.version += 1;
            if s.revoked_jtis.insert(jti.to_owned(), s.version).is_none() {
                s.revoked_jti_order.push_back(jti.to_owned());
            }
            while s.revoked_jti_order.len() > MAX_REVOKED {
                if let Some(old) = s.revoked_jti_order.pop_front() {
                    s.revoked_jtis.remove(&old);
                }
            }
            s.version
        })
    }

    /// Bumps the subject's epoch; returns it.
    pub fn revoke_subject(&self, subject: &str, now_ms: u64) -> u64 {
        self.with(|s| {
            s.version += 1;
            let version = s.version;
            let e = s.subjects.entry(subject.to_owned()).or_default();
            e.epoch += 1;
            e.changed_at_version = version;
            e.revoked_at_ms = now_ms;
            e.epoch
        })
    }

    /// Bumps the policy version; returns it.
    pub fn bump_policy(&self) -> u64 {
        self.with(|s| {
            s.version += 1;
            s.policy_version += 1;
            s.policy_changed_at_version = s.version;
            s.policy_version
        })
    }

    /// The change counter: bumped by every revocation and policy change.
    pub fn change_version(&self) -> u64 {
        self.with(|s| s.version)
    }

    pub fn policy_version(&self) -> u64 {
        self.with(|s| s.policy_version)
    }

    pub fn is_token_revoked(&self, key: &TokenKey) -> bool {
        self.with(|s| s.revoked_tokens.contains_key(key))
    }

    pub fn is_jti_revoked(&self, jti: &str) -> bool {
        self.with(|s| s.revoked_jtis.contains_key(jti))
    }

    /// When the subject was last revoked (ms), if ever.
    pub fn subject_revoked_at_ms(&self, subject: &str) -> Option<u64> {
        self.with(|s| s.subjects.get(subject).map(|e| e.revoked_at_ms))
    }

    pub fn subject_epoch(&self, subject: &str) -> u64 {
        self.with(|s| s.subjects.get(subject).map(|e| e.epoch).unwrap_or(0))
    }

    /// Everything changed after `since`: the body of `GET /admin/epochs?since=N`.
    pub fn changes_since(&self, since: u64) -> Value {
        self.with(|s| {
            let subjects: serde_json::Map<String, Value> = s
                .subjects
                .iter()
                .filter(|(_, e)| e.changed_at_version > since)
                .map(|(sub, e)| (sub.clone(), json!(e.epoch)))
                .collect();
            let tokens: Vec<String> = s
                .revoked_tokens
                .iter()
                .filter(|(_, v)| **v > since)
                .map(|(k, _)| hex(k))
                .collect();
            let jtis: Vec<&String> = s
                .revoked_jtis
                .iter()
                .filter(|(_, v)| **v > since)
                .map(|(j, _)| j)
                .collect();
            json!({
                "version": s.version,
                "policy_version": s.policy_version,
                "policy_changed": s.policy_changed_at_version > since,
                "subjects": subjects,
                "revoked_token_hashes": tokens,
                "revoked_jtis": jtis,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_since_returns_only_newer_changes() {
        let v = Versions::default();
        v.revoke_subject("alice", 1_000);
        let after_alice = v.changes_since(0)["version"].as_u64().unwrap();
        v.revoke_subject("bob", 2_000);
        v.revoke_token([7u8; 32]);
        v.bump_policy();
        let changes = v.changes_since(after_alice);
        assert!(changes["subjects"].get("alice").is_none());
        assert_eq!(changes["subjects"]["bob"], 1);
        assert_eq!(changes["revoked_token_hashes"][0], hex(&[7u8; 32]));
        assert_eq!(changes["policy_version"], 1);
        assert_eq!(changes["policy_changed"], true);
        assert_eq!(
            v.changes_since(changes["version"].as_u64().unwrap())["subjects"]
                .as_object()
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn token_hashes_round_trip() {
        let key = [0xabu8; 32];
        assert_eq!(parse_token_hash(&hex(&key)), Some(key));
        assert_eq!(parse_token_hash("zz"), None);
    }
}
