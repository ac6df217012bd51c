//! The revocations a proxy worker holds so that routes it decides locally from a JWT honour
//! them too: revoked token hashes, revoked `jti`s and revoked subjects (every token of the
//! subject issued at or before the revocation). They arrive from the server's change feed
//! (see [`crate::epochs`]); [`RevocationSet::screen`] is the check a verified token passes
//! before a local allow.
//!
//! Bounded. A token or `jti` revocation is forgotten once the token it names has expired (plus
//! [`FORGET_GRACE_MS`]: past it, the verifier refuses the token anyway). One whose expiry the
//! server did not know is kept until it learns one (from a later check of the token, or its
//! configured maximum token lifetime) and republishes it: nothing says the token is gone
//! before. A subject revocation is forgotten once every token it refuses has expired (the
//! server's maximum token lifetime after it), under its own cap. Tokens are held by the first
//! 128 bits of their SHA-256 and times in whole seconds (see the memory test in
//! `tests/tests/revocation_memory.rs`). At a cap (`max_entries` for tokens and `jti`s,
//! `max_subjects` for subjects), the entry that would be forgotten soonest makes room, and until
//! that entry would have been forgotten anyway the set is *incomplete*: writes must fail closed
//! ([`RevocationSet::complete`]), reads keep honouring what is held.
//!
//! What it does not do: fetch, read a clock (every call takes `now_ms`) or decide anything
//! but "this token was revoked".

use crate::status_list::StatusRef;
use crate::verify::VerifiedToken;
use std::collections::{BTreeSet, HashMap};

/// Kept this long past the revoked token's expiry: longer than any clock skew a provider
/// accepts (at most 300 s), so a revocation never leaves while its token could still pass.
pub const FORGET_GRACE_MS: u64 = 10 * 60 * 1000;
/// Default cap on held token and `jti` revocations.
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;
/// Default cap on held subject revocations.
pub const DEFAULT_MAX_SUBJECTS: usize = 100_000;
/// The forget time of a revocation whose expiry is not known: never, until one is learned.
const UNKNOWN: u32 = u32::MAX;

/// Keys that are forgotten at a time (whole seconds, rounded up), with an index by that time.
#[derive(Debug)]
struct Expiring<K> {
    forget_at: HashMap<K, u32>,
    by_time: BTreeSet<(u32, K)>,
}

