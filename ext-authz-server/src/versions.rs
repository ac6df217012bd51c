//! Revocation state and versions: revoked token hashes and `jti`s, per-subject epochs, and the
//! policy version, with the change counter a client (the filter's decision cache) polls with
//! "what changed since version N".
//!
//! Subject revocation means: every token of that subject issued (`iat`) at or before the
//! revocation is refused from now on; tokens issued later (a new login) pass.
//!
//! Two modes. **Local** (no shared tier): every change bumps the counter. **Shared** (Redis,
//! see `shared`): the counter is the shared sequence, and it only advances as the event stream
//! is read in order ([`Versions::advance_to`]), so every instance reports the same numbers and a
//! filter may poll any of them. A change this instance learns out of order (its own admin call
//! before the stream echoes it, a change made while Redis was down, a fact republished after
//! Redis lost its data) is stamped `max(seq, counter + 1)`: it is in every answer until the
//! counter passes it, so no poller that already moved past the counter misses it. Facts only
//! accumulate: nothing applied here is ever un-revoked.
//!
//! In memory. A token or `jti` revocation is kept until its token expires (plus
//! [`EXPIRY_GRACE_MS`]). When that expiry is not known, it is learned: from the configured
//! maximum token lifetime ([`Versions::set_lifetime_bound_ms`]: the token was valid when
//! revoked, so it expires within that bound), or from the next check of the token
//! ([`Versions::learn_token_expiry`]); learning it restamps the revocation, so every feed
//! poller reads the expiry. A subject revocation is kept for that bound after it (its
//! expiry is in the feed, for workers to forget it too); without a bound, revocations stay up
//! to the cap on revoked keys (oldest dropped first).
//! This module does no I/O and reads no clock.

mod sets;
mod switch_slots;

use crate::lock;
use authz_core::feed::FeedSwitches;
use authz_core::feed::{ContextKeys, FeedAnswer, KeyRow, StatusRow, SubjectRow, FEED_FORMAT};
use authz_core::status_list::StatusRef;
use authz_core::switches::Switches;
use sets::{RevokedSet, Subjects};
use std::collections::HashMap;
use std::sync::Mutex;
pub use switch_slots::{SlotChange, SwitchChange};

/// A SHA-256 of a token.
pub type TokenKey = [u8; 32];

/// When a revocation may be forgotten (ms since the epoch): once the token it names has
/// expired (plus [`EXPIRY_GRACE_MS`]), refusing it again costs nothing. `None`: kept until the
/// bound on revocations pushes it out.
pub type Expiry = Option<u64>;

/// Kept this long past the named token's expiry: longer than any clock skew we accept.
pub const EXPIRY_GRACE_MS: u64 = 10 * 60 * 1000;

/// One change to the revocation state, as recorded locally or carried between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    RevokeToken(TokenKey, Expiry),
    RevokeJti(String, Expiry),
    /// A Status List entry the IdP set (revoked or suspended): tokens naming it are refused.
    /// The expiry is when every token that may name it has expired.
    RevokeStatus(StatusRef, Expiry),
    /// Tokens of `subject` issued at or before `revoked_at_ms` are refused. `epoch` is the
    /// shared count of the subject's revocations when known (from Redis).
    RevokeSubject {
        subject: String,
        revoked_at_ms: u64,
        epoch: Option<u64>,
    },
    /// The policy changed: every cached result goes. `version` is the shared policy version
    /// when known.
    BumpPolicy {
        version: Option<u64>,
    },
    /// An incident switch changed (`authz_core::switches`): not a fact, a setting; the last
    /// change of each switch wins.
    Switch(SwitchChange),
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The change was not known before (its effects must be applied: cache invalidation).
    pub new: bool,
    /// The version stamp the change carries in `changes_since`.
    pub stamp: u64,
    /// For a subject: its epoch now; for a policy bump: the policy version now.
    pub value: u64,
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    policy_version: u64,
    policy_changed_at_version: u64,
    policy_changed_at_ms: u64,
    subjects: Subjects,
    revoked_tokens: RevokedSet<TokenKey>,
    revoked_jtis: RevokedSet<String>,
    revoked_statuses: RevokedSet<StatusRef>,
    /// The longest a token lives (the configured maximum lifetime plus clock skew), ms.
    lifetime_bound_ms: Option<u64>,
    /// Rows per change-feed answer; 0: [`FEED_PAGE_ROWS`].
    page_rows: usize,
    /// The incident switches.
    switches: switch_slots::SwitchSlots,
}

/// Default rows per change-feed answer: about 1 MB of JSON.
pub const FEED_PAGE_ROWS: usize = 10_000;

/// Feed answers built for one change generation, by (`since`, confirmed, rows at most), and
/// their size.
#[derive(Debug, Default)]
struct KeptAnswers {
    generation: u64,
    bytes: usize,
    by_cursor: HashMap<(u64, bool, usize), std::sync::Arc<str>>,
}

/// At most this many feed answers are kept per change generation.
const ANSWERS_KEPT_ENTRIES: usize = 4_096;

/// Feed answers kept per change generation (the pages of a first read, and the cursors
/// pollers are at), at most this many bytes together: a holder of a feed secret asking for
/// many cursors pins no more.
const ANSWERS_KEPT_BYTES: usize = 32 << 20;

/// A subject row of a feed answer: subject, revoked at, epoch, learned at, expires at.
type PageSubject = (String, u64, u64, u64, Option<u64>);

/// One change-feed answer's rows, copied out of the state.
struct Page {
    version: u64,
    more: bool,
    policy_version: u64,
    policy_changed_at_ms: Option<u64>,
    subjects: Vec<PageSubject>,
    tokens: Vec<(TokenKey, Expiry, u64)>,
    jtis: Vec<(String, Expiry, u64)>,
    statuses: Vec<(StatusRef, Expiry, u64)>,
    /// The switches in force (on every answer: the state of the moment).
    switches: Switches,
}

