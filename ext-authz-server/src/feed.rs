//! The change feed's answers, whatever carries them: the held requests (counted, limited per
//! credential), which answers are paced (`feed_pacing`), and [`reply`], the answer to one feed
//! request as status, `Retry-After` and body parts. The admin port's own connection loop
//! (`admin_port`, for held requests at fleet scale) and the admin router (everything else)
//! both serve it, so a feed request is answered the same way on either.

use crate::bearer::Credential;
use crate::check::CheckService;
use crate::feed_pacing::{FeedPacer, Pace, RecentVersions};
use authz_core::feed::{FeedAnswer, FeedRefusal};
use axum::body::Bytes;
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The change feed as the admin port serves it: the state it answers from (the service's
/// versions, config, clock and metrics), its held requests and pacing, and the server's stop
/// (held requests answer at once).
pub struct Feed {
    pub service: Arc<CheckService>,
    pub watchers: FeedWatchers,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// The answer to one feed request: sent as `content-type: application/json`,
/// `cache-control: no-store` (it may carry signing keys), with `Retry-After` when set.
#[derive(Debug)]
pub struct FeedReply {
    pub status: StatusCode,
    /// Whole seconds (at least one), with `retry_after_ms` in the body.
    pub retry_after_seconds: Option<u64>,
    /// The body, in parts sent one after the other (a kept answer is shared, never copied).
    pub body: Vec<Bytes>,
    /// A push: when the change that woke it was made. Its transport records the time from
    /// then to the answer written in `authz_feed_push_seconds` ([`FeedReply::pushed`]).
    pub pushed_at: Option<std::time::Instant>,
}

impl FeedReply {
    /// Records a push's time from its change to now (its answer written).
    pub fn pushed(&self, metrics: &crate::metrics::Metrics) {
        if let Some(at) = self.pushed_at {
            metrics.observe_seconds("authz_feed_push_seconds", &[], at.elapsed().as_secs_f64());
        }
    }
}

/// Longest a client may ask a change-feed request to be held.
pub const MAX_FEED_WAIT_MS: u64 = 60_000;

/// The held change-feed requests (each a filter worker waiting for changes after its cursor),
/// for the `authz_feed_streams` and `authz_feed_oldest_cursor` gauges, and the pace of
/// catch-up answers per credential.
#[derive(Debug)]
pub struct FeedWatchers {
    /// The requests held now.
    held: std::sync::Mutex<HeldSet>,
    next_id: std::sync::atomic::AtomicU64,
    pacer: FeedPacer<Credential>,
    /// The state's version over the last [`RECENT_WINDOW`]: cursors of running workers.
    recent: RecentVersions,
    /// The pacer's clock (monotonic).
    started: tokio::time::Instant,
}

/// The longest a catch-up answer waits for its credential's budget; beyond it the answer is
/// a 429. Well below the filter's 2 s timeout for requests it does not ask to be held (the
/// answer still has to be written after its wait).
pub const MAX_CATCH_UP_WAIT: Duration = Duration::from_millis(500);

/// A cursor at or above the state's version this long ago is a running worker's (its
/// reads follow each other within the longest hold, 60 s, plus timeouts and a 429's wait):
/// never paced.
pub const RECENT_WINDOW: Duration = Duration::from_secs(90);

/// The held requests, counted so that holding and releasing one costs the same with 10 or
/// 10,000 held: by id, by cursor (the oldest read at a scrape) and by credential.
#[derive(Debug, Default)]
struct HeldSet {
    by_id: std::collections::HashMap<u64, (u64, Credential)>,
    cursors: std::collections::BTreeMap<u64, usize>,
    per_credential: std::collections::HashMap<Credential, usize>,
}

impl HeldSet {
    fn insert(&mut self, id: u64, cursor: u64, credential: Credential) {
        self.by_id.insert(id, (cursor, credential));
        *self.cursors.entry(cursor).or_default() += 1;
        *self.per_credential.entry(credential).or_default() += 1;
    }

    fn remove(&mut self, id: u64) {
        let Some((cursor, credential)) = self.by_id.remove(&id) else {
            return;
        };
        /// One fewer; whether none are left.
        fn release(count: Option<&mut usize>) -> bool {
            count.is_some_and(|n| {
                *n = n.saturating_sub(1);
                *n == 0
            })
        }
        if release(self.cursors.get_mut(&cursor)) {
            self.cursors.remove(&cursor);
        }
        if release(self.per_credential.get_mut(&credential)) {
            self.per_credential.remove(&credential);
        }
    }

    fn held_with(&self, credential: Credential) -> usize {
        self.per_credential.get(&credential).copied().unwrap_or(0)
    }
}

/// One held request; leaving the set when dropped (also when the client goes away and axum
/// drops the handler's future).
struct Held<'a> {
    watchers: &'a FeedWatchers,
    id: u64,
}

impl FeedWatchers {
    /// No request held; catch-up answers paced at `catch_up_bytes_per_second` per credential
    /// (one second of it at once).
    /// `cursors_outlive_process`: a shared tier (workers keep their cursors across this
    /// replica's restart; see [`RecentVersions`]).
    pub fn new(catch_up_bytes_per_second: u64, cursors_outlive_process: bool) -> FeedWatchers {
        FeedWatchers {
            held: Default::default(),
            next_id: Default::default(),
            pacer: FeedPacer::new(
                catch_up_bytes_per_second,
                catch_up_bytes_per_second,
                MAX_CATCH_UP_WAIT,
            ),
            recent: RecentVersions::new(RECENT_WINDOW, cursors_outlive_process),
            started: tokio::time::Instant::now(),
        }
    }

    fn now_ns(&self) -> u128 {
        self.started.elapsed().as_nanos()
    }

    /// Holds a request unless `max` (all together) or `max_per_credential` are reached.
    fn hold(
        &self,
        cursor: u64,
        credential: Credential,
        (max, max_per_credential): (usize, usize),
    ) -> Option<Held<'_>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut held = crate::lock(&self.held);
        if held.by_id.len() >= max || held.held_with(credential) >= max_per_credential {
            return None;
        }
        held.insert(id, cursor, credential);
        Some(Held { watchers: self, id })
    }

    /// The `authz_feed_streams` and `authz_feed_oldest_cursor` gauges (set at a scrape).
    pub fn report(&self, metrics: &crate::metrics::Metrics) {
        let held = crate::lock(&self.held);
        metrics.set_gauge("authz_feed_streams", &[], held.by_id.len() as f64);
        let oldest = held.cursors.keys().next().copied().unwrap_or(0);
        metrics.set_gauge("authz_feed_oldest_cursor", &[], oldest as f64);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        crate::lock(&self.watchers.held).remove(self.id);
    }
}

