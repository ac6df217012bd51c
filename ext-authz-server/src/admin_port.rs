//! The admin port's connections. A fleet holds one change-feed request per filter (thousands
//! per server replica), each on a connection of its own, answered at every change; through
//! hyper each such connection keeps two 8 KiB buffers and each answer runs the router. So this
//! loop reads request heads itself (`httparse`, into a buffer that is freed while a request is
//! held) and answers a plain, authorized `GET /admin/epochs` with [`crate::feed::reply`], the
//! same answer the router gives. At the first request it is not sure of — another method or
//! path, HTTP/1.0, a body (`transfer-encoding`, a `content-length` other than one `0`), `connection`, `expect`,
//! `upgrade` or `te` headers, a target the `http` crate refuses or a query that does not
//! parse, no feed or admin credential, more
//! than [`MAX_HEADERS`] headers, a head over [`MAX_HEAD_BYTES`], anything `httparse` refuses —
//! it hands the connection, with the bytes it has read, to hyper and the admin router, which
//! answer it exactly as they did before this loop existed (401, 404, 400, 431, …).
//!
//! A held request whose client closes the connection is dropped at once (its place among the
//! held requests is freed), as hyper does. On stop, the listener is closed (new connections
//! are refused), held requests are answered with `connection: close` (see `feed::reply`),
//! idle connections are closed, and connections with hyper finish gracefully. A reply not
//! written within [`WRITE_TIMEOUT`] loses its connection.

use crate::admin::{Admin, FEED_PATH};
use crate::bearer::{credential_for, Credential};
use crate::feed::{FeedQuery, FeedReply};
use axum::body::Bytes;
use axum::http::uri::PathAndQuery;
use axum::Router;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The longest request head this loop reads; a longer one goes to hyper (which refuses it).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The most headers this loop parses; a request with more goes to hyper.
pub const MAX_HEADERS: usize = 32;

/// Bytes read at a time while a head is incomplete.
const READ_CHUNK_BYTES: usize = 1024;

/// The longest a reply may take to write: a client that stops reading loses its connection
/// (and cannot hold a stopping server's drain).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply up to this size is written with one call (copied once); a larger one (a page of a
/// catch-up) part by part, without a copy.
const COPIED_REPLY_BYTES: usize = 16 * 1024;

/// Headers after which a request is hyper's to answer: they ask for framing, a protocol
/// change or connection handling that this loop does not do.
const HANDED_OVER_HEADERS: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "upgrade",
    "te",
];

/// Serves the admin port until `admin.stop` turns true, then waits for its connections to end.
pub async fn serve(listener: TcpListener, app: Router, admin: Admin) {
    let mut stop = admin.stop.clone();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers are written whole: Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(stream, app.clone(), admin.clone()));
                }
                Err(error) => {
                    // Out of file descriptors, most often: let some connections end first.
                    tracing::warn!(%error, "admin_accept_failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.wait_for(|stop| *stop) => break,
        }
        while connections.try_join_next().is_some() {}
    }
    // New connections are refused during the drain (a client tries another replica).
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// A feed request this loop answers itself.
#[derive(Debug)]
struct FeedRequest {
    /// Bytes of its head (what follows in the buffer is the next request's).
    head_len: usize,
    credential: Credential,
    query: FeedQuery,
}

/// What the next request on a connection is.
#[derive(Debug)]
enum Next {
    Feed(FeedRequest),
    /// Not this loop's: the connection goes to hyper with what was read.
    HandOver,
    /// The client closed the connection (or it failed) between requests.
    Closed,
}

async fn connection(mut stream: TcpStream, app: Router, admin: Admin) {
    let mut stop = admin.stop.clone();
    let mut read = Vec::new();
    loop {
        let next = tokio::select! {
            next = next_request(&stream, &mut read, &admin) => next,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let request = match next {
            Next::Feed(request) => request,
            Next::HandOver => return hand_over(stream, read, app, stop).await,
            Next::Closed => return,
        };
        // What follows the head (pipelined), in a buffer of its size: nothing is kept while
        // the request is held but what the client sent.
        read = read.split_off(request.head_len.min(read.len()));
        let reply = crate::feed::reply(&admin.feed, request.credential, request.query);
        let reply = tokio::select! {
            reply = reply => reply,
            _ = client_gone(&stream) => return,
        };
        // Stopping: the client is told to take its next request elsewhere (as hyper does).
        let last = *stop.borrow();
        let written = tokio::time::timeout(WRITE_TIMEOUT, write_reply(&mut stream, &reply, last));
        if !matches!(written.await, Ok(Ok(()))) || last {
            return;
        }
        reply.pushed(&admin.service.metrics);
    }
}

/// Reads until `read` holds a whole request head, and says whose it is.
async fn next_request(stream: &TcpStream, read: &mut Vec<u8>, admin: &Admin) -> Next {
    loop {
        if !read.is_empty() {
            if let Some(next) = parse_head(read, admin) {
                return next;
            }
        }
        if read.len() >= MAX_HEAD_BYTES {
            return Next::HandOver;
        }
        // Reserved once there is something to read: an idle connection keeps no buffer.
        if stream.readable().await.is_err() {
            return Next::Closed;
        }
        read.reserve_exact(READ_CHUNK_BYTES.min(MAX_HEAD_BYTES - read.len()));
        match stream.try_read_buf(read) {
            Ok(0) => return Next::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Next::Closed,
        }
    }
}

/// The request head at the start of `read`: `None` while incomplete.
fn parse_head(read: &[u8], admin: &Admin) -> Option<Next> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(read) {
        Ok(httparse::Status::Complete(head_len)) => {
            Some(feed_request(&request, head_len, admin).map_or(Next::HandOver, Next::Feed))
        }
        Ok(httparse::Status::Partial) => None,
        // Malformed, or more headers than this loop parses: hyper answers it.
        Err(_) => Some(Next::HandOver),
    }
}

