//! OpenTelemetry traces of checks (`otlp:`, off by default): one span per check
//! (`authz.check`, kind server) continuing the trace context Envoy passes in the
//! CheckRequest's headers (W3C `traceparent`, else B3), and one child span per stage it went
//! through (`authz.policy`, `authz.cache_lookup`, `authz.jwt_verify`, `authz.status_list`),
//! exported in batches over OTLP/HTTP with the JSON encoding (`POST <endpoint>`, e.g. an
//! OpenTelemetry Collector's `http://collector:4318/v1/traces`).
//!
//! The parent is the Check call's own trace context (its gRPC metadata: Envoy's ext_authz call
//! carries its span's when Envoy traces); the checked request's headers are the client's, and
//! name the parent only with `trust_request_headers`. A check whose context is not sampled is
//! not exported; a check without one (or with B3 and no decision) starts a trace at
//! `root_per_million`. Exporting never delays a check: spans go to a bounded queue (full:
//! dropped and counted, `authz_otlp_spans_dropped_total`), a background task posts them
//! (`authz_otlp_exports_total{result}`). Span attributes carry the route, tier, outcome,
//! reason, cache and policy version, never a token or a subject.

use crate::check::StageTime;
use crate::metrics::Metrics;
use authz_core::trace_context::{Parent, Sampled};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `otlp:` as written.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct OtlpFile {
    /// Required: the OTLP/HTTP traces URL (`http://collector:4318/v1/traces`). Plain http only
    /// to loopback unless `allow_insecure_http`.
    pub endpoint: Option<String>,
    /// `service.name` of the spans.
    #[schemars(extend("default" = DEFAULT_SERVICE_NAME))]
    pub service_name: Option<String>,
    /// Checks without a trace context that start a trace, per million (0: only checks Envoy
    /// traces are exported).
    #[schemars(extend("default" = 0))]
    pub root_per_million: Option<u32>,
    /// Spans waiting to be exported at most; beyond, new ones are dropped (counted).
    #[schemars(extend("default" = DEFAULT_MAX_QUEUE))]
    pub max_queue: Option<usize>,
    /// Also take the trace context (parent and sampling) from the checked request's own
    /// headers when the Check call carries none (the Wasm filter's calls carry none): only
    /// where a trusted proxy in front sets them (a mesh sidecar, a gateway), since a client
    /// can send any `traceparent`.
    #[schemars(extend("default" = false))]
    pub trust_request_headers: Option<bool>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: serde_yaml::Mapping,
}

const DEFAULT_SERVICE_NAME: &str = "ext-authz-server";
const DEFAULT_MAX_QUEUE: usize = 4096;
/// The most spans one export carries.
const BATCH: usize = 512;
/// How long the exporter gathers spans before it posts what it has.
const LINGER: Duration = Duration::from_millis(200);

/// `otlp:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub service_name: String,
    pub root_per_million: u32,
    pub max_queue: usize,
    pub trust_request_headers: bool,
}

impl OtlpFile {
    /// The settings, or every problem (`url_problem` checks the endpoint like the IdP's URLs).
    pub fn settings(
        &self,
        problems: &mut Vec<String>,
        url_problem: impl Fn(&str) -> Option<String>,
    ) -> Option<OtlpSettings> {
        for name in self.unknown.keys().filter_map(|k| k.as_str()) {
            problems.push(format!("otlp: unknown field \"{name}\""));
        }
        let endpoint = match &self.endpoint {
            None => {
                problems.push("otlp.endpoint: required".into());
                None
            }
            Some(url) => match url_problem(url) {
                Some(problem) => {
                    problems.push(format!("otlp.endpoint: {problem}"));
                    None
                }
                None => Some(url.clone()),
            },
        };
        let root_per_million = self.root_per_million.unwrap_or(0);
        if root_per_million > 1_000_000 {
            problems.push("otlp.root_per_million: at most 1000000".into());
        }
        let max_queue = self.max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
        if !(1..=1_000_000).contains(&max_queue) {
            problems.push("otlp.max_queue: 1 to 1000000".into());
        }
        Some(OtlpSettings {
            endpoint: endpoint?,
            service_name: self
                .service_name
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into()),
            root_per_million,
            max_queue,
            trust_request_headers: self.trust_request_headers.unwrap_or(false),
        })
    }
}

/// What a finished check tells its spans.
#[derive(Debug)]
pub struct CheckSpan<'a> {
    pub parent: Option<&'a Parent>,
    pub stages: &'a [StageTime],
    pub attributes: Vec<(&'static str, String)>,
    /// A fail-closed or internal denial (a 5xx): the span's status is an error.
    pub error: bool,
}

/// Sends the spans of checks to the collector in the background.
#[derive(Debug)]
pub struct Exporter {
    settings: OtlpSettings,
    queue: tokio::sync::mpsc::Sender<Value>,
    metrics: Arc<Metrics>,
    /// An instant and the wall time it was: stage instants become span times.
    origin: (Instant, SystemTime),
    /// Checks without a trace context seen (started at the root share by count).
    unparented: std::sync::atomic::AtomicU64,
}

