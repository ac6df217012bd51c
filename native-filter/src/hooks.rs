//! The event hooks Envoy resolves by name (`envoy_dynamic_module_on_*`): with `crate::abi`,
//! the binding, and the only other place `unsafe` is allowed. Each turns the raw
//! pointers it gets back into the module's objects and calls their safe methods:
//! the configuration's module pointer is a leaked `Box<Arc<Shared>>` (taken back in
//! `config_destroy`), a filter's is a leaked `Box<RequestFilter>` (taken back in
//! `filter_destroy`). Hooks that can run while another hook of the same filter is on the
//! stack (`stream_complete`, from a local reply) only take shared references: the filter's
//! state is in cells, never borrowed across a call into Envoy.
//!
//! Envoy requires every per-filter hook to exist; the ones this filter has no use for
//! (response side, watermarks, one-shot per-filter callouts) answer "continue" or do nothing.

#![allow(unsafe_code)]

use crate::abi::ffi::*;
use crate::abi::{
    copy_buffer, copy_chunks, copy_headers, CalloutAnswer, EnvoyConfig, EnvoyFilter, ABI_VERSION,
};
use crate::request::RequestFilter;
use crate::shared::Shared;
use std::ffi::c_char;
use std::sync::Arc;

/// The configuration behind a module pointer.
///
/// # Safety
/// `config` must be a pointer `config_new` returned and `config_destroy` has not taken back.
unsafe fn shared<'a>(config: ConfigModulePtr) -> Option<&'a Arc<Shared>> {
    // SAFETY: the caller's guarantee: a live `Box<Arc<Shared>>` (or null).
    unsafe { config.cast::<Arc<Shared>>().as_ref() }
}

/// The filter behind a module pointer.
///
/// # Safety
/// `filter` must be a pointer `filter_new` returned and `filter_destroy` has not taken back.
unsafe fn filter<'a>(filter: FilterModulePtr) -> Option<&'a RequestFilter> {
    // SAFETY: the caller's guarantee: a live `Box<RequestFilter>` (or null).
    unsafe { filter.cast::<RequestFilter>().as_ref() }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr()
}

/// # Safety
/// Called by Envoy (main thread) with its configuration pointer and two buffers valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    // SAFETY: Envoy's buffers are valid during this hook; copied now.
    let (name, config) = unsafe {
        (
            copy_buffer(name.ptr, name.length),
            copy_buffer(config.ptr, config.length),
        )
    };
    match crate::config::create(EnvoyConfig(config_envoy), &name, &config) {
        Some(shared) => Box::into_raw(Box::new(shared)).cast_const().cast(),
        None => std::ptr::null(),
    }
}

/// # Safety
/// Called once by Envoy with a pointer `config_new` returned, after every filter is gone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: ConfigModulePtr,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: the pointer came from `Box::into_raw` in `config_new` and is taken back once.
    let shared = unsafe { Box::from_raw(config.cast::<Arc<Shared>>().cast_mut()) };
    shared.stop();
}

/// # Safety
/// Called by Envoy on a worker thread with a live configuration pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    // SAFETY: Envoy passes the pointer `config_new` returned, alive while filters exist.
    let shared = unsafe { shared(config) }.cloned();
    let filter = RequestFilter::new(shared, EnvoyFilter(filter_envoy));
    Box::into_raw(Box::new(filter)).cast_const().cast()
}

/// # Safety
/// Called by Envoy with a live filter pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    match unsafe { filter(module) } {
        Some(filter) => filter.on_request_headers().raw(),
        None => HEADERS_STOP_ITERATION,
    }
}

/// # Safety
/// Called by Envoy with a live filter pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    match unsafe { filter(module) } {
        Some(filter) if filter.allowed() => BODY_CONTINUE,
        _ => BODY_STOP_ITERATION_AND_WATERMARK,
    }
}

/// # Safety
/// Called by Envoy with a live filter pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
) -> u32 {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    match unsafe { filter(module) } {
        Some(filter) if filter.allowed() => TRAILERS_CONTINUE,
        _ => TRAILERS_STOP_ITERATION,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    HEADERS_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    BODY_CONTINUE
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
) -> u32 {
    TRAILERS_CONTINUE
}

/// # Safety
/// Called by Envoy with a live filter pointer (possibly while another hook of the same
/// filter is on the stack: only a shared reference is taken).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
) {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    if let Some(filter) = unsafe { filter(module) } {
        filter.on_end();
    }
}

/// # Safety
/// Called once by Envoy with a pointer `filter_new` returned, never while another hook of the
/// filter runs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: FilterModulePtr) {
    if module.is_null() {
        return;
    }
    // SAFETY: the pointer came from `Box::into_raw` in `filter_new` and is taken back once.
    let filter = unsafe { Box::from_raw(module.cast::<RequestFilter>().cast_mut()) };
    filter.on_end();
}