/// The request as one this loop answers, if it is one: see the module's doc.
fn feed_request(
    request: &httparse::Request<'_, '_>,
    head_len: usize,
    admin: &Admin,
) -> Option<FeedRequest> {
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    // Read as the router reads it (`http`'s parser: the characters it allows, the query
    // cut at `#`): a target it refuses, or reads otherwise, is the router's to answer.
    let target = PathAndQuery::from_str(request.path?).ok()?;
    if target.path() != FEED_PATH {
        return None;
    }
    let query = target.query().unwrap_or("");
    let mut authorization = None;
    let mut empty_body_declared = false;
    for header in request.headers.iter() {
        // `content-length: 0` (once) says what a GET without a body means anyway.
        if header.name.eq_ignore_ascii_case("content-length")
            && header.value == b"0"
            && !empty_body_declared
        {
            empty_body_declared = true;
            continue;
        }
        if HANDED_OVER_HEADERS
            .iter()
            .any(|name| header.name.eq_ignore_ascii_case(name))
        {
            return None;
        }
        if authorization.is_none() && header.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header.value);
        }
    }
    // As `HeaderValue::to_str`: visible ASCII (and tabs) only.
    let authorization = authorization
        .filter(|value| {
            value
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        })
        .and_then(|value| std::str::from_utf8(value).ok());
    let credential = credential_for(&admin.service.config, true, authorization)?;
    let query = serde_urlencoded::from_str::<FeedQuery>(query).ok()?;
    Some(FeedRequest {
        head_len,
        credential,
        query,
    })
}

/// Resolves when the client closes the connection (or it fails) while its request is held
/// (as hyper, which does not serve half-closed connections); never once it sends more (a
/// pipelined request, answered in order after this one).
async fn client_gone(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending::<()>().await,
    }
}

/// Writes `reply` as an HTTP/1.1 response; `last`: with `connection: close` (the connection
/// is closed after it), else it stays open for the next request.
async fn write_reply(stream: &mut TcpStream, reply: &FeedReply, last: bool) -> io::Result<()> {
    let length: usize = reply.body.iter().map(Bytes::len).sum();
    let head = response_head(reply, length, last);
    if head.len() + length <= COPIED_REPLY_BYTES {
        let mut whole = Vec::with_capacity(head.len() + length);
        whole.extend_from_slice(head.as_bytes());
        for part in &reply.body {
            whole.extend_from_slice(part);
        }
        return stream.write_all(&whole).await;
    }
    stream.write_all(head.as_bytes()).await?;
    for part in &reply.body {
        stream.write_all(part).await?;
    }
    Ok(())
}

/// The status line and headers of `reply`, with a body of `length` bytes.
fn response_head(reply: &FeedReply, length: usize, last: bool) -> String {
    let retry_after = reply
        .retry_after_seconds
        .map(|seconds| format!("retry-after: {seconds}\r\n"))
        .unwrap_or_default();
    let close = if last { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n{retry_after}{close}content-length: {length}\r\n\r\n",
        reply.status.as_u16(),
        reply.status.canonical_reason().unwrap_or(""),
    )
}

/// Serves the rest of the connection with hyper and the admin router, as `axum::serve` does,
/// the bytes already `read` first.
async fn hand_over(stream: TcpStream, read: Vec<u8>, app: Router, mut stop: watch::Receiver<bool>) {
    let io = hyper_util::rt::TokioIo::new(Rewind {
        read: Bytes::from(read),
        stream,
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        // The connection first: it reads the request already read before a stop is seen,
        // so a graceful shutdown answers it instead of cancelling its reading.
        biased;
        _ = connection.as_mut() => return,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() && buf.remaining() > 0 {
            let n = self.read.len().min(buf.remaining());
            let first = self.read.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