impl Exporter {
    /// Starts the export task on the current runtime; `None` outside one (logged).
    pub fn start(
        settings: OtlpSettings,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Exporter>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("otlp: no runtime to export from; traces are off");
            return None;
        };
        let (queue, spans) = tokio::sync::mpsc::channel(settings.max_queue);
        let exporter = Arc::new(Exporter {
            settings,
            queue,
            metrics,
            origin: (Instant::now(), SystemTime::now()),
            unparented: std::sync::atomic::AtomicU64::new(0),
        });
        runtime.spawn(export_loop(exporter.clone(), spans, http));
        Some(exporter)
    }

    /// Whether a check with this context is exported: as its sender decided, else (no
    /// context, or B3 without a decision) at `root_per_million`.
    pub fn samples(&self, parent: Option<&Parent>) -> bool {
        match parent.map(|p| p.sampled) {
            Some(Sampled::Yes) => true,
            Some(Sampled::No) => false,
            Some(Sampled::Undecided) | None => {
                let n = self
                    .unparented
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                authz_core::canary::share_takes(self.settings.root_per_million, n)
            }
        }
    }

    /// Queues the spans of one check the caller found [`Exporter::samples`] (its `check`
    /// stage is the parent of the others).
    pub fn record(&self, check: CheckSpan<'_>) {
        let Some(root) = check.stages.iter().find(|s| s.name == "check") else {
            return;
        };
        let trace_id = check
            .parent
            .map_or_else(|| random_hex(16), |p| p.trace_id.clone());
        let root_id = random_hex(8);
        let attributes: Vec<Value> = check
            .attributes
            .iter()
            .map(|(key, value)| json!({"key": key, "value": {"stringValue": value}}))
            .collect();
        let mut spans = vec![self.span(
            &trace_id,
            &root_id,
            check.parent.and_then(|p| p.span_id.as_deref()),
            root,
            2,
            json!({
                "attributes": attributes,
                "status": {"code": if check.error { 2 } else { 0 }},
            }),
        )];
        for stage in check.stages.iter().filter(|s| s.name != "check") {
            spans.push(self.span(
                &trace_id,
                &random_hex(8),
                Some(&root_id),
                stage,
                1,
                json!({}),
            ));
        }
        for span in spans {
            if self.queue.try_send(span).is_err() {
                self.metrics.inc("authz_otlp_spans_dropped_total", &[]);
            }
        }
    }

    fn span(
        &self,
        trace_id: &str,
        span_id: &str,
        parent: Option<&str>,
        stage: &StageTime,
        kind: u8,
        extra: Value,
    ) -> Value {
        let start = self.unix_nanos(stage.started);
        let end = start.saturating_add((stage.seconds * 1e9) as u64);
        let mut span = json!({
            "traceId": trace_id,
            "spanId": span_id,
            "name": format!("authz.{}", stage.name),
            "kind": kind,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": end.to_string(),
        });
        if let (Some(parent), Some(object)) = (parent, span.as_object_mut()) {
            object.insert("parentSpanId".into(), json!(parent));
        }
        if let (Some(object), Value::Object(extra)) = (span.as_object_mut(), extra) {
            object.extend(extra);
        }
        span
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        let (origin, wall) = self.origin;
        let wall_at = match at.checked_duration_since(origin) {
            Some(after) => wall.checked_add(after),
            None => wall.checked_sub(origin.duration_since(at)),
        }
        .unwrap_or(UNIX_EPOCH);
        wall_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// One export request's body (`ExportTraceServiceRequest`, JSON).
    fn body(&self, spans: Vec<Value>) -> Value {
        json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": self.settings.service_name}}
            ]},
            "scopeSpans": [{"scope": {"name": "ext-authz-server"}, "spans": spans}]
        }]})
    }
}

/// Gathers queued spans (up to [`BATCH`], or what came within [`LINGER`] of the first) and
/// posts them, until the exporter is gone.
async fn export_loop(
    exporter: Arc<Exporter>,
    mut spans: tokio::sync::mpsc::Receiver<Value>,
    http: reqwest::Client,
) {
    let mut failures = 0u64;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = exporter.body(batch);
        let sent = http
            .post(&exporter.settings.endpoint)
            .json(&body)
            .send()
            .await;
        // The first failure, then one in 100: a collector that is down must not flood the log.
        failures += u64::from(!matches!(&sent, Ok(reply) if reply.status().is_success()));
        let say = failures % 100 == 1;
        let result = match sent {
            Ok(reply) if reply.status().is_success() => "ok",
            Ok(reply) => {
                if say {
                    tracing::warn!(
                        status = reply.status().as_u16(),
                        failures,
                        "otlp_export_refused"
                    );
                }
                "refused"
            }
            Err(e) => {
                if say {
                    tracing::warn!(error = %e, failures, "otlp_export_failed");
                }
                "failed"
            }
        };
        exporter
            .metrics
            .inc("authz_otlp_exports_total", &[("result", result)]);
    }
}

/// `bytes` random bytes as lower-case hex (ids of spans and of traces this server starts).
fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    if getrandom::getrandom(&mut buffer).is_err() || buffer.iter().all(|b| *b == 0) {
        // An id must not be zero: fall back to the process's hasher seed.
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        for (slot, byte) in buffer.iter_mut().zip(seed.to_be_bytes().iter().cycle()) {
            *slot = *byte | 1;
        }
    }
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}