/// One-shot per-filter callouts are not used (the Check call is a stream, to read trailers).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// # Safety
/// Called by Envoy with a live filter pointer and `count` headers valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    stream_id: u64,
    headers: *mut EnvoyHeader,
    count: usize,
    _end_stream: bool,
) {
    // SAFETY: Envoy's headers are valid during this hook; copied now. The filter pointer is live.
    let (headers, filter) = unsafe { (copy_headers(headers, count), filter(module)) };
    if let Some(filter) = filter {
        filter.on_stream_headers(stream_id, headers);
    }
}

/// # Safety
/// Called by Envoy with a live filter pointer and `count` buffers valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    stream_id: u64,
    data: *const EnvoyBuffer,
    count: usize,
    _end_stream: bool,
) {
    // SAFETY: Envoy's buffers are valid during this hook; copied now. The filter pointer is live.
    let (data, filter) = unsafe { (copy_chunks(data, count), filter(module)) };
    if let Some(filter) = filter {
        filter.on_stream_data(stream_id, &data);
    }
}

/// # Safety
/// Called by Envoy with a live filter pointer and `count` trailers valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    stream_id: u64,
    trailers: *mut EnvoyHeader,
    count: usize,
) {
    // SAFETY: Envoy's trailers are valid during this hook; copied now. The filter pointer is live.
    let (trailers, filter) = unsafe { (copy_headers(trailers, count), filter(module)) };
    if let Some(filter) = filter {
        filter.on_stream_trailers(stream_id, trailers);
    }
}

/// # Safety
/// Called by Envoy with a live filter pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    stream_id: u64,
) {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    if let Some(filter) = unsafe { filter(module) } {
        filter.on_stream_end(stream_id, true);
    }
}

/// # Safety
/// Called by Envoy with a live filter pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    stream_id: u64,
    _reason: u32,
) {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    if let Some(filter) = unsafe { filter(module) } {
        filter.on_stream_end(stream_id, false);
    }
}

/// # Safety
/// Called by Envoy on the filter's worker thread with a live filter pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: FilterEnvoyPtr,
    module: FilterModulePtr,
    _event_id: u64,
) {
    // SAFETY: a pointer `filter_new` returned, not yet destroyed.
    if let Some(filter) = unsafe { filter(module) } {
        filter.on_scheduled();
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _module: FilterModulePtr,
) {
}

/// # Safety
/// Called by Envoy on the main thread with a live configuration pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    event_id: u64,
) {
    // SAFETY: a pointer `config_new` returned, not yet destroyed.
    if let Some(shared) = unsafe { shared(config) } {
        shared.scheduled(event_id);
    }
}

/// # Safety
/// Called by Envoy on the main thread with a live configuration pointer, and headers and body
/// chunks valid for the call (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *mut EnvoyHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: Envoy's headers and chunks are valid during this hook; copied now.
    let answer = unsafe {
        CalloutAnswer {
            completed: result == CALLOUT_RESULT_SUCCESS,
            headers: copy_headers(headers, headers_size),
            body: copy_chunks(body_chunks, body_chunks_size),
        }
    };
    // SAFETY: a pointer `config_new` returned, not yet destroyed.
    if let Some(shared) = unsafe { shared(config) } {
        shared.callout_ended(callout_id, answer);
    }
}

/// # Safety
/// As for the per-filter stream hooks, on the main thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    headers: *mut EnvoyHeader,
    count: usize,
    _end_stream: bool,
) {
    // SAFETY: Envoy's headers are valid during this hook; the configuration pointer is live.
    let (headers, shared) = unsafe { (copy_headers(headers, count), shared(config)) };
    if let Some(shared) = shared {
        shared.stream_headers(stream_id, headers);
    }
}

/// # Safety
/// As for the per-filter stream hooks, on the main thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    data: *const EnvoyBuffer,
    count: usize,
    _end_stream: bool,
) {
    // SAFETY: Envoy's buffers are valid during this hook; the configuration pointer is live.
    let (data, shared) = unsafe { (copy_chunks(data, count), shared(config)) };
    if let Some(shared) = shared {
        shared.stream_data(stream_id, &data);
    }
}

/// # Safety
/// As for the per-filter stream hooks, on the main thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    trailers: *mut EnvoyHeader,
    count: usize,
) {
    // SAFETY: Envoy's trailers are valid during this hook; the configuration pointer is live.
    let (trailers, shared) = unsafe { (copy_headers(trailers, count), shared(config)) };
    if let Some(shared) = shared {
        shared.stream_trailers(stream_id, trailers);
    }
}

/// # Safety
/// As for the per-filter stream hooks, on the main thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
) {
    // SAFETY: a pointer `config_new` returned, not yet destroyed.
    if let Some(shared) = unsafe { shared(config) } {
        shared.stream_ended(stream_id, true);
    }
}

/// # Safety
/// As for the per-filter stream hooks, on the main thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    _reason: u32,
) {
    // SAFETY: a pointer `config_new` returned, not yet destroyed.
    if let Some(shared) = unsafe { shared(config) } {
        shared.stream_ended(stream_id, false);
    }
}