impl Page {
    /// The page as a feed answer (`authz_core::feed`): a time of 0 (not known) is sent as
    /// absent, and a page with more to come is never confirmed.
    fn into_answer(self, confirmed: bool, incarnation: String) -> FeedAnswer {
        let learned = |at: u64| (at > 0).then_some(at);
        FeedAnswer {
            context_keys: ContextKeys::Absent,
            format: FEED_FORMAT,
            version: self.version,
            policy_version: self.policy_version,
            policy_changed_at_ms: self.policy_changed_at_ms,
            subjects: self
                .subjects
                .into_iter()
                .map(|(sub, at, epoch, learned_at, expires)| {
                    SubjectRow(sub, at, epoch, learned(learned_at), expires)
                })
                .collect(),
            tokens: self
                .tokens
                .iter()
                .map(|(k, expiry, at)| KeyRow(hex(k), *expiry, learned(*at)))
                .collect(),
            jtis: self
                .jtis
                .into_iter()
                .map(|(k, expiry, at)| KeyRow(k, expiry, learned(at)))
                .collect(),
            statuses: self
                .statuses
                .into_iter()
                .map(|(k, expiry, at)| StatusRow(k.uri, k.index, expiry, learned(at)))
                .collect(),
            more: self.more,
            confirmed: confirmed && !self.more,
            incarnation: Some(incarnation),
            switches: FeedSwitches::Read(self.switches),
        }
    }
}

impl State {
    /// The latest stamp anything carries (the counter, or a change stamped above it).
    fn top_stamp(&self) -> u64 {
        self.version
            .max(self.policy_changed_at_version)
            .max(self.revoked_tokens.by_stamp.last_stamp())
            .max(self.revoked_jtis.by_stamp.last_stamp())
            .max(self.revoked_statuses.by_stamp.last_stamp())
            .max(self.subjects.by_stamp.last_stamp())
            .max(self.switches.changed_at_version)
    }

    /// The changes stamped after `since`, at most about one page of them (of the configured
    /// rows, or `max_rows` when fewer): the page ends at the stamp of its last row (every
    /// row of that stamp included), and only below the counter (a page never moves a poller
    /// past changes still to come).
    fn page_since(&self, since: u64, max_rows: usize) -> Page {
        let rows = if self.page_rows == 0 {
            FEED_PAGE_ROWS
        } else {
            self.page_rows
        }
        .min(max_rows)
        .max(1);
        let mut stamps: Vec<u64> = self
            .revoked_tokens
            .by_stamp
            .stamps_after(since)
            .take(rows + 1)
            .chain(
                self.revoked_jtis
                    .by_stamp
                    .stamps_after(since)
                    .take(rows + 1),
            )
            .chain(
                self.revoked_statuses
                    .by_stamp
                    .stamps_after(since)
                    .take(rows + 1),
            )
            .chain(self.subjects.by_stamp.stamps_after(since).take(rows + 1))
            .collect();
        let mut upto = u64::MAX;
        if stamps.len() > rows {
            stamps.sort_unstable();
            let cut = stamps.get(rows - 1).copied().unwrap_or(u64::MAX);
            let beyond = self.revoked_tokens.by_stamp.any_after(cut)
                || self.revoked_jtis.by_stamp.any_after(cut)
                || self.revoked_statuses.by_stamp.any_after(cut)
                || self.subjects.by_stamp.any_after(cut)
                || self.policy_changed_at_version > cut
                || self.switches.changed_at_version > cut;
            if cut < self.version && beyond {
                upto = cut;
            }
        }
        let more = upto != u64::MAX;
        let bound = self.lifetime_bound_ms;
        Page {
            version: if more { upto } else { self.version },
            more,
            policy_version: self.policy_version,
            policy_changed_at_ms: (self.policy_changed_at_version > since
                && self.policy_changed_at_version <= upto)
                .then_some(self.policy_changed_at_ms),
            subjects: self
                .subjects
                .between(since, upto)
                .map(|(sub, e)| {
                    let expires = bound.map(|b| e.revoked_at_ms.saturating_add(b));
                    (
                        sub.clone(),
                        e.revoked_at_ms,
                        e.epoch,
                        e.learned_at_ms,
                        expires,
                    )
                })
                .collect(),
            tokens: self.revoked_tokens.raw_between(since, upto),
            jtis: self.revoked_jtis.raw_between(since, upto),
            statuses: self.revoked_statuses.raw_between(since, upto),
            switches: self.switches.state().clone(),
        }
    }
}

/// Shared revocation and version state.
#[derive(Debug)]
pub struct Versions {
    state: std::sync::RwLock<State>,
    shared: bool,
    /// Names the counter: random per process; with a shared tier, the shared store's.
    incarnation: Mutex<String>,
    /// Feed answers built for the current change generation, by (`since`, confirmed): a
    /// client looping on one page costs one build per change, not one walk of the state per
    /// request. At most [`ANSWERS_KEPT_BYTES`]; emptied by every change.
    answers: Mutex<KeptAnswers>,
    /// Bumped whenever anything a change-feed answer reports may have changed: held feed
    /// requests wait on it.
    changed: tokio::sync::watch::Sender<Wake>,
}

/// A wake-up of the held feed requests: how many so far, and when the last [`RECENT_WAKES`]
/// were sent (a held request's push is timed from the wake after it was held, even when later
/// wakes came before it ran: `authz_feed_push_seconds`).
#[derive(Debug, Clone)]
pub struct Wake {
    pub count: u64,
    /// (count, when), at `count % RECENT_WAKES`.
    recent: [(u64, std::time::Instant); RECENT_WAKES],
}

/// Wakes whose time is kept.
pub const RECENT_WAKES: usize = 16;

