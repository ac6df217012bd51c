//! Host calls, wrapped so that a failing call is a value, never a panic.
//!
//! Everything goes through [`crate::abi`] (our own bindings, which return statuses and bytes)
//! except the two dispatch calls the SDK must register for its callback routing. Header values
//! and properties arrive as bytes; text is decoded here, deliberately, and bytes that are not
//! UTF-8 are reported as such rather than unwrapped. Nothing here decides anything.

use crate::abi;
use filter_core::SharedWrite;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use std::time::Duration;

pub fn log(level: LogLevel, message: &str) {
    let _ = abi::log(level as u32, message);
}

pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

pub fn error(message: &str) {
    log(LogLevel::Error, message);
}

/// Whether Envoy's log level for Wasm lets debug lines through.
pub fn debug_enabled() -> bool {
    abi::log_level().is_ok_and(|level| level <= LogLevel::Debug as u32)
}

/// Wall-clock time in milliseconds since the Unix epoch, as Envoy sees it.
pub fn now_ms() -> Option<u64> {
    abi::current_time_nanos().ok().map(|n| n / 1_000_000)
}

/// Wall-clock time in microseconds, for measuring short stages.
pub fn now_us() -> Option<u64> {
    abi::current_time_nanos().ok().map(|n| n / 1_000)
}

/// One request header as text; `None` when absent or not UTF-8.
pub fn request_header(name: &str) -> Option<String> {
    let bytes = abi::header_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()?;
    String::from_utf8(bytes).ok()
}

pub fn set_request_header(name: &str, value: &str) -> bool {
    abi::replace_header(MapType::HttpRequestHeaders, name, value.as_bytes()).is_ok()
}

pub fn remove_request_header(name: &[u8]) -> bool {
    abi::remove_header(MapType::HttpRequestHeaders, name).is_ok()
}

pub fn send_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    abi::send_local_response(u32::from(status), headers, body).is_ok()
}

pub fn resume_request() -> bool {
    abi::resume_request().is_ok()
}

/// Makes `context_id` the target of the following host calls. False if it no longer exists.
pub fn set_effective_context(context_id: u32) -> bool {
    abi::set_effective_context(context_id).is_ok()
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    abi::buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn set_tick_period(period: Duration) -> bool {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    abi::set_tick_period_ms(ms).is_ok()
}

/// A shared-data value and its CAS token.
pub fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    abi::shared_get(key).unwrap_or((None, None))
}

pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> SharedWrite {
    match abi::shared_set(key, value, cas) {
        Ok(()) => SharedWrite::Written,
        Err(abi::STATUS_CAS_MISMATCH) => SharedWrite::CasMismatch,
        Err(_) => SharedWrite::Failed,
    }
}

/// Registers this VM's queue `name` (answers other VMs share arrive there); `None` when the
/// proxy refuses.
pub fn register_queue(name: &str) -> Option<u32> {
    abi::register_queue(name).ok()
}

/// Enqueues `message` on the queue another VM registered as `name`; false when there is no
/// such queue (its VM went away) or the proxy refuses.
pub fn enqueue_to(name: &str, message: &[u8]) -> bool {
    match abi::resolve_queue(name) {
        Ok(Some(id)) => abi::enqueue(id, message).is_ok(),
        _ => false,
    }
}

/// The messages waiting on queue `id`, oldest first, at most `max`.
pub fn dequeue_all(id: u32, max: usize) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while messages.len() < max {
        match abi::dequeue(id) {
            Ok(Some(message)) => messages.push(message),
            _ => break,
        }
    }
    messages
}

pub fn dispatch_get(cluster: &str, authority: &str, path: &str, timeout: Duration) -> Option<u32> {
    dispatch_get_with(cluster, authority, path, &[], timeout)
}

/// A GET with extra request headers. Through the SDK, which registers the token so that the
/// answer reaches this context; its wrapper knows every status Envoy's `httpCall` returns
/// (OK, BadArgument for an unknown cluster or bad headers, InternalFailure).
pub fn dispatch_get_with(
    cluster: &str,
    authority: &str,
    path: &str,
    extra: &[(&str, &str)],
    timeout: Duration,
) -> Option<u32> {
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority),
        ("accept", "application/json"),
    ];
    headers.extend_from_slice(extra);
    hostcalls::dispatch_http_call(cluster, headers, None, vec![], timeout).ok()
}

/// A unary gRPC call; the answer arrives at the calling context's `on_grpc_call_response`.
/// Through the SDK for the same reason as [`dispatch_get_with`] (Envoy's `grpcCall` returns
/// OK, ParseFailure or InternalFailure, all of which the SDK maps to values).
pub fn dispatch_grpc(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Option<u32> {
    hostcalls::dispatch_grpc_call(cluster, service, method, vec![], Some(message), timeout).ok()
}

/// The body of a gRPC call's answer: `None` unless the call succeeded (status 0).
pub fn grpc_response_body(status_code: u32, size: usize) -> Option<Vec<u8>> {
    if status_code != 0 {
        return None;
    }
    abi::buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

/// Every request header, as bytes (a client may send any byte Envoy lets through).
pub fn request_headers() -> Vec<(Vec<u8>, Vec<u8>)> {
    abi::header_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// A property as text (e.g. `source.address`); `None` when absent or not UTF-8.
pub fn property(path: &[&str]) -> Option<String> {
    let bytes = abi::property(path).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

pub fn call_response_status() -> Option<u16> {
    abi::header_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
}

pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    abi::buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    abi::define_metric(kind as u32, name).ok()
}

pub fn increment(metric: Option<u32>) {
    if let Some(id) = metric {
        let _ = abi::increment_metric(id, 1);
    }
}

pub fn increment_by(metric: Option<u32>, n: u64) {
    if let Some(id) = metric {
        let _ = abi::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = abi::record_metric(id, value);
    }
}
