//! Test support: a tiny HTTP server on a loopback port that answers every request with what
//! `respond(port)` returns (a whole HTTP/1.1 response), counts connections, and can keep what
//! each request said.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every request a [`serve_recording`] server received, as text.
pub type Received = Arc<std::sync::Mutex<Vec<String>>>;

/// Starts the server; returns its port and its connection count.
pub async fn serve(respond: impl Fn(u16) -> String + Send + 'static) -> (u16, Arc<AtomicUsize>) {
    serve_with(respond, |_| {}).await
}

/// [`serve`], keeping what each request said.
pub async fn serve_recording(respond: impl Fn(u16) -> String + Send + 'static) -> (u16, Received) {
    let received: Received = Arc::default();
    let kept = received.clone();
    let (port, _) = serve_with(respond, move |request| {
        if let Ok(mut all) = kept.lock() {
            all.push(request);
        }
    })
    .await;
    (port, received)
}

async fn serve_with(
    respond: impl Fn(u16) -> String + Send + 'static,
    record: impl Fn(String) + Send + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 8192];
            let read = socket.read(&mut buffer).await.unwrap_or(0);
            record(String::from_utf8_lossy(buffer.get(..read).unwrap_or(&[])).into_owned());
            let _ = socket.write_all(respond(port).as_bytes()).await;
        }
    });
    (port, hits)
}

/// A 200 answer with a JSON body.
pub fn json_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