/// A feed answer kept by [`crate::versions::Versions`], lent to a response body without a
/// copy.
struct KeptAnswer(Arc<str>);

impl AsRef<[u8]> for KeptAnswer {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A feed request's query (`GET /admin/epochs?since=…&wait_ms=…&incarnation=…&format=2`).
#[derive(Debug, Default, Deserialize)]
pub struct FeedQuery {
    pub since: Option<u64>,
    /// The answer's format: 2, the only one served (see `authz_core::epochs`); absent means 2.
    pub format: Option<u32>,
    /// Hold the request until something changes after `since`, at most this long (push).
    pub wait_ms: Option<u64>,
    /// The incarnation the client's cursor belongs to: another one answers at once.
    pub incarnation: Option<String>,
}

/// A refused feed request; with `retry_after`, a `Retry-After` header (whole seconds, at
/// least one) and `retry_after_ms` in the body (which the filter reads: its host passes it the
/// body, not the headers).
fn refused(status: StatusCode, retry_after: Option<Duration>, error: &str) -> FeedReply {
    let ms = retry_after.map(|after| after.as_millis().max(1) as u64);
    let body = serde_json::to_vec(&FeedRefusal {
        error: error.to_owned(),
        retry_after_ms: ms,
    })
    .unwrap_or_default();
    FeedReply {
        status,
        retry_after_seconds: ms.map(|ms| ms.div_ceil(1000)),
        body: vec![Bytes::from(body)],
        pushed_at: None,
    }
}

/// A cursor this close to the state's counter (or ahead of it) reads a small answer: the
/// changes after a push, a poll, a worker that fell out of push. Never paced, so a client
/// looping with the same feed secret cannot keep a worker from the changes.
pub const NEAR_CURSOR_STAMPS: u64 = 256;

/// Rows at most in an unpaced answer to a cursor more than [`NEAR_CURSOR_STAMPS`] behind.
pub const UNPACED_PAGE_ROWS: usize = 512;

/// About the bytes of one feed row, to estimate an answer before it is built.
const ROW_BYTES_ESTIMATE: u64 = 110;

/// `GET /admin/epochs`: what changed after `since` (a page of it), held until something
/// changes when `wait_ms` asks for it. Answers the client did not wait for (catch-ups) from
/// a cursor far behind the state (first reads, pages, re-reads) are paced per credential;
/// answers to held requests woken by a change, and answers to cursors near the state, are
/// not.
pub async fn reply(feed: &Feed, credential: Credential, q: FeedQuery) -> FeedReply {
    let metrics = &feed.service.metrics;
    metrics.inc("authz_epochs_requests_total", &[]);
    // A replica that has not read the shared state yet would answer with a partial one (and
    // its own incarnation): the filter keeps what it holds and asks again.
    if feed.service.shared.as_ref().is_some_and(|s| !s.synced()) {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "shared state not read yet",
        );
    }
    if q.format.is_some_and(|f| f != 2) {
        return refused(
            StatusCode::BAD_REQUEST,
            None,
            "only format=2 is served (the first format was removed: see README's upgrade notes)",
        );
    }
    let since = q.since.unwrap_or(0);
    let wait_ms = q
        .wait_ms
        .unwrap_or(0)
        .min(MAX_FEED_WAIT_MS)
        .min(until_next_signing_key_ms(feed));
    let end = if wait_ms > 0 {
        match hold_until_change(feed, credential, since, wait_ms, q.incarnation.as_deref()).await {
            Ok(end) => end,
            Err(refused) => return refused,
        }
    } else {
        HoldEnd::CatchUp
    };
    let catch_up = matches!(end, HoldEnd::CatchUp);
    let watchers = &feed.watchers;
    let versions = &feed.service.versions;
    let version = versions.change_version();
    let near = version.saturating_sub(since) <= NEAR_CURSOR_STAMPS;
    let paced = catch_up && is_far(since, near, version, &watchers.recent, watchers.now_ns());
    if paced {
        // Every far read is estimated at a whole page: a client asking for small ones must
        // not get the places a worker's page is waiting for.
        let estimate =
            (feed.service.config.feed_page_rows as u64).saturating_mul(ROW_BYTES_ESTIMATE);
        if let Some(retry_after) =
            watchers
                .pacer
                .would_refuse(credential, estimate, watchers.now_ns())
        {
            return catch_up_refused(metrics, retry_after).await;
        }
    }
    // Current: the shared tier answers, and every Status List was verified recently.
    let confirmed = feed.service.shared.as_ref().is_none_or(|s| s.confirmed())
        && feed
            .service
            .status_lists
            .as_ref()
            .is_none_or(|l| l.current());
    // The answer is shared, not copied: a page is about 1 MB, and a kept one is served to
    // every poller at its cursor until the next change.
    // An unpaced answer to a cursor that is recent but not near (a worker catching up on a
    // mass revocation) comes in small pages: the worker asks for the next at once, and a
    // client looping on such a cursor gets no more than that per request.
    let max_rows = if paced || near {
        usize::MAX
    } else {
        UNPACED_PAGE_ROWS
    };
    let answer = versions.changes_since_v2_at_most(since, confirmed, max_rows);
    if paced {
        match watchers
            .pacer
            .reserve(credential, answer.len() as u64, watchers.now_ns())
        {
            Pace::Now => {}
            Pace::After(wait) => {
                metrics.inc("authz_feed_paced_total", &[]);
                tokio::time::sleep(wait).await;
            }
            Pace::Refused { retry_after } => {
                // Not kept while the refusal waits (it may be a page no one else reads).
                drop(answer);
                return catch_up_refused(metrics, retry_after).await;
            }
        }
    }
    let answer = Bytes::from_owner(KeptAnswer(answer));
    FeedReply {
        status: StatusCode::OK,
        retry_after_seconds: None,
        body: with_signing_keys(feed, answer),
        pushed_at: match end {
            HoldEnd::Pushed(at) => Some(at),
            HoldEnd::CatchUp | HoldEnd::Empty => None,
        },
    }
}

