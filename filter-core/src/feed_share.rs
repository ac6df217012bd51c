//! One change-feed reader per proxy. The workers of one proxy that can hear each other (Wasm
//! VMs with a shared queue each, see [`Worker::join_feed`]) elect a reader through a lease in
//! shared data: only the reader holds a feed request at the server, and it hands every answer
//! it gets, failures included, to the others (its followers) with [`Command::ShareFeed`]; a
//! follower applies a shared answer ([`crate::Event::SharedFeedAnswer`]) as if it had read it
//! itself. A worker that joins no group (a native host's single core, a host without queues)
//! reads on its own, as before.
//!
//! Rules:
//! - The lease lasts [`READER_LEASE_MS`] and the reader renews it on every wake-up (at least
//!   every [`crate::TICK`]); when it lapses (the reader's VM crashed or was replaced) the first
//!   worker to wake takes it and reads at once. Followers are late by at most that long.
//! - A shared answer is applied when it follows what the follower holds (asked from its own
//!   change version or earlier, of the same server state, or from the start). One that does not
//!   (a follower that joined late or missed one) is skipped, and the follower catches up with a
//!   request of its own, answered at once (never held); skipped again meanwhile, it catches up
//!   again. Every follower catches up once when it joins.
//! - A follower that hears nothing for longer than a held request can take (plus the lease) no
//!   longer counts the feed as working: a Check reply does not renew its trust in cached
//!   decisions, as for a reader whose requests fail.
//! - Members refresh their entry every [`MEMBER_HEARTBEAT_MS`]; the reader shares with members
//!   seen within [`MEMBER_EXPIRY_MS`], so a replaced VM's queue stops receiving soon.
//!
//! What it does not do: deliver anything (the host enqueues to the named queues), or decide what
//! an answer means (`server_path` applies it).

use crate::commands::Command;
use crate::host::{Host, LogLevel, SharedWrite};
use crate::worker::Worker;
use authz_core::token_hash::token_label;
use serde_json::{Map, Value};

/// How long a reader's lease lasts without renewal (ms).
pub const READER_LEASE_MS: u64 = 2_000;

/// How often a member refreshes its entry in the member list (ms).
pub const MEMBER_HEARTBEAT_MS: u64 = 5_000;

/// A member not seen for this long gets no more shared answers (ms).
pub const MEMBER_EXPIRY_MS: u64 = 15_000;

/// The first bytes of a shared answer: its format, for a reader and followers of different
/// builds to refuse each other's rather than misread.
const MAGIC: &[u8; 5] = b"jafs1";

/// A feed answer as the reader shares it: what it asked (changes since `since`, of the server
/// state `incarnation`) and what came back (`status` `None`: the request failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedAnswer {
    pub since: u64,
    pub incarnation: Option<String>,
    pub status: Option<u16>,
    pub body: Option<Vec<u8>>,
}

impl SharedAnswer {
    /// `MAGIC`, `since` (8 bytes, big-endian), `status` (2 bytes, 0: none), a body flag (1
    /// byte), the incarnation's length (2 bytes, `u16::MAX`: none) and bytes, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let incarnation = self
            .incarnation
            .as_deref()
            .filter(|i| i.len() < usize::from(u16::MAX));
        let body = self.body.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(18 + incarnation.map_or(0, str::len) + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.since.to_be_bytes());
        out.extend_from_slice(&self.status.unwrap_or(0).to_be_bytes());
        out.push(u8::from(self.body.is_some()));
        match incarnation {
            Some(text) => {
                out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            None => out.extend_from_slice(&u16::MAX.to_be_bytes()),
        }
        out.extend_from_slice(body);
        out
    }