impl<K: Clone + Ord + std::hash::Hash> Expiring<K> {
    fn new() -> Expiring<K> {
        Expiring {
            forget_at: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.forget_at.len()
    }

    fn contains(&self, key: &K) -> bool {
        self.forget_at.contains_key(key)
    }

    fn get(&self, key: &K) -> Option<u32> {
        self.forget_at.get(key).copied()
    }

    fn put(&mut self, key: K, at: u32) {
        if let Some(old) = self.forget_at.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    fn soonest(&self) -> Option<u32> {
        self.by_time.first().map(|(at, _)| *at)
    }

    fn remove(&mut self, key: &K) {
        if let Some(at) = self.forget_at.remove(key) {
            self.by_time.remove(&(at, key.clone()));
        }
    }

    fn pop_soonest(&mut self) -> Option<u32> {
        let (at, key) = self.by_time.pop_first()?;
        self.forget_at.remove(&key);
        Some(at)
    }

    /// Holds `key` until `at`: a later time wins, except that with `known_replaces_unknown` (a
    /// token's expiry is a fact about that one token) a known time replaces [`UNKNOWN`] and
    /// [`UNKNOWN`] never replaces a known time. Returns
    /// whether the key was already held (and so needs no room).
    fn hold(&mut self, key: K, at: u32, known_replaces_unknown: bool) -> bool {
        match self.get(&key) {
            Some(_) if known_replaces_unknown && at == UNKNOWN => return true,
            Some(held) if held == UNKNOWN && known_replaces_unknown => {}
            Some(held) if held >= at => return true,
            Some(_) => {}
            None => return false,
        }
        self.put(key, at);
        true
    }

    fn prune(&mut self, now_s: u32) -> usize {
        let mut gone = 0;
        while self.soonest().is_some_and(|at| at <= now_s) {
            self.pop_soonest();
            gone += 1;
        }
        gone
    }
}

/// Revoked tokens are held by the first 128 bits of their SHA-256: half the memory, and
/// finding a token that shares them with a revoked one takes about 2^128 hashes.
type TokenPrefix = [u8; 16];

fn prefix(digest: &[u8; 32]) -> TokenPrefix {
    let mut p = [0u8; 16];
    p.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
    p
}

fn seconds_up(ms: u64) -> u32 {
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

fn seconds_down(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// One worker's revocations.
#[derive(Debug)]
pub struct RevocationSet {
    tokens: Expiring<TokenPrefix>,
    jtis: Expiring<Box<str>>,
    /// Status List entries the server found set ([`crate::status_list`]), under the same cap
    /// as tokens and `jti`s.
    statuses: Expiring<StatusRef>,
    /// Subjects, by when they may be forgotten.
    subjects: Expiring<Box<str>>,
    /// Subject → tokens issued (`iat`, ms) at or before this are refused.
    subjects_revoked_at: HashMap<Box<str>, u64>,
    max_entries: usize,
    max_subjects: usize,
    /// Set when the cap dropped a revocation that was still needed: until then the set is
    /// incomplete.
    incomplete_until_ms: u64,
    /// The server's state restarted and has not yet been read whole and confirmed: what it
    /// holds now may include revocations this set lacks.
    resyncing: bool,
    dropped: u64,
}

/// Why [`RevocationSet::screen`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Token,
    Jti,
    Subject,
    /// Its Status List entry is set (revoked or suspended at the IdP).
    Status,
}

impl RevocationSet {
    /// A set holding at most `max_entries` token and `jti` revocations and
    /// [`DEFAULT_MAX_SUBJECTS`] subjects.
    pub fn new(max_entries: usize) -> RevocationSet {
        RevocationSet::with_caps(max_entries, DEFAULT_MAX_SUBJECTS)
    }

    /// A set holding at most `max_entries` token and `jti` revocations and `max_subjects`
    /// subjects.
    pub fn with_caps(max_entries: usize, max_subjects: usize) -> RevocationSet {
        RevocationSet {
            tokens: Expiring::new(),
            jtis: Expiring::new(),
            statuses: Expiring::new(),
            subjects: Expiring::new(),
            subjects_revoked_at: HashMap::new(),
            max_entries: max_entries.max(1),
            max_subjects: max_subjects.max(1),
            incomplete_until_ms: 0,
            resyncing: false,
            dropped: 0,
        }
    }

    /// Revocations held (tokens, `jti`s, Status List entries and subjects).
    pub fn len(&self) -> usize {
        self.keyed_len() + self.subjects.len()
    }

    /// Revocations under `max_entries`: tokens, `jti`s and Status List entries.
    fn keyed_len(&self) -> usize {
        self.tokens.len() + self.jtis.len() + self.statuses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Revocations dropped at the cap so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether every revocation still needed is held (false for a while after the cap dropped
    /// one): writes fail closed while it is false.
    pub fn complete(&self, now_ms: u64) -> bool {
        !self.resyncing && now_ms >= self.incomplete_until_ms
    }

    /// The server's state restarted (a new incarnation): revocations are facts with their own
    /// expiry, so every one held stays (a replica still catching up must not wipe them), and
    /// the set is incomplete until [`RevocationSet::resynced`].
    pub fn resync(&mut self) {
        self.resyncing = true;
        // What the cap dropped is read again with the whole state (and dropped again, marking
        // the set incomplete again, if there is still no room).
        self.incomplete_until_ms = 0;
    }

    /// A confirmed read of the new incarnation's whole state was applied.
    pub fn resynced(&mut self) {
        self.resyncing = false;
    }

    /// When a revocation may be forgotten (whole seconds, rounded up; [`UNKNOWN`] when its
    /// expiry is not known), unless that has passed.
    fn forget_at(expires_at_ms: Option<u64>, now_ms: u64) -> Option<u32> {
        let Some(exp) = expires_at_ms else {
            return Some(UNKNOWN);
        };
        let at_ms = exp.saturating_add(FORGET_GRACE_MS);
        (at_ms > now_ms).then(|| seconds_up(at_ms).min(UNKNOWN - 1))
    }

    /// Whether a new token or `jti` entry forgotten at `at` may be held: true when there is
    /// room (made by dropping the entry forgotten soonest, if that goes before `at`).
    fn room_for(&mut self, at: u32, now_ms: u64) -> bool {
        self.prune(now_ms);
        if self.keyed_len() < self.max_entries {
            return true;
        }
        let soonest = [
            self.tokens.soonest(),
            self.jtis.soonest(),
            self.statuses.soonest(),
        ]
        .into_iter()
        .flatten()
        .min();
        match soonest {
            Some(first) if first < at => {
                let dropped = if self.tokens.soonest() == Some(first) {
                    self.tokens.pop_soonest()
                } else if self.jtis.soonest() == Some(first) {
                    self.jtis.pop_soonest()
                } else {
                    self.statuses.pop_soonest()
                };
                self.drop_needed(u64::from(dropped.unwrap_or(first)) * 1000);
                true
            }
            _ => {
                // Every held entry outlives this one.
                self.drop_needed(u64::from(at) * 1000);
                false
            }
        }
    }

    /// Whether a new subject forgotten at `at` may be held, as [`RevocationSet::room_for`]
    /// under the subjects' own cap.
    fn room_for_subject(&mut self, at: u32, now_ms: u64) -> bool {
        self.prune(now_ms);
        if self.subjects.len() < self.max_subjects {
            return true;
        }
        match self.subjects.by_time.first().cloned() {
            Some((first, subject)) if first < at => {
                self.subjects.pop_soonest();
                self.subjects_revoked_at.remove(&subject);
                self.drop_needed(u64::from(first) * 1000);
                true
            }
            _ => {
                self.drop_needed(u64::from(at) * 1000);
                false
            }
        }
    }

    fn drop_needed(&mut self, forget_at_ms: u64) {
        self.dropped += 1;
        self.incomplete_until_ms = self.incomplete_until_ms.max(forget_at_ms);
    }

    pub fn revoke_token(&mut self, digest: [u8; 32], expires_at_ms: Option<u64>, now_ms: u64) {
        self.revoke(
            |set| &mut set.tokens,
            prefix(&digest),
            expires_at_ms,
            now_ms,
        );
    }

    pub fn revoke_jti(&mut self, jti: &str, expires_at_ms: Option<u64>, now_ms: u64) {
        self.revoke(|set| &mut set.jtis, jti.into(), expires_at_ms, now_ms);
    }

    /// The Status List entry `entry` is set: tokens naming it are refused until
    /// `expires_at_ms` (when every token that may name it has expired: the server's maximum
    /// token lifetime after it found the entry set; `None`: not known, kept until the cap).
    pub fn revoke_status(&mut self, entry: StatusRef, expires_at_ms: Option<u64>, now_ms: u64) {
        self.revoke(|set| &mut set.statuses, entry, expires_at_ms, now_ms);
    }

    /// Whether the Status List entry is held as set.
    pub fn status_is_set(&self, entry: &StatusRef) -> bool {
        self.statuses.contains(entry)
    }

    /// Holds `key` in the set `pick` chooses until its token's expiry (a later expiry wins),
    /// making room at the cap.
    fn revoke<K: Clone + Ord + std::hash::Hash>(
        &mut self,
        pick: fn(&mut RevocationSet) -> &mut Expiring<K>,
        key: K,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) {
        let Some(at) = Self::forget_at(expires_at_ms, now_ms) else {
            // Its token has expired (plus grace): held until its expiry was known, it goes.
            pick(self).remove(&key);
            return;
        };
        if !pick(self).hold(key.clone(), at, true) && self.room_for(at, now_ms) {
            pick(self).put(key, at);
        }
    }

    /// Tokens of `subject` issued at or before `revoked_at_ms` are refused, until
    /// `expires_at_ms` (when the last token the revocation refuses expires: the server's
    /// maximum token lifetime after it; `None`: not known, kept until the cap). At the cap the
    /// subject forgotten soonest makes room; when every held one outlives the new one, the
    /// new one is dropped and the set stays incomplete until it would have gone, or until the
    /// server's state is read again from the start ([`RevocationSet::resync`]; the read drops
    /// it again if there is still no room).
    pub fn revoke_subject(
        &mut self,
        subject: &str,
        revoked_at_ms: u64,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) {
        let Some(at) = Self::forget_at(expires_at_ms, now_ms) else {
            return;
        };
        // A later revocation refuses more tokens: the later time wins, and a subject whose
        // tokens' lifetime was not known stays so.
        let held = self.subjects.hold(subject.into(), at, false);
        if !held {
            if !self.room_for_subject(at, now_ms) {
                return;
            }
            self.subjects.put(subject.into(), at);
        }
        let revoked_at = self.subjects_revoked_at.entry(subject.into()).or_insert(0);
        *revoked_at = (*revoked_at).max(revoked_at_ms);
    }

    /// Forgets revocations whose tokens expired; returns how many went.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let now_s = seconds_down(now_ms);
        let subjects_before = self.subjects.len();
        let pruned = self.tokens.prune(now_s)
            + self.jtis.prune(now_s)
            + self.statuses.prune(now_s)
            + self.subjects.prune(now_s);
        if self.subjects.len() != subjects_before {
            let held = &self.subjects.forget_at;
            self.subjects_revoked_at.retain(|s, _| held.contains_key(s));
        }
        pruned
    }

    /// Whether a revocation by token names one of `digests` (a token's bytes or signed part).
    pub fn names_token(&self, digests: &[[u8; 32]]) -> bool {
        digests.iter().any(|d| self.tokens.contains(&prefix(d)))
    }

    /// Whether a verified token was revoked.
    pub fn screen(&self, token: &VerifiedToken) -> Option<Revoked> {
        if self.is_empty() {
            return None;
        }
        if self.names_token(&[token.digest, token.signed_digest]) {
            return Some(Revoked::Token);
        }
        if let Some(jti) = token.claims.raw.get("jti").and_then(|v| v.as_str()) {
            if self.jtis.contains(&Box::from(jti)) {
                return Some(Revoked::Jti);
            }
        }
        if self.statuses.len() > 0 {
            if let Ok(Some(entry)) = StatusRef::of(&token.claims) {
                if self.statuses.contains(&entry) {
                    return Some(Revoked::Status);
                }
            }
        }
        let issued_ms = token.claims.issued_at.unwrap_or(0).max(0) as u64 * 1000;
        crate::principal::revocation_keys(
            token.claims.subject.as_deref(),
            token.claims.client_id.as_deref(),
        )
        .iter()
        .any(|key| {
            self.subjects_revoked_at
                .get(key.as_str())
                .is_some_and(|revoked_at| issued_ms <= *revoked_at)
        })
        .then_some(Revoked::Subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Claims;
    fn token(sub: &str, jti: &str, iat: i64) -> VerifiedToken {
        token_with(sub, jti, iat, [0; 32])
    }

    fn token_with(sub: &str, jti: &str, iat: i64, digest: [u8; 32]) -> VerifiedToken {
        let claims = Claims::from_json(
            serde_json::json!({"sub": sub, "jti": jti, "iat": iat})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        VerifiedToken {
            provider: 0,
            algorithm: jsonwebtoken::Algorithm::RS256,
            kid: None,
            claims,
            digest,
            signed_digest: [0xee; 32],
        }
    }

    fn digested(t: &VerifiedToken, byte: u8) -> VerifiedToken {
        VerifiedToken {
            digest: [byte; 32],
            ..t.clone()
        }
    }

    #[test]
    fn a_status_list_entry_refuses_the_tokens_naming_it_until_it_expires() {
        let named = |idx: u64| {
            let mut t = token("alice", "j", 0);
            t.claims.raw.insert(
                "status".into(),
                serde_json::json!({"status_list": {"idx": idx, "uri": "https://idp/l"}}),
            );
            t
        };
        let entry = |index| StatusRef {
            uri: "https://idp/l".into(),
            index,
        };
        let mut set = RevocationSet::new(2);
        set.revoke_status(entry(3), Some(60_000), 0);
        assert_eq!(set.screen(&named(3)), Some(Revoked::Status));
        assert_eq!(set.screen(&named(4)), None);
        assert!(set.status_is_set(&entry(3)));
        // Under the same cap as tokens and `jti`s: the one forgotten soonest makes room.
        set.revoke_jti("x", Some(120_000), 0);
        set.revoke_status(entry(5), Some(180_000), 0);
        assert_eq!(set.len(), 2);
        assert!(!set.status_is_set(&entry(3)));
        assert!(!set.complete(0), "a needed entry was dropped");
        // Forgotten once every token naming it has expired (plus grace).
        set.prune(180_000 + FORGET_GRACE_MS + 1_000);
        assert!(!set.status_is_set(&entry(5)));
    }

    #[test]
    fn a_token_revocation_names_its_signed_part_or_its_bytes() {
        let mut set = RevocationSet::new(10);
        let alice = token_with("alice", "j-a", 100, [1; 32]);
        let other_encoding = VerifiedToken {
            digest: [2; 32],
            ..alice.clone()
        };
        set.revoke_token([0xee; 32], Some(9_000_000), 1_000);
        assert_eq!(set.screen(&alice), Some(Revoked::Token));
        assert_eq!(set.screen(&other_encoding), Some(Revoked::Token));
        let mut by_bytes = RevocationSet::new(10);
        by_bytes.revoke_token([1; 32], Some(9_000_000), 1_000);
        assert_eq!(by_bytes.screen(&alice), Some(Revoked::Token));
        assert_eq!(by_bytes.screen(&other_encoding), None);
    }

    #[test]
    fn each_kind_of_revocation_refuses_its_tokens_only() {
        let mut set = RevocationSet::new(10);
        let alice = token("alice", "j-a", 100);
        assert_eq!(set.screen(&digested(&alice, 1)), None);
        set.revoke_token([1; 32], Some(1_000_000), 0);
        assert_eq!(set.screen(&digested(&alice, 1)), Some(Revoked::Token));
        assert_eq!(set.screen(&digested(&alice, 2)), None);
        set.revoke_jti("j-a", None, 0);
        assert_eq!(set.screen(&digested(&alice, 2)), Some(Revoked::Jti));
        let bob_old = token("bob", "j-b1", 100);
        let bob_new = token("bob", "j-b2", 300);
        set.revoke_subject("bob", 200_000, None, 0);
        assert_eq!(set.screen(&digested(&bob_old, 3)), Some(Revoked::Subject));
        assert_eq!(
            set.screen(&digested(&bob_new, 4)),
            None,
            "a later login passes"
        );
        // A later revocation of the subject moves its epoch forward, never back.
        set.revoke_subject("bob", 100_000, None, 0);
        assert_eq!(set.screen(&digested(&bob_old, 3)), Some(Revoked::Subject));
        set.revoke_subject("bob", 300_000, None, 0);
        assert_eq!(set.screen(&digested(&bob_new, 4)), Some(Revoked::Subject));
    }

    #[test]
    fn revocations_leave_when_their_tokens_expire() {
        let mut set = RevocationSet::new(10);
        set.revoke_token([1; 32], Some(5_000), 0);
        set.revoke_jti("j", None, 0);
        assert_eq!(set.prune(5_000 + FORGET_GRACE_MS - 1), 0, "grace");
        assert_eq!(set.prune(5_000 + FORGET_GRACE_MS), 1);
        assert_eq!(set.len(), 1);
        // Already expired: never held.
        set.revoke_token([2; 32], Some(1), FORGET_GRACE_MS + 2);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_revocation_whose_expiry_is_not_known_stays_until_one_is_learned() {
        let year_ms = 365 * 24 * 3_600_000;
        let mut set = RevocationSet::new(10);
        set.revoke_jti("j", None, 0);
        set.revoke_token([1; 32], None, 0);
        assert_eq!(set.prune(year_ms), 0, "a 30-day token may still be valid");
        let t = token("x", "j", 1);
        assert_eq!(set.screen(&digested(&t, 9)), Some(Revoked::Jti));
        // The server learned the token's expiry and republished it: a known expiry replaces
        // the unknown one, even an earlier one.
        set.revoke_token([1; 32], Some(year_ms + 1_000), year_ms);
        set.revoke_jti("j", Some(year_ms + 2_000), year_ms);
        // An unknown expiry arriving again does not undo what was learned.
        set.revoke_token([1; 32], None, year_ms);
        assert_eq!(set.prune(year_ms + 1_000 + FORGET_GRACE_MS), 1);
        assert_eq!(set.prune(year_ms + 2_000 + FORGET_GRACE_MS), 1);
        assert!(set.is_empty());
        // An expiry learned after it passed: the revocation held as unknown goes at once.
        set.revoke_jti("late", None, year_ms);
        set.revoke_jti("late", Some(1_000), year_ms);
        assert!(set.is_empty());
    }

    #[test]
    fn subject_revocations_leave_once_every_token_they_refuse_has_expired() {
        let mut set = RevocationSet::new(10);
        let old = token("bob", "j", 100);
        set.revoke_subject("bob", 200_000, Some(3_800_000), 200_000);
        assert_eq!(set.screen(&digested(&old, 1)), Some(Revoked::Subject));
        assert_eq!(set.prune(3_800_000 + FORGET_GRACE_MS - 1), 0);
        // A later revocation moves both times forward, never back.
        set.revoke_subject("bob", 300_000, Some(3_900_000), 300_000);
        set.revoke_subject("bob", 100_000, Some(3_700_000), 300_000);
        assert_eq!(set.prune(3_800_000 + FORGET_GRACE_MS), 0);
        assert_eq!(set.prune(3_900_000 + FORGET_GRACE_MS), 1);
        assert_eq!(set.screen(&digested(&old, 1)), None);
        // Without a known lifetime, kept.
        set.revoke_subject("carol", 1, None, 0);
        assert_eq!(set.prune(u64::from(u32::MAX - 1) * 1000), 0);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn subjects_and_tokens_have_their_own_caps() {
        let mut set = RevocationSet::with_caps(1, 2);
        set.revoke_subject("a", 1, Some(10_000), 0);
        set.revoke_subject("b", 1, Some(20_000), 0);
        set.revoke_token([1; 32], Some(5_000), 0);
        assert_eq!(set.len(), 3, "a token does not push out a subject");
        assert!(set.complete(0));
        // The subject forgotten soonest makes room; incomplete until it would have gone.
        set.revoke_subject("c", 1, Some(30_000), 0);
        assert_eq!(set.len(), 3);
        let a = token("a", "j", 0);
        assert_eq!(set.screen(&digested(&a, 9)), None);
        assert_eq!(
            set.screen(&digested(&token("c", "j", 0), 9)),
            Some(Revoked::Subject)
        );
        assert!(!set.complete(10_000 + FORGET_GRACE_MS - 1));
        assert!(set.complete(10_000 + FORGET_GRACE_MS));
        // A token at its cap does not push out a subject either.
        set.revoke_token([2; 32], Some(50_000), 0);
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.screen(&digested(&token("b", "j", 0), 9)),
            Some(Revoked::Subject)
        );
    }

    #[test]
    fn at_the_cap_the_soonest_to_go_makes_room_and_the_set_is_incomplete_until_then() {
        let mut set = RevocationSet::new(2);
        set.revoke_token([1; 32], Some(10_000), 0);
        set.revoke_token([2; 32], Some(20_000), 0);
        assert!(set.complete(0));
        set.revoke_token([3; 32], Some(30_000), 0);
        assert_eq!(set.len(), 2);
        assert_eq!(set.dropped(), 1);
        let t = token("x", "y", 1);
        assert_eq!(set.screen(&digested(&t, 1)), None, "dropped");
        assert_eq!(set.screen(&digested(&t, 3)), Some(Revoked::Token));
        assert!(!set.complete(10_000 + FORGET_GRACE_MS - 1));
        assert!(set.complete(10_000 + FORGET_GRACE_MS));
        // A newcomer that would go sooner than everything held is the one dropped.
        set.revoke_token([4; 32], Some(5_000), 0);
        assert_eq!(set.screen(&digested(&t, 4)), None);
        assert_eq!(set.dropped(), 2);
        // A full set of subjects: a new subject is dropped and marks the set incomplete.
        let mut subjects = RevocationSet::with_caps(1, 1);
        subjects.revoke_subject("a", 1, None, 0);
        subjects.revoke_subject("b", 1, None, 0);
        assert_eq!(subjects.len(), 1);
        assert!(!subjects.complete(1_000));
    }
}