/// A held feed request is answered at the next signing-key boundary at the latest, so every
/// filter learns the key after next a whole period before it signs.
fn until_next_signing_key_ms(feed: &Feed) -> u64 {
    feed.service
        .config
        .context
        .as_ref()
        .map_or(u64::MAX, |ring| {
            let now_ms = feed.service.clock.now_ms();
            let period_ms = ring.rotate_every_seconds.saturating_mul(1000);
            period_ms - now_ms % period_ms.max(1) + 1
        })
}

/// The feed answer with the context's signing keys (current and next) in front of the kept
/// answer's members, when this server signs contexts: `{"context_keys":[…],` + the answer
/// after its `{` (the kept answer is shared, never copied).
fn with_signing_keys(feed: &Feed, answer: Bytes) -> Vec<Bytes> {
    let Some(ring) = &feed.service.config.context else {
        return vec![answer];
    };
    let now_seconds = feed.service.clock.now_ms() / 1000;
    let keys = authz_core::context::feed_keys_wire(&ring.feed_keys(now_seconds));
    let head = Bytes::from(FeedAnswer::keys_prefix(&keys));
    let rest = answer.slice(1.min(answer.len())..);
    vec![head, rest]
}

/// A catch-up answer over its credential's rate: a 429, sent after [`MAX_CATCH_UP_WAIT`]
/// whatever the wait it reports, so a client that asks again at once is refused at most twice
/// a second per connection (each refusal costs the server a request; answered at once, 50
/// looping clients made about 90,000 a second); a filter waits longer than that before asking
/// again anyway.
async fn catch_up_refused(metrics: &crate::metrics::Metrics, retry_after: Duration) -> FeedReply {
    metrics.inc("authz_feed_refused_total", &[("reason", "catch_up_rate")]);
    tokio::time::sleep(MAX_CATCH_UP_WAIT).await;
    refused(
        StatusCode::TOO_MANY_REQUESTS,
        Some(retry_after.saturating_sub(MAX_CATCH_UP_WAIT)),
        "feed answers over this credential's rate (feed.catch_up_bytes_per_second)",
    )
}