    /// The answer `bytes` encode, or `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<SharedAnswer> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        let (since, rest) = rest.split_first_chunk::<8>()?;
        let (status, rest) = rest.split_first_chunk::<2>()?;
        let (has_body, rest) = rest.split_first()?;
        let (length, rest) = rest.split_first_chunk::<2>()?;
        let (incarnation, body) = match u16::from_be_bytes(*length) {
            u16::MAX => (None, rest),
            length => {
                let (text, body) = rest.split_at_checked(usize::from(length))?;
                (Some(String::from_utf8(text.to_vec()).ok()?), body)
            }
        };
        let status = u16::from_be_bytes(*status);
        Some(SharedAnswer {
            since: u64::from_be_bytes(*since),
            incarnation,
            status: (status != 0).then_some(status),
            body: match has_body {
                0 => None,
                1 => Some(body.to_vec()),
                _ => return None,
            },
        })
    }
}

/// What one worker knows of its proxy's feed group.
#[derive(Debug, Default)]
pub(crate) struct FeedShare {
    /// This worker's name in the group (its queue's), when its host delivers shared answers.
    member: Option<String>,
    /// The shared-data keys of the lease and the member list (per feed: cluster, authority,
    /// credential and timing).
    lease_key: String,
    members_key: String,
    /// Whether this worker reads the feed (alone, or holding the lease), as last judged.
    pub reading: bool,
    /// What the request in flight asked, when its answer is to be shared.
    pub sharing: Option<(u64, Option<String>)>,
    /// A follower needs a read of its own (it joined, missed an answer, or the server's state
    /// restarted).
    pub catch_up: bool,
    /// A shared answer was skipped while a catch-up read was out.
    skipped: bool,
    /// When the last shared answer arrived (ms).
    last_heard_ms: u64,
    last_heartbeat_ms: Option<u64>,
}

/// The lease record: who reads, until when (ms).
fn lease_record(member: &str, until_ms: u64) -> Vec<u8> {
    serde_json::json!({"member": member, "until_ms": until_ms})
        .to_string()
        .into_bytes()
}

fn read_lease(bytes: Option<&[u8]>) -> Option<(String, u64)> {
    let value: Value = serde_json::from_slice(bytes?).ok()?;
    Some((
        value.get("member")?.as_str()?.to_owned(),
        value.get("until_ms")?.as_u64()?,
    ))
}

