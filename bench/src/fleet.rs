//! The change feed at fleet scale (issue 20 §3): one server (release build, no shared tier)
//! and a load client holding `holds` feed requests (one per simulated Envoy, each on its own
//! connection, as a fleet's filters hold them), while a revocation is made every
//! [`CHANGE_EVERY`] for the run. Every holder asks again from the version its answer gave
//! (`wait_ms`, `incarnation`), as the filter does. Reported: for each change, the time from
//! the revocation being sent to each holder's answer covering it (p50, p99, max over every
//! (change, holder) pair); the server's resident memory before and with the holds (per hold);
//! its CPU over the run. The client is plain tokio over TCP (HTTP/1.1 written by hand), on
//! one thread of its own, on the same 2 cores as the server.

use authz_core::feed::FeedAnswer;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How often a revocation is made during the run.
pub const CHANGE_EVERY: Duration = Duration::from_millis(100);

/// How long a held request asks to be held (answered empty after it, then asked again).
const WAIT_MS: u64 = 20_000;

/// The measurement.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub holds: usize,
    pub seconds: u64,
    pub changes: usize,
    /// Answers received that covered at least one change.
    pub answers: u64,
    /// Every (change, holder) lag, ms, sorted.
    pub lags_ms: Vec<f64>,
    /// (change, holder) pairs never answered before the run ended.
    pub missed: u64,
    pub errors: u64,
    pub rss_before_kb: u64,
    pub rss_held_kb: u64,
    pub rss_peak_kb: u64,
    /// Server CPU over the run (user + system seconds) and as a share of one core.
    pub cpu_seconds: f64,
    /// The load client's CPU over the run (it shares the 2 cores).
    pub client_cpu_seconds: f64,
    /// The server's own account of its pushes over the run (`authz_feed_push_seconds`: from
    /// the change to the answer written), cumulative buckets.
    pub push_buckets: Vec<(f64, u64)>,
}

impl Fleet {
    pub fn percentile(&self, p: f64) -> f64 {
        let Some(last) = self.lags_ms.len().checked_sub(1) else {
            return 0.0;
        };
        let at = ((last as f64) * p).round() as usize;
        self.lags_ms.get(at).copied().unwrap_or(0.0)
    }

    /// Server memory per held request (bytes): RSS with the holds over RSS before them.
    /// The share of the server's pushes written within `seconds` (a bucket bound).
    pub fn pushed_within(&self, seconds: f64) -> f64 {
        let total = self.push_buckets.last().map_or(0, |(_, n)| *n);
        let within = self
            .push_buckets
            .iter()
            .find(|(bound, _)| (*bound - seconds).abs() < 1e-9)
            .map_or(0, |(_, n)| *n);
        if total == 0 {
            0.0
        } else {
            within as f64 / total as f64
        }
    }

    /// A quantile of the server's push times, in ms, interpolated within its bucket.
    pub fn push_quantile_ms(&self, q: f64) -> f64 {
        let total = self.push_buckets.last().map_or(0, |(_, n)| *n);
        let wanted = q * total as f64;
        let mut below = (0.0, 0u64);
        for &(bound, count) in &self.push_buckets {
            if count as f64 >= wanted {
                if !bound.is_finite() {
                    return below.0 * 1e3;
                }
                let share = (wanted - below.1 as f64) / (count - below.1).max(1) as f64;
                return (below.0 + (bound - below.0) * share) * 1e3;
            }
            below = (bound, count);
        }
        0.0
    }

    pub fn bytes_per_hold(&self) -> f64 {
        (self.rss_held_kb.saturating_sub(self.rss_before_kb) as f64 * 1024.0)
            / self.holds.max(1) as f64
    }

    /// Server CPU per (change, holder) answer, µs.
    pub fn cpu_us_per_answer(&self) -> f64 {
        self.cpu_seconds * 1e6 / (self.changes * self.holds).max(1) as f64
    }
}

/// One held-request loop's state: where its cursor is and when each answer came.
struct Holder {
    stream: TcpStream,
    request_head: String,
    buffer: Vec<u8>,
}

/// The answer to one request on `stream`: status and body (HTTP/1.1, `content-length`).
async fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(buffer.get(..end)?).ok()?;
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buffer.len() < total {
                let mut chunk = [0u8; 16 * 1024];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(chunk.get(..n)?);
            }
            let body = buffer.get(end + 4..total)?.to_vec();
            buffer.drain(..total);
            return Some((status, body));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(chunk.get(..n)?);
    }
}