/// Whether a read at cursor `since` is far behind the state (`version`): a first read, or a
/// cursor not `near` (more than [`NEAR_CURSOR_STAMPS`] behind) that no worker held within
/// [`RECENT_WINDOW`]. Only far reads are paced.
fn is_far(since: u64, near: bool, version: u64, recent: &RecentVersions, now_ns: u128) -> bool {
    // Sampled on every catch-up read (near ones too), so the window's samples stay fresh.
    let floor = recent.floor(version, now_ns);
    since == 0 || (!near && since < floor)
}

/// How a held request ended.
#[derive(Debug, Clone, Copy)]
enum HoldEnd {
    /// The changes were there before it waited, or the state restarted: a catch-up.
    CatchUp,
    /// Woken by the change sent at this instant.
    Pushed(std::time::Instant),
    /// Nothing changed (its wait ran out, or the server stops).
    Empty,
}

/// Holds a feed request until something changes after `since` (or the incarnation differs,
/// the server stops, `wait_ms` runs out). `Ok(true)`: its answer is a catch-up, to be paced
/// (the changes were there before it waited, or the state restarted: a whole read follows);
/// a push woken by a change; or an empty answer. `Err`: refused (held requests' limits).
async fn hold_until_change(
    feed: &Feed,
    credential: Credential,
    since: u64,
    wait_ms: u64,
    incarnation: Option<&str>,
) -> Result<HoldEnd, FeedReply> {
    let versions = &feed.service.versions;
    // Subscribed before the state is read: no change slips between the check and the wait.
    let mut changed = versions.subscribe();
    // A push is timed from the first wake after the last one that changed nothing for this
    // cursor (a wake for another reason, e.g. a Status List confirmed, is not its change).
    let mut quiet_at = changed.borrow().count;
    let mut stop = feed.stop.clone();
    let config = &feed.service.config;
    let limits = (config.feed_max_held, config.feed_max_held_per_token);
    let metrics = &feed.service.metrics;
    let Some(_held) = feed.watchers.hold(since, credential, limits) else {
        metrics.inc("authz_feed_refused_total", &[("reason", "held_limit")]);
        // No `retry_after_ms`: the filter polls plainly at its interval instead (a request
        // it does not ask to be held is never refused for this).
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "too many held feed requests",
        ));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut waited = false;
    loop {
        // Read before the state: a wake after it is seen by the wait below.
        let count = changed.borrow().count;
        let restarted = incarnation.is_some_and(|i| i != versions.incarnation());
        if restarted || !waited && versions.has_changes_since(since) {
            return Ok(HoldEnd::CatchUp);
        }
        if waited && versions.has_changes_since(since) {
            let woken_by = quiet_at.wrapping_add(1);
            return Ok(HoldEnd::Pushed(changed.borrow().time_of(woken_by)));
        }
        if *stop.borrow() {
            return Ok(HoldEnd::Empty);
        }
        quiet_at = count;
        tokio::select! {
            woke = tokio::time::timeout_at(deadline, changed.changed()) => {
                if !matches!(woke, Ok(Ok(()))) {
                    // Its wait ran out: an empty answer.
                    return Ok(HoldEnd::Empty);
                }
            }
            _ = stop.changed() => return Ok(HoldEnd::Empty),
        }
        waited = true;
    }
}
