//! The binding to Envoy's dynamic-module ABI, written by hand for exactly the callbacks this
//! module makes; with `crate::hooks` (the exported event hooks, which turn raw pointers back
//! into the module's objects) it holds all of the crate's `unsafe`, each block with a
//! `SAFETY:` comment. [`ffi`] declares the C side; this module wraps it in handles whose
//! methods cannot misuse it ([`EnvoyConfig`], [`EnvoyFilter`], the schedulers). It imports
//! nothing of the module's own: the hooks depend on it, not it on them.
//!
//! Ownership, from the ABI's documentation: a buffer Envoy hands out is valid until the hook
//! that handed it out returns (everything read is copied before that); a buffer the module
//! passes is read during the call only; schedulers are created by Envoy and deleted by the
//! module (on drop here).
//!
//! What it does not do: decide anything, or keep any state but the handles.
#![allow(unsafe_code)]

pub mod ffi;

use ffi::*;
use std::time::Duration;

/// The ABI version this module was built for (Envoy 1.40), NUL-terminated as
/// `on_program_init` returns it. Envoy logs a mismatch and loads the module anyway, so the
/// version is also in the module's start-up log line.
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// Header pairs as bytes.
pub type RawHeaders = Vec<(Vec<u8>, Vec<u8>)>;

/// Severity of a log line (Envoy's `dynamic_modules` logger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn raw(self) -> u32 {
        match self {
            LogLevel::Debug => LOG_DEBUG,
            LogLevel::Info => LOG_INFO,
            LogLevel::Warn => LOG_WARN,
            LogLevel::Error => LOG_ERROR,
        }
    }
}

/// Logs `message` (any thread: Envoy's logger is thread-safe).
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points into `message`, which outlives the call; Envoy reads it during
    // the call only.
    unsafe { envoy_dynamic_module_callback_log(level.raw(), module_buffer(message.as_bytes())) }
}

/// Whether lines at `level` are shown.
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: takes a plain integer.
    unsafe { envoy_dynamic_module_callback_log_enabled(level.raw()) }
}

/// What a request's headers hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Go on to the next filter.
    Continue,
    /// A local reply was sent.
    Replied,
    /// Wait (for keys or a Check answer): nothing of the request, body or trailers, goes on
    /// until the filter continues it.
    Paused,
}

impl HeadersStatus {
    pub(crate) fn raw(self) -> u32 {
        match self {
            HeadersStatus::Continue => HEADERS_CONTINUE,
            HeadersStatus::Replied => HEADERS_STOP_ITERATION,
            HeadersStatus::Paused => HEADERS_STOP_ALL_ITERATION_AND_WATERMARK,
        }
    }
}

/// A metric defined at configuration time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricId(usize);

/// How a one-shot HTTP callout ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutAnswer {
    /// Whether a response arrived (not reset, not over the buffer limit).
    pub completed: bool,
    pub headers: RawHeaders,
    pub body: Vec<u8>,
}

impl CalloutAnswer {
    /// The `:status` of a completed callout.
    pub fn status(&self) -> Option<u16> {
        if !self.completed {
            return None;
        }
        self.headers
            .iter()
            .find(|(name, _)| name.as_slice() == b":status")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
    }
}

/// The filter configuration, as Envoy hands it to the module (process-wide).
#[derive(Debug, Clone)]
pub struct EnvoyConfig(pub(crate) ConfigEnvoyPtr);

// SAFETY: Envoy keeps the configuration object alive from `config_new` until
// `config_destroy`, and every filter (the only other holders of this handle, through
// `Shared`) is destroyed before its configuration. The callbacks made through it from any
// thread are the metric updates (Envoy's stats are atomic and the ids are fixed after
// creation) and creating the scheduler (main thread, in `config_new`); callouts are made on
// the main thread only (see `shared`).
unsafe impl Send for EnvoyConfig {}
// SAFETY: as for Send: the handle is a pointer the module never writes through.
unsafe impl Sync for EnvoyConfig {}

