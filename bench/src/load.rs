//! Load generation over loopback: closed-loop (C connections, as fast as they go) and
//! fixed-rate open-loop (requests scheduled at a constant rate; latency is measured from each
//! request's *intended* start, so a stall shows up in the tail instead of being hidden by
//! coordinated omission).

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One scenario's target.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// Rotated per request (one header value per request, round robin).
    pub bearer_tokens: Vec<String>,
}

/// Results of a run.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub requests: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u64>,
}

impl RunStats {
    /// Adds another worker's counts and latencies to these.
    pub fn merge(&mut self, other: RunStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.non_2xx += other.non_2xx;
        self.latencies_us.extend(other.latencies_us);
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client(connections: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http()
}

async fn one(client: &HttpClient, target: &Target, index: usize) -> Result<u16, ()> {
    let mut request = hyper::Request::get(&target.url);
    if !target.bearer_tokens.is_empty() {
        let token = &target.bearer_tokens[index % target.bearer_tokens.len()];
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Empty::new()).map_err(|_| ())?;
    let response = client.request(request).await.map_err(|_| ())?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await.map_err(|_| ())?;
    Ok(status)
}

/// Closed loop: `connections` workers send back to back for `duration`.
pub async fn closed_loop(target: &Target, connections: usize, duration: Duration) -> RunStats {
    let client = client(connections);
    let counter = Arc::new(AtomicUsize::new(0));
    // Shared, not copied per request: the load generator stays out of the measurement.
    let target = Arc::new(target.clone());
    closed_loop_calls(connections, duration, move |_| {
        let (client, target) = (client.clone(), target.clone());
        let index = counter.fetch_add(1, Ordering::Relaxed);
        async move { one(&client, &target, index).await }
    })
    .await
}

/// Closed loop of any call: `connections` tasks call back to back for `duration`; `call`
/// (given the task's number) answers an HTTP status (anything but 2xx counts as `non_2xx`),
/// or `Err` when it failed (an error).
pub async fn closed_loop_calls<F, Fut>(connections: usize, duration: Duration, call: F) -> RunStats
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u16, ()>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut stats = RunStats::default();
                while started.elapsed() < duration {
                    let sent = Instant::now();
                    match call(i).await {
                        Ok(status) => {
                            stats.requests += 1;
                            if !(200..300).contains(&status) {
                                stats.non_2xx += 1;
                            }
                            stats.latencies_us.push(sent.elapsed().as_micros() as u64);
                        }
                        Err(()) => stats.errors += 1,
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = RunStats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(s);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Open loop at `rate` requests/s for `duration`; latency counted from the intended send time.
pub async fn fixed_rate(target: &Target, rate: u64, duration: Duration) -> RunStats {
    let client = client(64);
    let started = Instant::now();
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tasks = Vec::with_capacity(total);
    for index in 0..total {
        let intended = started + interval * index as u32;
        tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        let (client, target) = (client.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            (one(&client, &target, index).await, intended.elapsed())
        }));
    }
    let mut stats = RunStats::default();
    for t in tasks {
        if let Ok((result, latency)) = t.await {
            match result {
                Ok(status) => {
                    stats.requests += 1;
                    if !(200..300).contains(&status) {
                        stats.non_2xx += 1;
                    }
                    stats.latencies_us.push(latency.as_micros() as u64);
                }
                Err(()) => stats.errors += 1,
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats
}
