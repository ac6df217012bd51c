//! The change feed under hostile use (issue 18 §3): a holder of the feed token (it sits in
//! every sidecar's configuration) loops on the feed while privileged checks run. A server of
//! its own (release build, no shared tier) is filled with `revocations` token revocations;
//! then Check is driven on a privileged route (opaque token, cached introspection) at a fixed
//! rate ([`CHECK_RATE`] per second, latency from each call's intended start, so a stall shows
//! in the tail) four times: idle, while `clients` callers loop `since=0` (the first page),
//! while they loop `since=1` (another page), and while they loop on a cursor past the state
//! (small answers, never paced). Reported: Check p99 in each run and the ratio
//! to idle (target ≤ 2×), and the feed answers served.

use crate::load::RunStats;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;

/// Checks per second in every run.
pub const CHECK_RATE: u64 = 500;

/// A cursor past the state: the small answer at its top, as a held request reads it, never
/// paced (the third loaded run measures a client looping on reads the server does not pace).
pub const AHEAD_OF_THE_STATE: u64 = 1_000_000_000_000;

/// Check at `rate` per second for `duration`, open loop; the run's latencies are from each
/// call's intended start.
async fn checks_at_rate(port: u16, token: &str, rate: u64, duration: Duration) -> RunStats {
    let Some(client) = crate::check_client(port).await else {
        return RunStats::default();
    };
    let request = crate::privileged_check_request(token);
    let started = Instant::now();
    let gap = Duration::from_micros(1_000_000 / rate.max(1));
    let count = (duration.as_micros() / gap.as_micros().max(1)) as u32;
    let calls: Vec<_> = (0..count)
        .map(|i| {
            let (mut client, request) = (client.clone(), request.clone());
            let intended = started + gap * i;
            tokio::spawn(async move {
                tokio::time::sleep_until(intended.into()).await;
                let ok = client.check(request).await.is_ok();
                ok.then(|| intended.elapsed().as_micros() as u64)
            })
        })
        .collect();
    let mut run = RunStats::default();
    for call in calls {
        match call.await {
            Ok(Some(us)) => {
                run.requests += 1;
                run.latencies_us.push(us);
            }
            _ => run.errors += 1,
        }
    }
    run.elapsed = started.elapsed();
    run
}

/// One loaded run: which feed cursor the clients looped on, Check p99, answers served.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub cursor: u64,
    pub check_p99_us: u64,
    pub feed_answers: u64,
    pub feed_mb: f64,
    /// Answers refused (429: over the secret's catch-up rate).
    pub feed_refused: u64,
}

/// The measurement.
#[derive(Debug, Clone)]
pub struct FeedLoad {
    pub revocations: usize,
    pub clients: usize,
    pub fill_seconds: f64,
    pub idle_p99_us: u64,
    pub loaded: Vec<LoadedRun>,
}

impl FeedLoad {
    /// Loaded p99 over idle p99, per run.
    pub fn ratios(&self) -> Vec<f64> {
        self.loaded
            .iter()
            .map(|r| r.check_p99_us as f64 / self.idle_p99_us.max(1) as f64)
            .collect()
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client(connections: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http()
}

/// Sends one request; returns the status and the body's length.
async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    bearer: &str,
    body: Option<String>,
) -> Option<(u16, usize)> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, bytes.len()))
}