impl Default for Wake {
    fn default() -> Wake {
        let now = std::time::Instant::now();
        Wake {
            count: 0,
            recent: [(0, now); RECENT_WAKES],
        }
    }
}

impl Wake {
    fn next(&mut self) {
        self.count = self.count.wrapping_add(1);
        if let Some(slot) = self.recent.get_mut(self.count as usize % RECENT_WAKES) {
            *slot = (self.count, std::time::Instant::now());
        }
    }

    /// When wake `count` was sent; when it is no longer kept, the oldest kept (so a push
    /// timed from it is timed short, never long).
    pub fn time_of(&self, count: u64) -> std::time::Instant {
        let kept = self
            .recent
            .get(count as usize % RECENT_WAKES)
            .filter(|(c, _)| *c == count);
        match kept {
            Some((_, at)) => *at,
            None => self
                .recent
                .iter()
                .min_by_key(|(c, _)| *c)
                .map_or_else(std::time::Instant::now, |(_, at)| *at),
        }
    }
}

impl Default for Versions {
    fn default() -> Versions {
        Versions {
            state: std::sync::RwLock::default(),
            shared: false,
            incarnation: Mutex::new(random_incarnation()),
            answers: Mutex::default(),
            changed: tokio::sync::watch::channel(Wake::default()).0,
        }
    }
}

/// 64 random bits as hex (std's RandomState draws them from the OS).
pub fn random_incarnation() -> String {
    use std::hash::BuildHasher;
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(0u8)
    )
}

use authz_core::token_hash::digest_hex as hex;
pub use authz_core::token_hash::parse_digest_hex as parse_token_hash;

impl Versions {
    /// State whose counter is the shared sequence (advanced by the stream reader only).
    pub fn shared() -> Versions {
        Versions {
            shared: true,
            ..Versions::default()
        }
    }

    /// Adopts the shared store's incarnation (its counter is the shared sequence).
    pub fn set_incarnation(&self, incarnation: &str) {
        {
            let mut guard = lock(&self.incarnation);
            incarnation.clone_into(&mut guard);
        }
        self.wake();
    }