impl EnvoyConfig {
    fn define(
        &self,
        name: &str,
        define: unsafe extern "C" fn(
            ConfigEnvoyPtr,
            ModuleBuffer,
            *mut ModuleBuffer,
            usize,
            *mut usize,
        ) -> u32,
    ) -> Option<MetricId> {
        let mut id = 0usize;
        // SAFETY: the name buffer outlives the call; no labels (null, 0); `id` is a valid
        // out-pointer for the call. Called inside `config_new` (metrics freeze after it).
        let result = unsafe {
            define(
                self.0,
                module_buffer(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(MetricId(id))
    }

    pub fn define_counter(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            envoy_dynamic_module_callback_http_filter_config_define_counter,
        )
    }

    pub fn define_gauge(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            envoy_dynamic_module_callback_http_filter_config_define_gauge,
        )
    }

    pub fn define_histogram(&self, name: &str) -> Option<MetricId> {
        self.define(
            name,
            envoy_dynamic_module_callback_http_filter_config_define_histogram,
        )
    }

    pub fn increment_counter(&self, id: MetricId, by: u64) {
        // SAFETY: an id Envoy defined for this configuration; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id.0,
                std::ptr::null_mut(),
                0,
                by,
            );
        }
    }

    pub fn set_gauge(&self, id: MetricId, value: u64) {
        // SAFETY: an id Envoy defined for this configuration; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.0,
                id.0,
                std::ptr::null_mut(),
                0,
                value,
            );
        }
    }

    pub fn record_histogram(&self, id: MetricId, value: u64) {
        // SAFETY: an id Envoy defined for this configuration; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                self.0,
                id.0,
                std::ptr::null_mut(),
                0,
                value,
            );
        }
    }

    /// The configuration's scheduler (runs `config_scheduled` on the main thread).
    pub fn new_scheduler(&self) -> Option<ConfigScheduler> {
        // SAFETY: a live configuration pointer; Envoy returns a new scheduler or null.
        let scheduler =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!scheduler.is_null()).then_some(ConfigScheduler(scheduler))
    }

    /// A one-shot HTTP request (main thread only); its answer comes to
    /// `config_http_callout_done`. `None` when it could not start.
    pub fn http_callout(&self, request: &Outgoing<'_>) -> Option<u64> {
        request.start(|id, cluster, headers, count, body, timeout| {
            // SAFETY: a live configuration pointer; the arguments are valid for the call (see
            // `Outgoing::start`).
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_http_callout(
                    self.0, id, cluster, headers, count, body, timeout,
                )
            }
        })
    }

    /// An HTTP stream with the request's body as the whole request (main thread only); its
    /// answer comes to the `config_http_stream_*` hooks. `None` when it could not start.
    pub fn start_stream(&self, request: &Outgoing<'_>) -> Option<u64> {
        request.start(|id, cluster, headers, count, body, timeout| {
            // SAFETY: a live configuration pointer; the arguments are valid for the call (see
            // `Outgoing::start`).
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                    self.0, id, cluster, headers, count, body, true, timeout,
                )
            }
        })
    }
}

/// A request the module sends through one of Envoy's clusters.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub cluster: &'a str,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub timeout: Duration,
}

impl Outgoing<'_> {
    /// Runs `start` (one of the ABI's callout starts) with this request's raw form and an id
    /// out-pointer; the id Envoy assigned, or `None` when it refused.
    fn start(
        &self,
        start: impl FnOnce(*mut u64, ModuleBuffer, *mut ModuleHeader, usize, ModuleBuffer, u64) -> u32,
    ) -> Option<u64> {
        // Every buffer (cluster, header pairs, body) outlives the call and Envoy copies them;
        // `raw` has exactly `raw.len()` entries; `id` is a valid out-pointer.
        let mut raw = module_headers(self.headers);
        let mut id = 0u64;
        let result = start(
            &mut id,
            module_buffer(self.cluster.as_bytes()),
            raw.as_mut_ptr(),
            raw.len(),
            module_buffer(self.body),
            timeout_ms(self.timeout),
        );
        (result == CALLOUT_INIT_SUCCESS).then_some(id)
    }
}