impl Holder {
    async fn connect(port: u16) -> Option<Holder> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Holder {
            stream,
            request_head: format!(
                "Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {EPOCHS_TOKEN}\r\n\r\n"
            ),
            buffer: Vec::with_capacity(1024),
        })
    }

    /// One held request from `since`: the answer's version, or `None` on an error.
    async fn hold(&mut self, since: u64, incarnation: &str) -> Option<u64> {
        let request = format!(
            "GET /admin/epochs?since={since}&format=2&wait_ms={WAIT_MS}&incarnation={incarnation} HTTP/1.1\r\n{}",
            self.request_head
        );
        self.stream.write_all(request.as_bytes()).await.ok()?;
        let (status, body) = read_answer(&mut self.stream, &mut self.buffer).await?;
        if status != 200 {
            return None;
        }
        FeedAnswer::from_slice(&body).ok().map(|a| a.version)
    }
}

/// The server's feed version and incarnation now (one unheld read).
async fn current(port: u16) -> Option<(u64, String)> {
    let mut holder = Holder::connect(port).await?;
    let request = format!(
        "GET /admin/epochs?since=1000000000000&format=2 HTTP/1.1\r\n{}",
        holder.request_head
    );
    holder.stream.write_all(request.as_bytes()).await.ok()?;
    let (_, body) = read_answer(&mut holder.stream, &mut holder.buffer).await?;
    let answer = FeedAnswer::from_slice(&body).ok()?;
    Some((answer.version, answer.incarnation?))
}

/// What every holder saw: for each answer that moved its cursor, when and to which version.
type Seen = Vec<(Instant, u64)>;

/// Runs the measurement with a server of its own.
pub fn measure(holds: usize, seconds: u64) -> Fleet {
    let idp = DevIdp::start(&[]);
    let server = AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!(
            "epochs_token: \"{EPOCHS_TOKEN}\"\nfeed:\n  max_held: {0}\n  max_held_per_token: {0}\n",
            holds + 100
        ),
    ));
    let Some(pid) = server.pid() else {
        return Fleet::default();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return Fleet::default(),
    };
    runtime.block_on(run(server.admin_port, pid, holds, seconds))
}

async fn run(port: u16, pid: u32, holds: usize, seconds: u64) -> Fleet {
    let mut fleet = Fleet {
        holds,
        seconds,
        ..Fleet::default()
    };
    let Some((start_version, incarnation)) = current(port).await else {
        return fleet;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.rss_before_kb = crate::rss_kb(pid);
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    // Connect gradually (the listen backlog is finite), then hold.
    let connects = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::with_capacity(holds);
    for _ in 0..holds {
        let (connects, errors, stop, seen, incarnation) = (
            connects.clone(),
            errors.clone(),
            stop.clone(),
            seen.clone(),
            incarnation.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let holder = {
                let _permit = connects.acquire().await.ok()?;
                Holder::connect(port).await
            };
            let Some(mut holder) = holder else {
                errors.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let mut since = start_version;
            let mut mine: Seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match holder.hold(since, &incarnation).await {
                    Some(version) => {
                        if version > since {
                            mine.push((Instant::now(), version));
                            since = version;
                        }
                    }
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        holder = Holder::connect(port).await?;
                    }
                }
            }
            if let Ok(mut all) = seen.lock() {
                all.push(mine);
            }
            Some(())
        }));
    }
    // Wait for every request to be held.
    let settle = Instant::now();
    while held_streams(port).await < holds as u64 && settle.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.rss_held_kb = crate::rss_kb(pid);
    let cpu_before = crate::cpu_seconds(pid);
    let client_cpu_before = crate::cpu_seconds(std::process::id());
    let pushes_before = push_buckets(&metrics_text(port).await);
    // A revocation every CHANGE_EVERY: (sent at, the version it was given).
    let mut changes: Vec<(Instant, u64)> = Vec::new();
    let run_for = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut admin = Holder::connect(port).await;
    let mut tick = tokio::time::interval(CHANGE_EVERY);
    while started.elapsed() < run_for {
        tick.tick().await;
        let Some(conn) = admin.as_mut() else { break };
        let sent = Instant::now();
        if let Some(version) = revoke(conn, port, changes.len()).await {
            changes.push((sent, version));
        } else {
            errors.fetch_add(1, Ordering::Relaxed);
            admin = Holder::connect(port).await;
        }
    }
    // Let the last change reach everyone, then stop and collect.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.cpu_seconds = crate::cpu_seconds(pid) - cpu_before;
    fleet.client_cpu_seconds = crate::cpu_seconds(std::process::id()) - client_cpu_before;
    fleet.rss_peak_kb = crate::peak_rss_kb(pid);
    let pushes_after = push_buckets(&metrics_text(port).await);
    fleet.push_buckets = pushes_after
        .iter()
        .map(|&(bound, after)| {
            let before = pushes_before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, n)| *n);
            (bound, after.saturating_sub(before))
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    // Held requests are answered at the next change (or their wait): one more ends them.
    if let Some(conn) = admin.as_mut() {
        let _ = revoke(conn, port, usize::MAX).await;
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    fleet.changes = changes.len();
    fleet.errors = errors.load(Ordering::Relaxed);
    for holder in &seen {
        for (sent, version) in &changes {
            match holder.iter().find(|(_, v)| v >= version) {
                Some((at, _)) => fleet
                    .lags_ms
                    .push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3),
                None => fleet.missed += 1,
            }
        }
        fleet.answers += holder.len() as u64;
    }
    fleet.missed += ((holds - seen.len().min(holds)) * changes.len()) as u64;
    fleet.lags_ms.sort_by(f64::total_cmp);
    fleet
}

