//! The admin port's own connection loop (`ext_authz_server::admin_port`), on real sockets:
//! a plain authorized feed request is answered by the loop, every other request (and the rest
//! of its connection) by the router, and both answer a feed request alike; a held request
//! whose client leaves gives its place back at once; pushes are timed by the server.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::in_process::{start, Server};
use tests::*;

/// One response read off a connection.
#[derive(Debug)]
struct Response {
    status: u16,
    /// The status line and headers, lower-cased.
    head: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn has_header(&self, line: &str) -> bool {
        self.head.lines().any(|l| l.trim() == line)
    }
}

/// Reads `count` responses (framed by `content-length`) off `stream`.
fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<Response> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buffer = Vec::new();
    let mut responses = Vec::new();
    let mut chunk = [0u8; 4096];
    while responses.len() < count {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                responses.push(Response { status, head, body });
                buffer.drain(..end + 4 + length);
                continue;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    responses
}

fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", server.admin_port)).expect("connect")
}

/// A feed GET as a filter sends it (no `connection` header), with `extra` header lines.
fn feed_get(query: &str, secret: &str, extra: &str) -> String {
    format!(
        "GET /admin/epochs?{query} HTTP/1.1\r\nhost: authz\r\nauthorization: Bearer {secret}\r\n{extra}\r\n"
    )
}

fn revoke(server: &Server, token: &str) -> u64 {
    let reply = request(
        "POST",
        &format!("http://127.0.0.1:{}/admin/revoke", server.admin_port),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", "application/json"),
        ],
        Some(&json!({ "token": token }).to_string()),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["version"].as_u64().expect("a version")
}

