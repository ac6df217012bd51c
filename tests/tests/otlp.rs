//! OpenTelemetry traces of checks (`otlp:`), end to end with the server in this process and an
//! OTLP/HTTP receiver in this test: a check continuing Envoy's trace context (W3C or B3) is one
//! `authz.check` span under the caller's span, with a child span per stage; a check whose
//! context is not sampled, or that has none, is not exported (the default root share is 0).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::grpc::check_request;
use tests::in_process::start;
use tests::*;

/// An OTLP/HTTP receiver: every JSON body posted to it, answered 200.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Receiver { port, bodies }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().expect("bodies");
        bodies
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// Reads HTTP/1.1 requests from `stream`, keeps each body, answers 200.
fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(json) = serde_json::from_slice(&body) {
            kept.lock().expect("bodies").push(json);
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn attribute(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_owned))
}

/// A Check of `/admin/users` with `token`: `metadata` on the gRPC call (what Envoy's ext_authz
/// call carries), `headers` on the checked request (what the client sent).
fn traced_check(
    token: &str,
    metadata: Headers,
    headers: Headers,
) -> tonic::Request<envoy_types::ext_authz::v3::pb::CheckRequest> {
    let mut request = check_request("/admin/users", Some(token), None);
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        for (name, value) in headers {
            http.headers.insert((*name).to_owned(), (*value).to_owned());
        }
    }
    let mut call = tonic::Request::new(request);
    for (name, value) in metadata {
        call.metadata_mut()
            .insert(*name, value.parse().expect("metadata value"));
    }
    call
}

fn roots(receiver: &Receiver) -> Vec<Value> {
    receiver
        .spans()
        .into_iter()
        .filter(|s| s["name"] == "authz.check")
        .collect()
}

/// Header names and values (of the call's metadata, or of the checked request).
type Headers<'a> = &'a [(&'static str, &'a str)];

const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_continues_envoys_trace_with_a_span_per_stage() {
    let idp = DevIdp::start(&[]);
    let receiver = Receiver::start();
    let server = start(&server_yaml(
        idp.port,
        &format!(
            "otlp:\n  endpoint: http://127.0.0.1:{}/v1/traces\n  service_name: authz-e2e\n",
            receiver.port
        ),
    ))
    .await;
    let mut client = server.client.clone();
    let token = idp.mint(serde_json::json!({"sub": "alice", "scope": "admin", "opaque": true}));
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    let client_sent = "00-22222222222222222222222222222222-00f067aa0ba902b7-01";
    // The ones not to export first: spans are posted in the order they were queued, so once
    // the last one is in, every earlier one would be too.
    let calls: [(Headers, Headers); 6] = [
        (&[("traceparent", unsampled)], &[]),
        (&[], &[]),
        // B3 without a sampling decision: the root share (0) decides.
        (&[("x-b3-traceid", "563ac35c9f6413ad")], &[]),
        // The client's own traceparent, on the request: not trusted by default.
        (&[], &[("traceparent", client_sent)]),
        (
            &[
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ],
            &[],
        ),
        (&[("traceparent", W3C)], &[]),
    ];
    for (metadata, headers) in calls {
        client
            .check(traced_check(&token, metadata, headers))
            .await
            .expect("check");
    }
    assert!(
        eventually(Duration::from_secs(5), || roots(&receiver)
            .iter()
            .any(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")),
        "{:?}",
        receiver.spans()
    );
    let spans = receiver.spans();
    let bodies = receiver.bodies.lock().expect("bodies").clone();
    assert_eq!(
        bodies[0]["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "authz-e2e"
    );
    let roots = roots(&receiver);
    let traces: Vec<&str> = roots.iter().filter_map(|s| s["traceId"].as_str()).collect();
    assert_eq!(
        traces.len(),
        2,
        "only the sampled contexts of the call are exported: {traces:?}"
    );
    let root = roots
        .iter()
        .find(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the W3C trace continued");
    assert_eq!(
        root["parentSpanId"], "00f067aa0ba902b7",
        "under Envoy's span"
    );
    assert_eq!(root["kind"], 2);
    assert_eq!(root["status"]["code"], 0);
    assert_eq!(attribute(root, "authz.route").as_deref(), Some("admin"));
    assert_eq!(attribute(root, "authz.tier").as_deref(), Some("privileged"));
    assert_eq!(attribute(root, "authz.outcome").as_deref(), Some("allow"));
    assert!(!root.to_string().contains(&token) && !root.to_string().contains("alice"));
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == root["spanId"])
        .collect();
    let names: Vec<&str> = children.iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"authz.policy"), "{names:?}");
    assert!(names.contains(&"authz.cache_lookup"), "{names:?}");
    let time = |span: &Value, field: &str| -> u64 {
        span[field]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{field} as a string of nanoseconds: {span}"))
    };
    for child in &children {
        assert_eq!(child["traceId"], root["traceId"]);
        assert_eq!(child["kind"], 1);
        assert!(time(child, "startTimeUnixNano") >= time(root, "startTimeUnixNano"));
        assert!(time(child, "endTimeUnixNano") <= time(root, "endTimeUnixNano"));
        assert!(time(child, "startTimeUnixNano") <= time(child, "endTimeUnixNano"));
    }
    let b3 = roots
        .iter()
        .find(|s| s["traceId"] == "0000000000000000463ac35c9f6413ad")
        .expect("the B3 trace continued");
    assert_eq!(b3["parentSpanId"], "a2fb4a1d1a96d312");
    assert!(server_metric(server.admin_port, "authz_otlp_exports_total{result=\"ok\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_requests_own_trace_context_is_used_only_where_it_is_trusted() {
    let idp = DevIdp::start(&[]);
    let receiver = Receiver::start();
    let server = start(&server_yaml(
        idp.port,
        &format!(
            "otlp:\n  endpoint: http://127.0.0.1:{}/v1/traces\n  trust_request_headers: true\n",
            receiver.port
        ),
    ))
    .await;
    let mut client = server.client.clone();
    let token = idp.mint(serde_json::json!({"sub": "bob", "scope": "admin", "opaque": true}));
    client
        .check(traced_check(&token, &[], &[("traceparent", W3C)]))
        .await
        .expect("check");
    assert!(eventually(Duration::from_secs(5), || !roots(&receiver).is_empty()));
    let root = roots(&receiver).remove(0);
    assert_eq!(root["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(root["parentSpanId"], "00f067aa0ba902b7");
}

#[test]
fn an_otlp_section_with_problems_is_refused_naming_each() {
    let idp_port = 1;
    let refused = ext_authz_server::config::ServerConfig::from_yaml(&server_yaml(
        idp_port,
        "otlp:\n  endpoint: http://collector.example:4318/v1/traces\n  root_per_million: 2000000\n  typo: 1\n",
    ))
    .expect_err("refused");
    let text = format!("{refused:?}");
    for part in [
        "otlp.endpoint",
        "otlp.root_per_million",
        "otlp: unknown field",
        "typo",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
}