    /// A receiver that sees every later change (subscribe before reading the state).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Wake> {
        self.changed.subscribe()
    }

    fn wake(&self) {
        self.changed.send_modify(Wake::next);
    }

    pub fn incarnation(&self) -> String {
        lock(&self.incarnation).clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Reads the state: readers (every check, every feed page) never wait for each other,
    /// only for a change being applied.
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Records `change` without saying when it was learned (see [`Versions::apply_at`]).
    pub fn apply(&self, change: &Change, seq: Option<u64>) -> Applied {
        self.apply_at(change, seq, 0)
    }

    /// Records `change`, learned at `now_ms` (reported with it, so a client can measure how
    /// long the change took to reach it). `seq` is its place in the shared sequence, if it has
    /// one.
    pub fn apply_at(&self, change: &Change, seq: Option<u64>, now_ms: u64) -> Applied {
        let applied = self.record(change, seq, now_ms);
        self.wake();
        applied
    }

    fn record(&self, change: &Change, seq: Option<u64>, now_ms: u64) -> Applied {
        let shared = self.shared;
        self.with(|s| {
            // The stamp a fact gets if it is new here.
            let stamp = match (seq, shared) {
                (Some(seq), _) => seq.max(s.version + 1),
                (None, true) => s.version + 1,
                (None, false) => {
                    s.version += 1;
                    s.version
                }
            };
            // Not knowing a token's expiry, the bound on every token's lifetime stands in.
            let bounded = |expiry: &Expiry| {
                expiry.or_else(|| s.lifetime_bound_ms.map(|b| now_ms.saturating_add(b)))
            };
            match change {
                Change::RevokeToken(key, expiry) => {
                    let expiry = bounded(expiry);
                    let (new, stamp) = s.revoked_tokens.insert(*key, stamp, seq, expiry, now_ms);
                    Applied {
                        new,
                        stamp,
                        value: 0,
                    }
                }
                Change::RevokeJti(jti, expiry) => {
                    let expiry = bounded(expiry);
                    let (new, stamp) =
                        s.revoked_jtis
                            .insert(jti.clone(), stamp, seq, expiry, now_ms);
                    Applied {
                        new,
                        stamp,
                        value: 0,
                    }
                }
                Change::RevokeStatus(entry, expiry) => {
                    let expiry = bounded(expiry);
                    let (new, stamp) =
                        s.revoked_statuses
                            .insert(entry.clone(), stamp, seq, expiry, now_ms);
                    Applied {
                        new,
                        stamp,
                        value: 0,
                    }
                }
                Change::RevokeSubject {
                    subject,
                    revoked_at_ms,
                    epoch,
                } => {
                    s.subjects.update(subject, |e| {
                        // Without a sequence number this is a fresh local revocation.
                        let new = seq.is_none()
                            || *revoked_at_ms > e.revoked_at_ms
                            || epoch.is_some_and(|n| n > e.epoch);
                        let next_epoch = epoch.unwrap_or(e.epoch + u64::from(new));
                        if new || next_epoch > e.epoch {
                            e.changed_at_version = e.changed_at_version.max(stamp);
                            e.learned_at_ms = now_ms;
                        } else if let Some(seq) = seq {
                            e.changed_at_version = e.changed_at_version.max(seq);
                        }
                        e.revoked_at_ms = e.revoked_at_ms.max(*revoked_at_ms);
                        e.epoch = e.epoch.max(next_epoch);
                        Applied {
                            new,
                            stamp: e.changed_at_version,
                            value: e.epoch,
                        }
                    })
                }
                Change::Switch(switch) => {
                    let new = s.switches.set(switch, seq, stamp);
                    Applied {
                        new,
                        stamp: s.switches.changed_at_version,
                        value: 0,
                    }
                }
                Change::BumpPolicy { version } => {
                    let next = version.unwrap_or(s.policy_version + 1);
                    let new = next > s.policy_version;
                    if new {
                        s.policy_version = next;
                        s.policy_changed_at_version = s.policy_changed_at_version.max(stamp);
                        s.policy_changed_at_ms = now_ms;
                    }
                    Applied {
                        new,
                        stamp: s.policy_changed_at_version,
                        value: s.policy_version,
                    }
                }
            }
        })
    }

    /// Every accepted token lives at most `bound_ms` (the configured maximum lifetime plus
    /// skew): a revocation whose token's expiry is not known is kept that long after it is
    /// applied here, and a subject revocation that long after it was made.
    pub fn set_lifetime_bound_ms(&self, bound_ms: Option<u64>) {
        self.with(|s| s.lifetime_bound_ms = bound_ms);
    }

    /// A check saw a token a revocation names (`key`) expire at `expires_at_ms`: a revocation
    /// that did not know when to go learns it and is republished. Returns whether one did.
    pub fn learn_token_expiry(&self, key: &TokenKey, expires_at_ms: u64, now_ms: u64) -> bool {
        let unknown = self.read(|s| {
            s.revoked_tokens
                .entries
                .get(key)
                .is_some_and(|e| e.expiry.is_none())
        });
        if unknown {
            self.apply_at(
                &Change::RevokeToken(*key, Some(expires_at_ms)),
                None,
                now_ms,
            );
        }
        unknown
    }

    /// The shared stream has been read through `seq`.
    pub fn advance_to(&self, seq: u64) {
        self.with(|s| s.version = s.version.max(seq));
        self.wake();
    }

    /// Everything known, as changes (to republish after the shared store lost its data).
    pub fn export(&self) -> Vec<Change> {
        self.read(|s| {
            let mut all: Vec<Change> = Vec::new();
            if s.policy_version > 0 {
                all.push(Change::BumpPolicy {
                    version: Some(s.policy_version),
                });
            }
            all.extend(s.subjects.iter().map(|(sub, e)| Change::RevokeSubject {
                subject: sub.clone(),
                revoked_at_ms: e.revoked_at_ms,
                epoch: Some(e.epoch),
            }));
            all.extend(
                s.revoked_tokens
                    .order
                    .iter()
                    .map(|k| Change::RevokeToken(*k, s.revoked_tokens.expiry_of(k))),
            );
            all.extend(
                s.revoked_jtis
                    .order
                    .iter()
                    .map(|k| Change::RevokeJti(k.clone(), s.revoked_jtis.expiry_of(k))),
            );
            all.extend(
                s.revoked_statuses
                    .order
                    .iter()
                    .map(|k| Change::RevokeStatus(k.clone(), s.revoked_statuses.expiry_of(k))),
            );
            all.extend(
                s.switches
                    .changes()
                    .map(|slot| Change::Switch(slot.change.clone())),
            );
            all
        })
    }

    /// Forgets revocations of tokens that expired (plus [`EXPIRY_GRACE_MS`]) before `now_ms`:
    /// refusing them costs nothing any more. Returns how many went.
    pub fn prune_expired(&self, now_ms: u64) -> usize {
        let pruned = self.with(|s| {
            let subjects = s.subjects.len();
            if let Some(bound) = s.lifetime_bound_ms {
                // Every token a subject revocation refuses has expired.
                s.subjects.retain(|e| {
                    e.revoked_at_ms
                        .saturating_add(bound)
                        .saturating_add(EXPIRY_GRACE_MS)
                        > now_ms
                });
            }
            s.revoked_tokens.prune(now_ms)
                + s.revoked_jtis.prune(now_ms)
                + s.revoked_statuses.prune(now_ms)
                + (subjects - s.subjects.len())
        });
        if pruned > 0 {
            // What a whole-state answer holds changed.
            self.wake();
        }
        pruned
    }

    /// Revocations held (token hashes, `jti`s).
    pub fn revoked_counts(&self) -> (usize, usize) {
        self.read(|s| (s.revoked_tokens.entries.len(), s.revoked_jtis.entries.len()))
    }

    /// The change counter: bumped by every revocation and policy change.
    pub fn change_version(&self) -> u64 {
        self.read(|s| s.version)
    }

    pub fn policy_version(&self) -> u64 {
        self.read(|s| s.policy_version)
    }

    pub fn is_token_revoked(&self, key: &TokenKey) -> bool {
        self.read(|s| s.revoked_tokens.contains(key))
    }

    /// Whether a Status List entry was found set.
    pub fn is_status_revoked(&self, entry: &StatusRef) -> bool {
        self.read(|s| s.revoked_statuses.contains(entry))
    }

    pub fn is_jti_revoked(&self, jti: &str) -> bool {
        self.read(|s| s.revoked_jtis.contains(&jti.to_owned()))
    }

    /// When the subject was last revoked (ms), if ever.
    pub fn subject_revoked_at_ms(&self, subject: &str) -> Option<u64> {
        self.read(|s| s.subjects.get(subject).map(|e| e.revoked_at_ms))
    }

    pub fn subject_epoch(&self, subject: &str) -> u64 {
        self.read(|s| s.subjects.get(subject).map(|e| e.epoch).unwrap_or(0))
    }

    /// Whether anything is stamped after `since` (a held feed request answers once there is).
    pub fn has_changes_since(&self, since: u64) -> bool {
        self.read(|s| {
            s.policy_changed_at_version > since
                || s.revoked_tokens.by_stamp.any_after(since)
                || s.revoked_jtis.by_stamp.any_after(since)
                || s.revoked_statuses.by_stamp.any_after(since)
                || s.subjects.by_stamp.any_after(since)
                || s.switches.changed_at_version > since
        })
    }

    /// The incident switches in force.
    pub fn switches(&self) -> Switches {
        self.read(|s| s.switches.state().clone())
    }

    /// Each switch's last change (who asked, when).
    pub fn switch_changes(&self) -> Vec<SlotChange> {
        self.read(|s| s.switches.changes().cloned().collect())
    }

    /// When a change of `slot` asked for at `now_ms` (this server's clock) is stamped: after
    /// the slot's last change, whatever this clock says, so it is the slot's latest everywhere
    /// (and a one-shot's time differs from the last one's).
    pub fn switch_stamp_ms(&self, slot: &str, now_ms: u64) -> u64 {
        self.read(|s| {
            s.switches
                .last_at_ms(slot)
                .map_or(now_ms, |last| now_ms.max(last.saturating_add(1)))
        })
    }

    /// What the switches say of `tier` at `now_ms`: its cache cap, and whether it fails
    /// closed. (One read of the state per check.)
    pub fn tier_switches(&self, tier: authz_core::Tier, now_ms: u64) -> (Option<u64>, bool) {
        self.read(|s| {
            let switches = s.switches.state();
            (
                switches.cache_cap_ms(tier, now_ms),
                switches.fails_closed(tier, now_ms),
            )
        })
    }

    /// When the last flush was asked for (0: never): the shared cache's keys name it, so a
    /// flush makes every entry stored before it unreachable.
    pub fn flushed_at_ms(&self) -> u64 {
        self.read(|s| s.switches.state().flushed_at_ms)
    }

    /// Everything changed after `since`, in format 2 (see `authz_core::epochs`): the body of
    /// `GET /admin/epochs?since=N&format=2`, with when this instance learned each change.
    ///
    /// Paged: an answer holds the changes of about [`Versions::set_page_rows`] rows (never
    /// splitting one stamp), oldest first; when more follow it says `"more": true`, its
    /// `version` is the last stamp it holds (the poller's next `since`) and it is not
    /// `confirmed` (the poller has not read the whole state yet). The state's lock is held
    /// only to read one page of rows out (a read lock: checks are not held up); an answer
    /// is kept until the next change, so a client looping on it costs one build per change.
    pub fn changes_since_v2(&self, since: u64, confirmed: bool) -> std::sync::Arc<str> {
        self.changes_since_v2_at_most(since, confirmed, usize::MAX)
    }

    /// [`Versions::changes_since_v2`] in pages of at most `max_rows` rows (when fewer than
    /// the configured ones): the answers the server does not pace are kept small.
    pub fn changes_since_v2_at_most(
        &self,
        since: u64,
        confirmed: bool,
        max_rows: usize,
    ) -> std::sync::Arc<str> {
        let generation = self.changed.borrow().count;
        // Every cursor at or past the latest stamp reads the same (empty) answer: one kept
        // answer for all of them, however many such cursors clients ask for.
        let since = since.min(self.read(State::top_stamp));
        {
            let answers = lock(&self.answers);
            if answers.generation == generation {
                if let Some(body) = answers.by_cursor.get(&(since, confirmed, max_rows)) {
                    return body.clone();
                }
            }
        }
        let incarnation = self.incarnation();
        let page = self.read(|s| s.page_since(since, max_rows));
        let body: std::sync::Arc<str> = page.into_answer(confirmed, incarnation).to_json().into();
        let mut answers = lock(&self.answers);
        if answers.generation != generation {
            *answers = KeptAnswers {
                generation,
                ..KeptAnswers::default()
            };
        }
        if answers.bytes + body.len() <= ANSWERS_KEPT_BYTES
            && answers.by_cursor.len() < ANSWERS_KEPT_ENTRIES
        {
            answers.bytes += body.len();
            if let Some(replaced) = answers
                .by_cursor
                .insert((since, confirmed, max_rows), body.clone())
            {
                answers.bytes = answers.bytes.saturating_sub(replaced.len());
            }
        }
        body
    }

    /// Rows per change-feed answer (at least 1; default [`FEED_PAGE_ROWS`]).
    pub fn set_page_rows(&self, rows: usize) {
        self.with(|s| s.page_rows = rows.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn subject(name: &str, at: u64) -> Change {
        Change::RevokeSubject {
            subject: name.into(),
            revoked_at_ms: at,
            epoch: None,
        }
    }

    #[test]
    fn changes_since_returns_only_newer_changes() {
        let v = Versions::default();
        v.apply(&subject("alice", 1_000), None);
        let after_alice = feed(&v, 0)["version"].as_u64().unwrap();
        v.apply(&subject("bob", 2_000), None);
        v.apply(&Change::RevokeToken([7u8; 32], None), None);
        v.apply(&Change::BumpPolicy { version: None }, None);
        let changes = feed(&v, after_alice);
        assert_eq!(subjects(&v, after_alice), vec![("bob".to_owned(), 1)]);
        assert_eq!(tokens(&v, after_alice), vec![hex(&[7u8; 32])]);
        assert_eq!(changes["policy_version"], 1);
        assert!(changes["policy_changed_at_ms"].is_u64());
        let now = changes["version"].as_u64().unwrap();
        assert!(subjects(&v, now).is_empty());
        assert!(feed(&v, now)["policy_changed_at_ms"].is_null());
    }

    #[test]
    fn subjects_are_read_by_the_stamp_of_their_last_change() {
        let v = Versions::default();
        v.set_lifetime_bound_ms(Some(1_000));
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            v.apply_at(&subject(name, 1_000 * i as u64), None, 10);
        }
        let before = v.change_version();
        // b revoked again: restamped, read once, after the others.
        v.apply_at(&subject("b", 9_000), None, 10);
        assert_eq!(subjects(&v, before), vec![("b".to_owned(), 2)]);
        assert_eq!(subjects(&v, 0).len(), 4, "once each");
        assert_eq!(subjects(&v, 0).last(), Some(&("b".to_owned(), 2)));
        // Pages of 2 rows cut between stamps and miss none.
        v.set_page_rows(2);
        let (mut since, mut seen) = (0, Vec::new());
        loop {
            let page = feed(&v, since);
            seen.extend(subjects(&v, since).into_iter().map(|(n, _)| n));
            since = page["version"].as_u64().unwrap();
            if page["more"] != true {
                break;
            }
        }
        assert_eq!(seen, ["a", "c", "d", "b"]);
        // Forgotten subjects leave the index too.
        assert_eq!(v.prune_expired(3_000 + EXPIRY_GRACE_MS), 2, "a and c");
        assert_eq!(
            subjects(&v, 0)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["d", "b"]
        );
        assert!(v.has_changes_since(before));
        assert!(!v.has_changes_since(v.change_version()));
    }

    #[test]
    fn an_answer_at_most_so_many_rows_is_a_page_of_its_own() {
        let v = Versions::default();
        for i in 0..20u8 {
            v.apply(&Change::RevokeToken([i; 32], None), None);
        }
        let small: Value = serde_json::from_str(&v.changes_since_v2_at_most(0, true, 5)).unwrap();
        assert_eq!(small["tokens"].as_array().map(Vec::len), Some(5));
        assert_eq!(small["more"], true);
        assert_eq!(small["version"], 5, "the next cursor");
        assert_eq!(tokens(&v, 0).len(), 20, "kept apart from the capped answer");
        let again: Value = serde_json::from_str(&v.changes_since_v2_at_most(0, true, 5)).unwrap();
        assert_eq!(again, small);
    }

    /// The subjects (name, epoch) of a feed answer.
    fn subjects(v: &Versions, since: u64) -> Vec<(String, u64)> {
        let answer = feed(v, since);
        answer["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_str().unwrap().to_owned(), s[2].as_u64().unwrap()))
            .collect()
    }

    /// The first column (token hash, jti) of a feed answer's `list`.
    fn keys(v: &Versions, since: u64, list: &str) -> Vec<String> {
        let answer = feed(v, since);
        answer[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[0].as_str().unwrap().to_owned())
            .collect()
    }

    fn tokens(v: &Versions, since: u64) -> Vec<String> {
        keys(v, since, "tokens")
    }

    fn feed(v: &Versions, since: u64) -> Value {
        serde_json::from_str(&v.changes_since_v2(since, true)).unwrap()
    }

    #[test]
    fn a_large_state_is_read_in_pages_that_miss_nothing() {
        let v = Versions::default();
        v.set_page_rows(3);
        for i in 0..7u8 {
            v.apply(&Change::RevokeToken([i; 32], None), None);
        }
        v.apply(&Change::RevokeJti("j".into(), None), None);
        v.apply(&subject("alice", 1), None);
        v.apply(&Change::BumpPolicy { version: None }, None);
        let mut since = 0;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = feed(&v, since);
            pages += 1;
            let rows = page["tokens"].as_array().unwrap().len()
                + page["jtis"].as_array().unwrap().len()
                + page["subjects"].as_array().unwrap().len();
            assert!(rows <= 3, "{page}");
            for t in page["tokens"].as_array().unwrap() {
                seen.push(t[0].as_str().unwrap().to_owned());
            }
            let more = page["more"] == true;
            assert_eq!(
                page["confirmed"], !more,
                "a part of the state vouches for nothing"
            );
            since = page["version"].as_u64().unwrap();
            if pages == 2 {
                // A change made while the pages are read comes in a later page.
                v.apply(&Change::RevokeToken([9; 32], None), None);
            }
            if !more {
                assert_eq!(since, v.change_version());
                break;
            }
        }
        assert!(pages >= 3);
        // Any page asked again before the next change is the answer already built.
        let again = v.changes_since_v2(3, true);
        assert!(std::sync::Arc::ptr_eq(&again, &v.changes_since_v2(3, true)));
        v.apply(&Change::RevokeToken([10; 32], None), None);
        assert!(!std::sync::Arc::ptr_eq(
            &again,
            &v.changes_since_v2(3, true)
        ));
        seen.sort();
        let mut expected: Vec<String> = (0..7u8).chain([9]).map(|i| hex(&[i; 32])).collect();
        expected.sort();
        assert_eq!(seen, expected);
        // One stamp is never split (changes learned out of order share one in shared mode).
        let shared = Versions::shared();
        shared.set_page_rows(2);
        shared.advance_to(10);
        for i in 0..5u8 {
            shared.apply(&Change::RevokeToken([i; 32], None), None);
        }
        shared.advance_to(20);
        shared.apply(&Change::RevokeToken([7; 32], None), Some(15));
        let page = feed(&shared, 0);
        assert_eq!(page["tokens"].as_array().unwrap().len(), 5, "{page}");
        assert_eq!(
            (page["more"].clone(), page["version"].clone()),
            (json!(true), json!(11))
        );
        let last = feed(&shared, 11);
        assert_eq!(last["tokens"].as_array().unwrap().len(), 1, "{last}");
        assert_eq!(last["more"], false);
    }

    #[test]
    fn the_maximum_token_lifetime_bounds_revocations_whose_expiry_is_not_known() {
        let hour = 3_600_000;
        let v = Versions::default();
        v.set_lifetime_bound_ms(Some(hour));
        v.apply_at(&Change::RevokeToken([1; 32], None), None, 10_000);
        v.apply_at(&Change::RevokeJti("j".into(), None), None, 10_000);
        v.apply_at(&subject("alice", 10_000), None, 10_000);
        let all = feed(&v, 0);
        assert_eq!(all["tokens"][0][1], 10_000 + hour);
        assert_eq!(all["jtis"][0][1], 10_000 + hour);
        assert_eq!(
            all["subjects"][0][4],
            10_000 + hour,
            "workers forget it then too"
        );
        assert_eq!(v.prune_expired(10_000 + hour + EXPIRY_GRACE_MS - 1), 0);
        assert_eq!(v.prune_expired(10_000 + hour + EXPIRY_GRACE_MS), 3);
        assert!(v.subject_revoked_at_ms("alice").is_none());
        // Without a bound, nothing says when: kept, and said so.
        let unbounded = Versions::default();
        unbounded.apply_at(&Change::RevokeToken([1; 32], None), None, 10_000);
        unbounded.apply_at(&subject("alice", 10_000), None, 10_000);
        let all = feed(&unbounded, 0);
        assert!(all["tokens"][0][1].is_null());
        assert!(all["subjects"][0][4].is_null());
        assert_eq!(unbounded.prune_expired(u64::MAX / 2), 0);
    }

    #[test]
    fn an_expiry_learned_later_is_republished_to_pollers_already_past_the_revocation() {
        let v = Versions::default();
        v.apply_at(&Change::RevokeToken([1; 32], None), None, 10_000);
        let cursor = v.change_version();
        assert!(
            !v.learn_token_expiry(&[2; 32], 99_000, 20_000),
            "not revoked"
        );
        assert!(v.learn_token_expiry(&[1; 32], 99_000, 20_000));
        let update = feed(&v, cursor);
        assert_eq!(update["tokens"][0][0], hex(&[1; 32]));
        assert_eq!(update["tokens"][0][1], 99_000);
        assert!(
            !v.learn_token_expiry(&[1; 32], 50_000, 20_000),
            "learned once"
        );
        // An unknown expiry arriving again (another replica, Redis) keeps what was learned.
        v.apply_at(&Change::RevokeToken([1; 32], None), Some(1), 30_000);
        assert_eq!(feed(&v, 0)["tokens"][0][1], 99_000);
        assert_eq!(v.prune_expired(99_000 + EXPIRY_GRACE_MS), 1);
    }

    #[test]
    fn revocations_of_expired_tokens_are_forgotten_and_polls_read_an_index() {
        let v = Versions::default();
        v.apply(&Change::RevokeToken([1; 32], Some(1_000)), None);
        v.apply(&Change::RevokeToken([2; 32], None), None);
        v.apply(&Change::RevokeJti("j".into(), Some(5_000)), None);
        assert_eq!(v.prune_expired(1_000 + EXPIRY_GRACE_MS - 1), 0, "grace");
        assert_eq!(v.prune_expired(1_000 + EXPIRY_GRACE_MS), 1);
        assert!(!v.is_token_revoked(&[1; 32]));
        assert!(v.is_token_revoked(&[2; 32]), "no expiry: kept");
        assert!(v.is_jti_revoked("j"));
        assert_eq!(v.prune_expired(5_000 + EXPIRY_GRACE_MS), 1);
        assert_eq!(v.revoked_counts(), (1, 0));
        // A re-announced revocation that knows the expiry: known replaces not knowing.
        v.apply(&Change::RevokeToken([2; 32], Some(9_000)), None);
        assert_eq!(v.prune_expired(9_000 + EXPIRY_GRACE_MS), 1);
        // The poll answer comes from the index: newest stamps only.
        for i in 10..20u8 {
            v.apply(&Change::RevokeToken([i; 32], None), None);
        }
        let version = v.change_version();
        assert_eq!(tokens(&v, version - 2).len(), 2);
        assert!(tokens(&v, version).is_empty());
    }

    #[test]
    fn token_hashes_round_trip() {
        let key = [0xabu8; 32];
        assert_eq!(parse_token_hash(&hex(&key)), Some(key));
        assert_eq!(parse_token_hash("zz"), None);
    }

    #[test]
    fn shared_counter_moves_only_with_the_stream() {
        let v = Versions::shared();
        v.apply(&Change::RevokeToken([1; 32], None), Some(1));
        v.advance_to(1);
        // Our own change, applied before the stream echoes event 2 (another instance's).
        let ours = v.apply(&Change::RevokeToken([3; 32], None), Some(3));
        assert_eq!(ours.stamp, 3);
        assert_eq!(v.change_version(), 1, "3 is not reported before 2 is read");
        // A poller at 1 sees event 3 now, and again until the counter passes it.
        assert_eq!(tokens(&v, 1), vec![hex(&[3; 32])]);
        v.apply(&Change::RevokeToken([2; 32], None), Some(2));
        v.advance_to(2);
        assert_eq!(tokens(&v, 2).len(), 1);
        v.apply(&Change::RevokeToken([3; 32], None), Some(3));
        v.advance_to(3);
        assert!(tokens(&v, 3).is_empty());
    }

    #[test]
    fn a_change_learned_late_is_reported_above_the_counter() {
        let v = Versions::shared();
        v.advance_to(50);
        // Made here while Redis was down: no sequence number yet.
        let pending = v.apply(&Change::RevokeJti("j1".into(), None), None);
        assert!(pending.new);
        assert_eq!(pending.stamp, 51);
        assert_eq!(keys(&v, 50, "jtis"), vec!["j1".to_owned()]);
        // Republished after the shared store lost its data, at a sequence below ours.
        let replayed = v.apply(&Change::RevokeToken([9; 32], None), Some(12));
        assert_eq!(replayed.stamp, 51, "a poller at 50 still gets it");
        // Published later: the known fact is re-stamped with its real sequence.
        let published = v.apply(&Change::RevokeJti("j1".into(), None), Some(57));
        assert!(!published.new);
        assert_eq!(published.stamp, 57);
    }

    #[test]
    fn subject_epochs_and_policy_versions_never_go_back() {
        let v = Versions::shared();
        let first = v.apply(
            &Change::RevokeSubject {
                subject: "alice".into(),
                revoked_at_ms: 2_000,
                epoch: Some(3),
            },
            Some(4),
        );
        assert_eq!((first.new, first.value), (true, 3));
        let older = v.apply(
            &Change::RevokeSubject {
                subject: "alice".into(),
                revoked_at_ms: 1_000,
                epoch: Some(2),
            },
            Some(5),
        );
        assert!(!older.new);
        assert_eq!(v.subject_revoked_at_ms("alice"), Some(2_000));
        assert_eq!(v.subject_epoch("alice"), 3);
        assert!(
            v.apply(&Change::BumpPolicy { version: Some(4) }, Some(6))
                .new
        );
        assert!(
            !v.apply(&Change::BumpPolicy { version: Some(2) }, Some(7))
                .new
        );
        assert_eq!(v.policy_version(), 4);
        let pending = v.apply(&Change::BumpPolicy { version: None }, None);
        assert_eq!((pending.new, pending.value), (true, 5));
    }

    #[test]
    fn export_lists_every_fact() {
        let v = Versions::default();
        v.apply(&subject("alice", 1), None);
        v.apply(&Change::RevokeToken([5; 32], None), None);
        v.apply(&Change::RevokeJti("j".into(), None), None);
        v.apply(&Change::BumpPolicy { version: None }, None);
        let again = Versions::shared();
        for change in v.export() {
            again.apply(&change, Some(100));
        }
        assert!(again.is_token_revoked(&[5; 32]));
        assert!(again.is_jti_revoked("j"));
        assert_eq!(again.subject_revoked_at_ms("alice"), Some(1));
        assert_eq!(again.policy_version(), 1);
    }

    #[test]
    fn a_push_is_timed_from_the_wake_after_it_was_held_even_when_more_came_before_it_ran() {
        let v = Versions::default();
        let woken = v.subscribe();
        let held_at = woken.borrow().count;
        // Each wake's time, by count.
        let mut times = std::collections::HashMap::new();
        for i in 0..(RECENT_WAKES as u64 + 4) {
            v.apply_at(&Change::RevokeJti(format!("j{i}"), None), None, 100 + i);
            let wake = woken.borrow();
            times.insert(wake.count, wake.time_of(wake.count));
            if i == 1 {
                // Two wakes before the held request ran: timed from the first.
                assert_eq!(wake.time_of(held_at + 1), times[&(held_at + 1)]);
            }
        }
        // No longer kept: the oldest kept, so timed short, never long.
        let wake = woken.borrow();
        let oldest_kept = wake.count - RECENT_WAKES as u64 + 1;
        assert_eq!(wake.time_of(held_at + 1), times[&oldest_kept]);
    }

    #[test]
    fn the_second_format_says_what_each_revocation_names_and_when_it_was_learned() {
        let v = Versions::default();
        let mut woken = v.subscribe();
        v.apply_at(&Change::RevokeToken([7; 32], Some(9_000)), None, 100);
        assert!(woken.has_changed().unwrap(), "held requests wake up");
        woken.mark_unchanged();
        v.apply_at(&Change::RevokeJti("j".into(), None), None, 200);
        v.apply_at(&subject("alice", 250), None, 300);
        v.apply_at(&Change::BumpPolicy { version: None }, None, 400);
        let parse = |body: std::sync::Arc<str>| -> Value { serde_json::from_str(&body).unwrap() };
        let all = parse(v.changes_since_v2(0, true));
        assert_eq!(all["format"], 2);
        assert_eq!(all["tokens"], json!([[hex(&[7; 32]), 9_000, 100]]));
        assert_eq!(all["jtis"], json!([["j", null, 200]]));
        assert_eq!(all["subjects"], json!([["alice", 250, 1, 300, null]]));
        assert_eq!(all["policy_changed_at_ms"], 400);
        let now = all["version"].as_u64().unwrap();
        assert!(v.has_changes_since(now - 1));
        assert!(!v.has_changes_since(now));
        let quiet = parse(v.changes_since_v2(now, true));
        assert_eq!(quiet["tokens"], json!([]));
        assert_eq!(quiet["policy_changed_at_ms"], Value::Null);
        // A change the stream reader advances past wakes held requests too.
        woken.mark_unchanged();
        v.advance_to(now + 1);
        assert!(woken.has_changed().unwrap());
    }

    #[test]
    fn the_whole_state_answer_is_kept_until_the_next_change_and_never_stale() {
        let v = Versions::default();
        v.apply_at(&Change::RevokeToken([7; 32], Some(9_000)), None, 100);
        let first = v.changes_since_v2(0, true);
        let again = v.changes_since_v2(0, true);
        assert!(std::sync::Arc::ptr_eq(&first, &again), "kept, not rebuilt");
        assert!(
            !std::sync::Arc::ptr_eq(&first, &v.changes_since_v2(0, false)),
            "per confirmation"
        );
        v.apply_at(&Change::RevokeJti("j".into(), None), None, 200);
        let after = v.changes_since_v2(0, true);
        assert!(
            after.contains("\"j\""),
            "a change is in the next answer: {after}"
        );
        // Forgetting expired revocations changes the answer too.
        assert_eq!(v.prune_expired(9_000 + EXPIRY_GRACE_MS + 1), 1);
        let pruned = v.changes_since_v2(0, true);
        assert!(!pruned.contains(&hex(&[7; 32])), "{pruned}");
    }

    #[test]
    fn a_switch_change_is_stamped_after_the_last_change_of_its_switch() {
        let v = Versions::default();
        let refetch = authz_core::switches::Setting::JwksRefetch;
        assert_eq!(v.switch_stamp_ms(&refetch.slot(), 5_000), 5_000);
        v.apply(
            &Change::Switch(SwitchChange {
                setting: refetch.clone(),
                at_ms: 10_000,
                by: "a".into(),
            }),
            None,
        );
        // A replica whose clock is behind still stamps it later: a second refetch is one.
        assert_eq!(v.switch_stamp_ms(&refetch.slot(), 5_000), 10_001);
        assert_eq!(v.switch_stamp_ms(&refetch.slot(), 20_000), 20_000);
        assert_eq!(v.switch_stamp_ms("flush", 5_000), 5_000);
    }
}