fn metrics(server: &Server) -> String {
    get(
        &format!("http://127.0.0.1:{}/metrics", server.admin_port),
        &[],
    )
    .body
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Whether the server holds `count` feed requests within 5 s (`authz_feed_streams`).
fn held_soon(server: &Server, count: u32) -> bool {
    eventually(Duration::from_secs(5), || {
        metric(&metrics(server), "authz_feed_streams") == f64::from(count)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_and_the_router_answer_a_feed_request_alike_and_the_router_gets_the_rest() {
    let idp = DevIdp::start(&[]);
    let server = start(&server_yaml(
        idp.port,
        &format!("epochs_token: \"{EPOCHS_TOKEN}\"\n"),
    ))
    .await;
    let server = tokio::task::spawn_blocking(move || {
        revoke(&server, "some-token");
        // One connection, requests written at once (pipelined), the first head in two
        // pieces: the loop's (no `date`: hyper writes one), `content-length: 0` too; the
        // same request with a `connection` header, which goes to the router with the rest
        // of the connection; then another endpoint.
        let own = feed_get("since=0", EPOCHS_TOKEN, "");
        let own_empty_body = feed_get("since=0", EPOCHS_TOKEN, "content-length: 0\r\n");
        let routed = feed_get("since=0", EPOCHS_TOKEN, "connection: keep-alive\r\n");
        let mut stream = connect(&server);
        let (first, rest) = own.split_at(20);
        stream.write_all(first.as_bytes()).expect("write");
        std::thread::sleep(Duration::from_millis(100));
        stream.write_all(rest.as_bytes()).expect("write");
        let more = format!("{own_empty_body}{routed}GET /healthz HTTP/1.1\r\nhost: authz\r\n\r\n");
        stream.write_all(more.as_bytes()).expect("write");
        let answers = read_responses(&mut stream, 4);
        assert_eq!(answers.len(), 4, "{answers:?}");
        let [own, own_empty_body, routed, health] = &answers[..] else {
            unreachable!()
        };
        for (answer, by_loop) in [(own, true), (own_empty_body, true), (routed, false)] {
            assert_eq!(answer.status, 200, "{answer:?}");
            assert!(answer.has_header("content-type: application/json"), "{answer:?}");
            assert!(answer.has_header("cache-control: no-store"), "{answer:?}");
            assert_eq!(
                !answer.head.contains("\r\ndate:"),
                by_loop,
                "which path answered: {answer:?}"
            );
            assert_eq!(answer.json()["tokens"].as_array().map(Vec::len), Some(1));
        }
        assert_eq!(own.json(), routed.json(), "the same answer on both paths");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

        // Refusals as before the loop: no credential, a wrong one, a query that does not
        // parse, another method (the router's), a removed format (the feed's); each on a
        // fresh connection.
        for (request, status) in [
            (
                "GET /admin/epochs?since=0 HTTP/1.1\r\nhost: authz\r\n\r\n".to_owned(),
                401,
            ),
            (feed_get("since=0", "not-the-secret-0123456789", ""), 401),
            (feed_get("since=abc", EPOCHS_TOKEN, ""), 400),
            (feed_get("since=0&format=1", EPOCHS_TOKEN, ""), 400),
            // `http` cuts the query at `#`: the router reads `since=0&a=b` (200), so the
            // loop must not read `format=1` in it.
            (feed_get("since=0&a=b#&format=1", EPOCHS_TOKEN, ""), 200),
            (
                format!(
                    "POST /admin/epochs?since=0 HTTP/1.1\r\nhost: authz\r\nauthorization: Bearer {EPOCHS_TOKEN}\r\ncontent-length: 0\r\n\r\n"
                ),
                405,
            ),
        ] {
            let mut stream = connect(&server);
            stream.write_all(request.as_bytes()).expect("write");
            let answers = read_responses(&mut stream, 1);
            assert_eq!(
                answers.first().map(|a| a.status),
                Some(status),
                "{request}: {answers:?}"
            );
        }
        server
    })
    .await
    .expect("join");
    let text = metrics(&server);
    // Four answers and the refused format (the router refuses the others before the feed).
    assert_eq!(metric(&text, "authz_epochs_requests_total"), 5.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_whose_client_leaves_gives_its_place_back_and_pushes_are_timed() {
    let idp = DevIdp::start(&[]);
    let server = start(&server_yaml(
        idp.port,
        &format!(
            "epochs_token: \"{EPOCHS_TOKEN}\"\nfeed: {{max_held: 1, max_held_per_token: 1}}\n"
        ),
    ))
    .await;
    tokio::task::spawn_blocking(move || {
        let current = read_responses(
            &mut {
                let mut s = connect(&server);
                s.write_all(feed_get("since=0", EPOCHS_TOKEN, "").as_bytes())
                    .expect("write");
                s
            },
            1,
        );
        let current = current.first().map(Response::json).expect("an answer");
        let version = current["version"].as_u64().expect("version");
        let incarnation = current["incarnation"]
            .as_str()
            .expect("incarnation")
            .to_owned();
        let held = feed_get(
            &format!("since={version}&wait_ms=20000&incarnation={incarnation}"),
            EPOCHS_TOKEN,
            "",
        );
        // Held, then its client leaves: the only place is free again at once, not after
        // the 20 s wait; also when it sent a byte more (the start of a pipelined request).
        let mut leaving = connect(&server);
        leaving
            .write_all(format!("{held}G").as_bytes())
            .expect("write");
        assert!(held_soon(&server, 1), "held");
        drop(leaving);
        let started = Instant::now();
        assert!(held_soon(&server, 0), "the place was not given back");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The place is taken again, and a revocation pushes to it; the server times the
        // push (from the change to the answer written).
        let mut holder = connect(&server);
        holder.write_all(held.as_bytes()).expect("write");
        assert!(held_soon(&server, 1), "held again");
        let revoked_at = revoke(&server, "pushed-token");
        let answers = read_responses(&mut holder, 1);
        let pushed = answers.first().expect("pushed");
        assert_eq!(pushed.status, 200);
        assert_eq!(pushed.json()["version"].as_u64(), Some(revoked_at));
        let text = metrics(&server);
        assert_eq!(
            metric(&text, "authz_feed_push_seconds_count"),
            1.0,
            "{text}"
        );
        assert_eq!(
            metric(&text, "authz_feed_push_seconds_bucket{le=\"1\"}"),
            1.0,
            "{text}"
        );
    })
    .await
    .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_stop_held_requests_are_answered_with_close_and_new_connections_refused() {
    let idp = DevIdp::start(&[]);
    let mut server = start(&server_yaml(
        idp.port,
        &format!("epochs_token: \"{EPOCHS_TOKEN}\"\n"),
    ))
    .await;
    let port = server.admin_port;
    let current = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(feed_get("since=0", EPOCHS_TOKEN, "").as_bytes())
            .expect("write");
        read_responses(&mut stream, 1)
            .first()
            .map(Response::json)
            .expect("an answer")
    })
    .await
    .expect("join");
    let held = feed_get(
        &format!(
            "since={}&wait_ms=20000&incarnation={}",
            current["version"],
            current["incarnation"].as_str().expect("incarnation")
        ),
        EPOCHS_TOKEN,
        "",
    );
    let mut holder = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    holder.write_all(held.as_bytes()).expect("write");
    // A request whose body never ends keeps the drain going (hyper finishes it first).
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(
        format!(
            "POST /admin/revoke HTTP/1.1\r\nhost: authz\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"jti\""
        )
        .as_bytes(),
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    tokio::task::spawn_blocking(move || {
        let answers = read_responses(&mut holder, 1);
        let answer = answers.first().expect("answered at stop");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.has_header("connection: close"), "{answer:?}");
        assert!(
            eventually(Duration::from_secs(2), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_err()),
            "the admin port still accepts connections while stopping"
        );
        drop(slow);
    })
    .await
    .expect("join");
}
