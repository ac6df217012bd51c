//! Host calls, wrapped so that a failing call is a value, never a panic.
//!
//! Every function here is a one-line translation to `proxy_wasm::hostcalls`; failures are
//! logged where useful and returned as `None`/`false`. Nothing here decides anything.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
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

/// Wall-clock time in milliseconds since the Unix epoch, as Envoy sees it.
pub fn now_ms() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    now.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// Wall-clock time in microseconds, for measuring short stages.
pub fn now_us() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    now.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_micros() as u64)
}

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

pub fn set_request_header(name: &str, value: &str) -> bool {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_ok()
}

pub fn remove_request_header(name: &str) -> bool {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_ok()
}

pub fn send_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    hostcalls::send_http_response(u32::from(status), headers.to_vec(), Some(body)).is_ok()
}

pub fn resume_request() -> bool {
    hostcalls::resume_http_request().is_ok()
}

/// Makes `context_id` the target of the following host calls. False if it no longer exists.
pub fn set_effective_context(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn set_tick_period(period: Duration) -> bool {
    hostcalls::set_tick_period(period).is_ok()
}

/// A shared-data value and its CAS token.
pub fn shared_get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Outcome of a shared-data write.
#[derive(Debug, PartialEq, Eq)]
pub enum SharedWrite {
    Written,
    CasMismatch,
    Failed,
}

pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> SharedWrite {
    match hostcalls::set_shared_data(key, Some(value), cas) {
        Ok(()) => SharedWrite::Written,
        Err(Status::CasMismatch) => SharedWrite::CasMismatch,
        Err(_) => SharedWrite::Failed,
    }
}

pub fn dispatch_get(cluster: &str, authority: &str, path: &str, timeout: Duration) -> Option<u32> {
    dispatch_get_with(cluster, authority, path, &[], timeout)
}

/// A GET with extra request headers.
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
pub fn dispatch_grpc(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Option<u32> {
    hostcalls::dispatch_grpc_call(cluster, service, method, vec![], Some(message), timeout).ok()
}

pub fn grpc_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

pub fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// A property as text (e.g. `source.address`).
pub fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

pub fn call_response_status() -> Option<u16> {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
}

pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

pub fn increment(metric: Option<u32>) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

pub fn increment_by(metric: Option<u32>, n: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, value);
    }
}