/// Revokes `count` distinct token hashes through the admin API, 16 at a time.
async fn fill(admin_port: u16, count: usize) {
    let client = client(16);
    let url = format!("http://127.0.0.1:{admin_port}/admin/revoke");
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count as u64 {
                        break;
                    }
                    let hash = authz_core::token_hash::digest_hex(
                        &authz_core::token_hash::token_digest(&format!("feed-load-{i}")),
                    );
                    let body = json!({"token_hash": hash}).to_string();
                    let _ = send(&client, "POST", &url, ADMIN_TOKEN, Some(body)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// `clients` callers loop on the feed at `cursor` until `stop`; returns answers, bytes and
/// refusals (429).
async fn loop_feed(
    admin_port: u16,
    clients: usize,
    cursor: u64,
    stop: Arc<AtomicBool>,
) -> (u64, u64, u64) {
    let client = client(clients);
    let url = format!("http://127.0.0.1:{admin_port}/admin/epochs?since={cursor}&format=2");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut answers, mut bytes, mut refused) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match send(&client, "GET", &url, EPOCHS_TOKEN, None).await {
                        Some((200, len)) => {
                            answers += 1;
                            bytes += len as u64;
                        }
                        Some((429, _)) => refused += 1,
                        _ => {}
                    }
                }
                (answers, bytes, refused)
            })
        })
        .collect();
    let mut total = (0, 0, 0);
    for task in tasks {
        if let Ok((a, b, r)) = task.await {
            total.0 += a;
            total.1 += b;
            total.2 += r;
        }
    }
    total
}

/// The measurement as `make bench` runs it (`BENCH_FEED_REVOCATIONS`, default 200,000, and
/// 50 clients), with its summary on stderr.
pub async fn run(seconds: u64) -> FeedLoad {
    let revocations = crate::env_u64("BENCH_FEED_REVOCATIONS", 200_000) as usize;
    let measured = measure(revocations, 50, seconds).await;
    eprintln!(
        "feed load: {} revocations filled in {:.1} s; check p99 idle {} µs, loaded {:?} (ratios {:?})",
        measured.revocations,
        measured.fill_seconds,
        measured.idle_p99_us,
        measured.loaded,
        measured.ratios()
    );
    measured
}

/// Runs the measurement with a stack of its own.
pub async fn measure(revocations: usize, clients: usize, seconds: u64) -> FeedLoad {
    let idp = DevIdp::start(&[]);
    let server = AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!("epochs_token: \"{EPOCHS_TOKEN}\"\n"),
    ));
    let filled = Instant::now();
    fill(server.admin_port, revocations).await;
    let fill_seconds = filled.elapsed().as_secs_f64();
    let opaque = idp.mint(json!({"sub": "feed-load", "scope": "read admin", "opaque": true}));
    // At least 6 s a run (3,000 checks): a p99 of fewer samples moves by 2× between runs
    // of the same load on these machines.
    let duration = Duration::from_secs(seconds.max(6));
    // Warm the introspection cache.
    let _ = checks_at_rate(server.grpc_port, &opaque, 100, Duration::from_millis(300)).await;
    let idle = checks_at_rate(server.grpc_port, &opaque, CHECK_RATE, duration).await;
    let mut loaded = Vec::new();
    for cursor in [0, 1, AHEAD_OF_THE_STATE] {
        let stop = Arc::new(AtomicBool::new(false));
        // The loopers run on a thread and runtime of their own at a low priority: they must
        // not delay the measuring calls' own scheduling, and an attacker's client does not
        // run on the server's machine (here, 2 cores, it would take one from the server).
        let (admin_port, looping) = (server.admin_port, stop.clone());
        let feed = std::thread::spawn(move || {
            ext_authz_server::os_thread::lower_priority_of_this_thread();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(loop_feed(admin_port, clients, cursor, looping)))
                .unwrap_or((0, 0, 0))
        });
        // Let the loopers reach their pace before measuring.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let run = checks_at_rate(server.grpc_port, &opaque, CHECK_RATE, duration).await;
        stop.store(true, Ordering::Relaxed);
        let (answers, bytes, refused) = feed.join().unwrap_or((0, 0, 0));
        loaded.push(LoadedRun {
            cursor,
            check_p99_us: run.percentile_us(0.99),
            feed_answers: answers,
            feed_mb: bytes as f64 / 1e6,
            feed_refused: refused,
        });
    }
    FeedLoad {
        revocations,
        clients,
        fill_seconds,
        idle_p99_us: idle.percentile_us(0.99),
        loaded,
    }
}