/// Revokes a token hash through the admin API on `conn`; the version it was given.
async fn revoke(conn: &mut Holder, port: u16, n: usize) -> Option<u64> {
    let hash = authz_core::token_hash::digest_hex(&authz_core::token_hash::token_digest(&format!(
        "fleet-{n}"
    )));
    let body = json!({ "token_hash": hash }).to_string();
    let request = format!(
        "POST /admin/revoke HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.stream.write_all(request.as_bytes()).await.ok()?;
    let (status, body) = read_answer(&mut conn.stream, &mut conn.buffer).await?;
    if status != 200 {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()?
        .get("version")?
        .as_u64()
}

/// The server's `/metrics` text (empty when it cannot be read).
async fn metrics_text(port: u16) -> String {
    let Some(mut conn) = Holder::connect(port).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if conn.stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    read_answer(&mut conn.stream, &mut conn.buffer)
        .await
        .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
        .unwrap_or_default()
}

/// The server's `authz_feed_streams` gauge.
async fn held_streams(port: u16) -> u64 {
    metrics_text(port)
        .await
        .lines()
        .find(|l| l.starts_with("authz_feed_streams "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The server's `authz_feed_push_seconds` histogram: (bound in seconds, pushes at or under
/// it), cumulative, in bound order (`+Inf` last).
fn push_buckets(metrics: &str) -> Vec<(f64, u64)> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("authz_feed_push_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The measurement as `make bench` runs it (`BENCH_FLEET_HOLDS`, default 5,000;
/// `BENCH_FLEET_SECONDS`, default 30), with its summary on stderr.
pub fn run_default() -> Fleet {
    let holds = crate::env_u64("BENCH_FLEET_HOLDS", 5_000) as usize;
    let seconds = crate::env_u64("BENCH_FLEET_SECONDS", 30);
    let fleet = measure(holds, seconds);
    eprintln!("fleet: {}", fleet.summary());
    fleet
}

impl Fleet {
    /// One line: what was measured.
    pub fn summary(&self) -> String {
        format!(
            "{} holds, {} changes in {} s: server pushes (change to answer written) p50 {:.1} ms p99 {:.1} ms, {:.2}% within 50 ms; received by the client p50 {:.1} ms p99 {:.1} ms max {:.1} ms ({} lags, {} missed, {} errors); server RSS {} kB before, {} kB held ({:.0} B/hold), peak {} kB; CPU {:.1} s ({:.1} µs per answer); client CPU {:.1} s",
            self.holds,
            self.changes,
            self.seconds,
            self.push_quantile_ms(0.5),
            self.push_quantile_ms(0.99),
            self.pushed_within(0.05) * 100.0,
            self.percentile(0.5),
            self.percentile(0.99),
            self.lags_ms.last().copied().unwrap_or(0.0),
            self.lags_ms.len(),
            self.missed,
            self.errors,
            self.rss_before_kb,
            self.rss_held_kb,
            self.bytes_per_hold(),
            self.rss_peak_kb,
            self.cpu_seconds,
            self.cpu_us_per_answer(),
            self.client_cpu_seconds,
        )
    }
}