/// The configuration's scheduler: wakes the main thread from any thread.
#[derive(Debug)]
pub struct ConfigScheduler(ConfigSchedulerPtr);

// SAFETY: Envoy documents the configuration scheduler as usable from any thread (it posts to
// the main thread's dispatcher); it is deleted once, on drop, after the waking thread that
// shares it has been joined (`Shared::stop`).
unsafe impl Send for ConfigScheduler {}
// SAFETY: as for Send: `commit` is the only method, and it is thread-safe in Envoy.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    /// Runs `config_scheduled(event_id)` on the main thread soon.
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a scheduler Envoy created and this handle has not deleted (drop deletes).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: deleted exactly once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// One request's scheduler: runs its `scheduled` hook on its worker thread.
#[derive(Debug)]
pub struct FilterScheduler(FilterSchedulerPtr);

// SAFETY: Envoy documents `scheduler_commit` as safe from any thread (a no-op once the filter
// is gone). It is deleted on drop, which `Mailbox::close` does on the request's own thread
// under the lock every commit takes, so no commit races the deletion.
unsafe impl Send for FilterScheduler {}

impl FilterScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a scheduler Envoy created and this handle has not deleted (drop deletes).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for FilterScheduler {
    fn drop(&mut self) {
        // SAFETY: deleted exactly once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// One request's filter as Envoy sees it. Used only on the request's worker thread (the
/// handle is not `Send`).
#[derive(Debug, Clone, Copy)]
pub struct EnvoyFilter(pub(crate) FilterEnvoyPtr);

impl EnvoyFilter {
    /// Every request header, pseudo-headers included, as bytes (copied).
    pub fn request_headers(&self) -> RawHeaders {
        // SAFETY: a live filter pointer (this handle is used only from the request's own hooks).
        let count = unsafe {
            envoy_dynamic_module_callback_http_get_headers_size(self.0, HEADER_TYPE_REQUEST)
        };
        if count == 0 {
            return Vec::new();
        }
        let empty = EnvoyHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        let mut raw = vec![empty; count];
        // SAFETY: `raw` has room for `count` entries, the size Envoy just reported (the
        // callback does not bounds-check); the map is not changed in between.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(
                self.0,
                HEADER_TYPE_REQUEST,
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy filled the entries with buffers valid until this hook returns; they
        // are copied now.
        unsafe { copy_headers(raw.as_ptr(), raw.len()) }
    }

    /// Removes every value of request header `name`; false when Envoy could not.
    pub fn remove_request_header(&self, name: &[u8]) -> bool {
        let nothing = ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: the name outlives the call; a null value removes the header (ABI doc).
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                HEADER_TYPE_REQUEST,
                module_buffer(name),
                nothing,
            )
        }
    }