fn read_members(bytes: Option<&[u8]>) -> Map<String, Value> {
    bytes
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether a member entry's time (`seen`, ms) is within [`MEMBER_EXPIRY_MS`] of `now_ms`,
/// either way (an entry dated ahead, after a clock step, expires too).
fn seen_lately(seen: &Value, now_ms: u64) -> bool {
    seen.as_u64()
        .is_some_and(|at| at.abs_diff(now_ms) <= MEMBER_EXPIRY_MS)
}

impl<H: Host> Worker<H> {
    /// Joins the proxy's feed group as `member`: the host delivers answers other members
    /// share to this worker as [`crate::Event::SharedFeedAnswer`], and carries out
    /// [`Command::ShareFeed`] to the queues it names. Without a feed in the policy, nothing.
    pub fn join_feed(&mut self, member: String) {
        let Some(feed) = self.policy.feed() else {
            return;
        };
        let group = token_label(&format!(
            "{}\n{}\n{}\n{}\n{}",
            feed.cluster, feed.authority, feed.token, feed.interval_ms, feed.push_wait_ms
        ));
        self.share.lease_key = format!("jwt_authz/v1/feed/{group}/reader");
        self.share.members_key = format!("jwt_authz/v1/feed/{group}/members");
        self.share.member = Some(member);
        self.share.catch_up = true;
    }

    /// Whether this worker reads the feed now: alone, or holding the group's lease (taken
    /// when free or lapsed, renewed while held). Logs a change of role.
    pub(crate) fn reads_feed(&mut self, now_ms: u64) -> bool {
        let Some(member) = self.share.member.clone() else {
            self.share.reading = true;
            return true;
        };
        // A write without a compare-and-swap token always succeeds: the record is made once,
        // then every lease is a compare-and-swap on it.
        let mut current = self.host.shared_get(&self.share.lease_key);
        if current.0.is_none() {
            let _ = self
                .host
                .shared_set(&self.share.lease_key, &lease_record("", 0), None);
            current = self.host.shared_get(&self.share.lease_key);
        }
        let (bytes, cas) = current;
        let lease = read_lease(bytes.as_deref());
        let renew_before = now_ms + READER_LEASE_MS - crate::worker::TICK.as_millis() as u64;
        let reading = match lease {
            Some((holder, until_ms)) if holder == member && until_ms >= renew_before => true,
            Some((holder, until_ms)) if holder != member && until_ms > now_ms => false,
            _ => {
                let record = lease_record(&member, now_ms + READER_LEASE_MS);
                self.host.shared_set(&self.share.lease_key, &record, cas) == SharedWrite::Written
            }
        };
        if reading != self.share.reading {
            self.role_changed(reading);
        }
        reading
    }

    fn role_changed(&mut self, reading: bool) {
        self.share.reading = reading;
        if reading {
            self.host.log(
                LogLevel::Info,
                "jwt_authz change feed: this worker reads the feed for the proxy",
            );
            // The reader reads at once: the followers wait for it.
            self.link.versions.poll_now = true;
        } else {
            self.host.log(
                LogLevel::Debug,
                "jwt_authz change feed: another worker reads the feed; following it",
            );
            self.link.versions.push_down = false;
        }
    }

    /// Refreshes this member's entry (every [`MEMBER_HEARTBEAT_MS`]) and drops members not
    /// seen for [`MEMBER_EXPIRY_MS`].
    pub(crate) fn feed_heartbeat(&mut self, now_ms: u64) {
        let Some(member) = self.share.member.clone() else {
            return;
        };
        if self
            .share
            .last_heartbeat_ms
            .is_some_and(|at| now_ms < at + MEMBER_HEARTBEAT_MS)
        {
            return;
        }
        // Compare-and-swap against other members' heartbeats: a few tries, then next time.
        for _ in 0..4 {
            let (bytes, cas) = self.host.shared_get(&self.share.members_key);
            let mut members = read_members(bytes.as_deref());
            members.retain(|_, seen| seen_lately(seen, now_ms));
            members.insert(member.clone(), Value::from(now_ms));
            let record = Value::Object(members).to_string();
            match self
                .host
                .shared_set(&self.share.members_key, record.as_bytes(), cas)
            {
                SharedWrite::Written => {
                    self.share.last_heartbeat_ms = Some(now_ms);
                    return;
                }
                SharedWrite::CasMismatch => continue,
                SharedWrite::Failed => break,
            }
        }
        self.host.log(
            LogLevel::Warn,
            "jwt_authz change feed: could not refresh this worker's entry in the feed group",
        );
    }

    /// The reader's request about to go out asks for changes since `since`: its answer is to
    /// be shared (when there is a group).
    pub(crate) fn poll_sent(&mut self, since: u64, reading: bool) {
        self.share.sharing = (reading && self.share.member.is_some())
            .then(|| (since, self.link.versions.incarnation.clone()));
        if !reading {
            self.share.skipped = false;
        }
    }

    /// Shares the answer to the reader's request with the other members seen lately.
    pub(crate) fn share_answer(&mut self, status: Option<u16>, body: Option<&[u8]>, now_ms: u64) {
        let Some((since, incarnation)) = self.share.sharing.take() else {
            return;
        };
        let me = self.share.member.as_deref().unwrap_or_default();
        let to: Vec<String> =
            read_members(self.host.shared_get(&self.share.members_key).0.as_deref())
                .into_iter()
                .filter(|(name, seen)| name != me && seen_lately(seen, now_ms))
                .map(|(name, _)| name)
                .collect();
        if to.is_empty() {
            return;
        }
        let message = SharedAnswer {
            since,
            incarnation,
            status,
            body: body.map(<[u8]>::to_vec),
        }
        .encode();
        self.outbox.push(Command::ShareFeed { to, message });
    }

    /// An answer another member shared: applied when it follows what this worker holds,
    /// skipped (and caught up on) otherwise, ignored while this worker reads itself.
    pub(crate) fn on_shared_answer(&mut self, message: &[u8], now_ms: u64) {
        let Some(answer) = SharedAnswer::decode(message) else {
            self.host.log(
                LogLevel::Warn,
                "jwt_authz change feed: a shared answer in an unknown format was ignored",
            );
            return;
        };
        if self.share.member.is_none() || self.reads_feed(now_ms) {
            return;
        }
        let versions = &self.link.versions;
        let follows = answer.since == 0
            || (answer.incarnation == versions.incarnation
                && answer.since <= versions.change_version);
        if !follows {
            self.share.catch_up = true;
            self.share.skipped = true;
            self.link.versions.poll_now = true;
            // At once, unless a catch-up is out already.
            if let Some(order) = self.poll_due(now_ms) {
                self.send_poll(order);
            }
            return;
        }
        self.share.last_heard_ms = now_ms;
        if let Some(order) = self.apply_feed_answer(answer.status, answer.body, now_ms, false) {
            self.send_poll(order);
        }
    }

    /// A follower's own read was applied whole: caught up, unless an answer was skipped
    /// meanwhile.
    pub(crate) fn caught_up(&mut self, now_ms: u64) {
        if !self.share.reading {
            self.share.last_heard_ms = now_ms;
            self.share.catch_up = self.share.skipped;
            // Skipped one meanwhile: again at once.
            self.link.versions.poll_now |= self.share.skipped;
            self.share.skipped = false;
        }
    }

    /// Whether this worker follows a reader and knows it is behind it (a catch-up is due): its
    /// feed does not count as working.
    pub(crate) fn feed_behind(&self) -> bool {
        self.share.member.is_some() && !self.share.reading && self.share.catch_up
    }

    /// Whether this worker follows a reader it has not heard from for longer than an answer
    /// can take: its feed does not count as working, and it reads on its own.
    pub(crate) fn feed_silent(&self, now_ms: u64) -> bool {
        let Some(feed) = self.policy.feed() else {
            return false;
        };
        if self.share.member.is_none() || self.share.reading {
            return false;
        }
        // A held request's wait or the poll interval, the margin a request has to answer, and
        // the lease a new reader may wait for.
        let longest = feed.push_wait_ms.max(feed.interval_ms) + 2_000 + READER_LEASE_MS;
        now_ms.saturating_sub(self.share.last_heard_ms) > longest
    }
}

#[cfg(test)]
mod tests {
    use super::SharedAnswer;

    #[test]
    fn shared_answers_round_trip_and_any_cut_or_junk_is_refused_not_misread() {
        let answers = [
            SharedAnswer {
                since: 42,
                incarnation: Some("inc-ä".into()),
                status: Some(200),
                body: Some(br#"{"version":43}"#.to_vec()),
            },
            SharedAnswer {
                since: 0,
                incarnation: None,
                status: None,
                body: None,
            },
            SharedAnswer {
                since: u64::MAX,
                incarnation: Some(String::new()),
                status: Some(429),
                body: Some(Vec::new()),
            },
        ];
        for answer in answers {
            let bytes = answer.encode();
            assert_eq!(SharedAnswer::decode(&bytes), Some(answer.clone()));
            // Cut inside the header: refused (a cut body is the body's parser's business).
            let header = bytes.len() - answer.body.as_deref().map_or(0, <[u8]>::len);
            for cut in 0..header {
                assert_eq!(
                    SharedAnswer::decode(bytes.get(..cut).unwrap_or_default()),
                    None
                );
            }
        }
        // A body flag other than 0 or 1, another format, an incarnation that is not UTF-8.
        let mut flag = answers_bytes();
        if let Some(b) = flag.get_mut(15) {
            *b = 2;
        }
        assert_eq!(SharedAnswer::decode(&flag), None);
        assert_eq!(SharedAnswer::decode(b"jafs2........"), None);
        let mut text = answers_bytes();
        if let Some(b) = text.get_mut(18) {
            *b = 0xff;
        }
        assert_eq!(SharedAnswer::decode(&text), None);
    }

    fn answers_bytes() -> Vec<u8> {
        SharedAnswer {
            since: 1,
            incarnation: Some("abc".into()),
            status: Some(200),
            body: Some(b"{}".to_vec()),
        }
        .encode()
    }
}