    /// Sets request header `name` to `value` (replacing every value); false when Envoy could
    /// not. An empty value removes the header (the ABI cannot set an empty value).
    pub fn set_request_header(&self, name: &str, value: &str) -> bool {
        // SAFETY: both buffers outlive the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                HEADER_TYPE_REQUEST,
                module_buffer(name.as_bytes()),
                module_buffer(value.as_bytes()),
            )
        }
    }

    /// Sends a local reply (the hook then answers [`HeadersStatus::Replied`]).
    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut raw: Vec<ModuleHeader> = headers
            .iter()
            .map(|(name, value)| module_header(name.as_bytes(), value.as_bytes()))
            .collect();
        let details = b"jwt_authz_denied";
        // SAFETY: the headers, body and details outlive the call (Envoy copies them); `raw`
        // has exactly `raw.len()` entries.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                raw.as_mut_ptr(),
                raw.len(),
                module_buffer(body),
                module_buffer(details),
            );
        }
    }

    /// Resumes a paused request.
    pub fn continue_decoding(&self) {
        // SAFETY: a live filter pointer, on its own thread.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// A scheduler that runs this request's `scheduled` hook on its thread.
    pub fn new_scheduler(&self) -> Option<FilterScheduler> {
        // SAFETY: a live filter pointer, on its own thread (Envoy captures its dispatcher).
        let scheduler = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!scheduler.is_null()).then_some(FilterScheduler(scheduler))
    }

    /// An HTTP stream with the request's body as the whole request; its answer comes to this
    /// request's `http_stream_*` hooks. `None` when it could not start.
    pub fn start_stream(&self, request: &Outgoing<'_>) -> Option<u64> {
        request.start(|id, cluster, headers, count, body, timeout| {
            // SAFETY: a live filter pointer, on its own thread; the arguments are valid for
            // the call (see `Outgoing::start`).
            unsafe {
                envoy_dynamic_module_callback_http_filter_start_http_stream(
                    self.0, id, cluster, headers, count, body, true, timeout,
                )
            }
        })
    }

    /// The downstream peer as `ip:port` (Envoy's `source.address`).
    pub fn source_address(&self) -> Option<String> {
        self.attribute(ATTRIBUTE_SOURCE_ADDRESS)
    }

    /// `HTTP/1.1`, `HTTP/2`, ... (Envoy's `request.protocol`).
    pub fn protocol(&self) -> Option<String> {
        self.attribute(ATTRIBUTE_REQUEST_PROTOCOL)
    }

    fn attribute(&self, id: u32) -> Option<String> {
        let mut result = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: a live filter pointer; `result` is a valid out-pointer.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, id, &mut result)
        };
        if !found {
            return None;
        }
        // SAFETY: Envoy set a buffer valid until this hook returns; copied now.
        let bytes = unsafe { copy_buffer(result.ptr, result.length) };
        String::from_utf8(bytes).ok()
    }
}

/// Milliseconds for a callout timeout: at least 1 (0 would mean none for streams).
fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn module_buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

fn module_header(name: &[u8], value: &[u8]) -> ModuleHeader {
    ModuleHeader {
        key_ptr: name.as_ptr(),
        key_length: name.len(),
        value_ptr: value.as_ptr(),
        value_length: value.len(),
    }
}

/// The ABI's view of `headers` (borrowing them: keep `headers` alive while it is used).
fn module_headers(headers: &[(String, String)]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(name, value)| module_header(name.as_bytes(), value.as_bytes()))
        .collect()
}

/// Copies `length` bytes at `ptr` (nothing when null or empty).
///
/// # Safety
/// `ptr` must be null or point to `length` readable bytes.
pub(crate) unsafe fn copy_buffer(ptr: *const u8, length: usize) -> Vec<u8> {
    if ptr.is_null() || length == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `length` readable bytes at `ptr`.
    unsafe { std::slice::from_raw_parts(ptr, length) }.to_vec()
}

/// Copies `count` headers at `headers` (nothing when null).
///
/// # Safety
/// `headers` must be null or point to `count` headers whose buffers are readable.
pub(crate) unsafe fn copy_headers(headers: *const EnvoyHeader, count: usize) -> RawHeaders {
    if headers.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `count` entries at `headers`.
    let entries = unsafe { std::slice::from_raw_parts(headers, count) };
    entries
        .iter()
        .map(|h| {
            // SAFETY: each entry's buffers are readable (the caller's guarantee).
            unsafe {
                (
                    copy_buffer(h.key_ptr, h.key_length),
                    copy_buffer(h.value_ptr, h.value_length),
                )
            }
        })
        .collect()
}

/// Copies and joins `count` buffers at `chunks` (nothing when null).
///
/// # Safety
/// `chunks` must be null or point to `count` buffers that are readable.
pub(crate) unsafe fn copy_chunks(chunks: *const EnvoyBuffer, count: usize) -> Vec<u8> {
    if chunks.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `count` entries at `chunks`.
    let entries = unsafe { std::slice::from_raw_parts(chunks, count) };
    let mut joined = Vec::new();
    for chunk in entries {
        // SAFETY: each buffer is readable (the caller's guarantee).
        joined.extend(unsafe { copy_buffer(chunk.ptr, chunk.length) });
    }
    joined
}
