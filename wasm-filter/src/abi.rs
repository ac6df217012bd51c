//! The proxy-wasm ABI calls this filter makes, bound by hand so that none of them can panic.
//!
//! The SDK's wrappers (`proxy_wasm::hostcalls`, 0.2.5) panic on any status they did not
//! expect and unwrap `String::from_utf8` on header maps, so one header value that is not UTF-8
//! (`x-junk: \xff`) used to abort the VM. Here every call returns the raw status, bytes stay
//! bytes, and the serialized header map is decoded with bounds checks. Decoding text is the
//! caller's business (the `host` module).
//!
//! What stays with the SDK: its entry points (`proxy_on_*`, context dispatch) and the two
//! calls whose tokens its dispatcher must register (`dispatch_http_call`, `dispatch_grpc_call`;
//! their unexpected-status arms are covered by the hostile-input e2e tests).
//!
//! Every `unsafe` block is an FFI call into the host or takes ownership of memory the host
//! allocated through the SDK's `proxy_on_memory_allocate` (a `Vec<u8>` allocation of exactly
//! the returned size).
#![allow(unsafe_code)]

use proxy_wasm::types::{BufferType, MapType};
use std::ptr::null_mut;

/// A host status other than OK (`proxy_wasm::types::Status` numbering).
pub type HostStatus = u32;

/// Header pairs as bytes.
pub type RawHeaders = Vec<(Vec<u8>, Vec<u8>)>;

pub const STATUS_OK: u32 = 0;
pub const STATUS_NOT_FOUND: u32 = 1;
pub const STATUS_CAS_MISMATCH: u32 = 8;

extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_resolve_shared_queue(
        vm_id_data: *const u8,
        vm_id_size: usize,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
}

fn ok(status: u32) -> Result<(), HostStatus> {
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Takes ownership of a host-returned buffer (`None` for a null pointer).
fn take_buffer(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host allocated `size` bytes at `data` through `proxy_on_memory_allocate`,
    // which the SDK implements as a `Vec<u8>` with capacity `size`, leaked to the host; the
    // host hands that ownership back with the pointer, and nothing else refers to it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A call that returns one host-allocated buffer; `NotFound` is `Ok(None)`.
fn returned_bytes(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        STATUS_OK => Ok(take_buffer(data, size)),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

pub fn log(level: u32, message: &str) -> Result<(), HostStatus> {
    // SAFETY: pointer and length describe `message`, which outlives the call.
    ok(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// The host's log level (`proxy_wasm::types::LogLevel` numbering: 0 trace … 5 critical).
pub fn log_level() -> Result<u32, HostStatus> {
    let mut level = 0u32;
    // SAFETY: `level` is a valid, writable u32 for the duration of the call.
    ok(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(level)
}

pub fn current_time_nanos() -> Result<u64, HostStatus> {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a valid, writable u64 for the duration of the call.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostStatus> {
    // SAFETY: plain value argument.
    ok(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostStatus> {
    returned_bytes(|data, size| {
        // SAFETY: `data` and `size` point at locals of `returned_bytes`, writable for the call.
        unsafe { proxy_get_buffer_bytes(kind as u32, start, max, data, size) }
    })
}

/// Every pair of a header map, as bytes (names and values are not assumed to be UTF-8).
pub fn header_map(map: MapType) -> Result<RawHeaders, HostStatus> {
    let bytes = returned_bytes(|data, size| {
        // SAFETY: `data` and `size` point at locals of `returned_bytes`, writable for the call.
        unsafe { proxy_get_header_map_pairs(map as u32, data, size) }
    })?;
    Ok(bytes.map(|b| decode_header_map(&b)).unwrap_or_default())
}

/// One header's value, as bytes.
pub fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostStatus> {
    returned_bytes(|data, size| {
        // SAFETY: `name` outlives the call; `data`/`size` are writable locals.
        unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size) }
    })
}

pub fn replace_header(map: MapType, name: &str, value: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: both slices outlive the call.
    ok(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: `name` outlives the call.
    ok(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property (path segments joined by NUL, as the ABI wants), as bytes.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut encoded = Vec::new();
    for segment in path {
        encoded.extend_from_slice(segment.as_bytes());
        encoded.push(0);
    }
    returned_bytes(|data, size| {
        // SAFETY: `encoded` outlives the call; `data`/`size` are writable locals.
        unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), data, size) }
    })
}

/// A shared-data value and its CAS token (`(None, None)` when absent).
pub fn shared_get(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: `key` outlives the call; the out-pointers are writable locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        STATUS_OK => Ok((take_buffer(data, size), Some(cas))),
        STATUS_NOT_FOUND => Ok((None, None)),
        other => Err(other),
    }
}

pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostStatus> {
    // SAFETY: both slices outlive the call.
    ok(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Registers (or opens again) this VM's queue `name`; its root context is told when something
/// arrives (`on_queue_ready`).
pub fn register_queue(name: &str) -> Result<u32, HostStatus> {
    let mut id: u32 = 0;
    // SAFETY: `name` outlives the call; the out-pointer is a writable local.
    ok(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// The queue `name` some VM of this VM's id registered; `None` when there is none.
pub fn resolve_queue(name: &str) -> Result<Option<u32>, HostStatus> {
    let mut id: u32 = 0;
    // SAFETY: both slices outlive the call (an empty VM id means this VM's); the out-pointer
    // is a writable local.
    let status =
        unsafe { proxy_resolve_shared_queue(b"".as_ptr(), 0, name.as_ptr(), name.len(), &mut id) };
    match status {
        STATUS_OK => Ok(Some(id)),
        STATUS_NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

/// The oldest message of queue `id`; `None` when it is empty (`Empty`, status 7) or gone.
pub fn dequeue(id: u32) -> Result<Option<Vec<u8>>, HostStatus> {
    const STATUS_EMPTY: u32 = 7;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the out-pointers are writable locals; a returned buffer is taken over once.
    match unsafe { proxy_dequeue_shared_queue(id, &mut data, &mut size) } {
        STATUS_OK => Ok(Some(take_buffer(data, size).unwrap_or_default())),
        STATUS_EMPTY | STATUS_NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

pub fn enqueue(id: u32, message: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: `message` outlives the call.
    ok(unsafe { proxy_enqueue_shared_queue(id, message.as_ptr(), message.len()) })
}

pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostStatus> {
    let headers = encode_header_map(headers);
    // SAFETY: every slice outlives the call; an empty details string is allowed.
    ok(unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Resumes the current HTTP request (stream type 0: request).
pub fn resume_request() -> Result<(), HostStatus> {
    // SAFETY: plain value argument.
    ok(unsafe { proxy_continue_stream(0) })
}

pub fn set_effective_context(context_id: u32) -> Result<(), HostStatus> {
    // SAFETY: plain value argument.
    ok(unsafe { proxy_set_effective_context(context_id) })
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, HostStatus> {
    let mut id = 0u32;
    // SAFETY: `name` outlives the call; `id` is a writable local.
    ok(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostStatus> {
    // SAFETY: plain value arguments.
    ok(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: plain value arguments.
    ok(unsafe { proxy_record_metric(id, value) })
}

/// Decodes the ABI's serialized header map: `count: u32`, then `count` pairs of
/// `(name_len: u32, value_len: u32)`, then each name and value followed by a NUL. A map that
/// is cut short yields the pairs read so far.
pub fn decode_header_map(bytes: &[u8]) -> RawHeaders {
    let read_u32 = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let Some(count) = read_u32(0) else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    let Some(mut cursor) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return pairs;
    };
    for i in 0..count {
        let sizes = (|| {
            let at = 4 + i.checked_mul(8)?;
            Some((read_u32(at)?, read_u32(at.checked_add(4)?)?))
        })();
        let Some((name_len, value_len)) = sizes else {
            break;
        };
        let name = cursor
            .checked_add(name_len)
            .and_then(|end| bytes.get(cursor..end));
        let Some(name) = name else { break };
        cursor += name_len + 1;
        let value = cursor
            .checked_add(value_len)
            .and_then(|end| bytes.get(cursor..end));
        let Some(value) = value else { break };
        cursor += value_len + 1;
        pairs.push((name.to_vec(), value.to_vec()));
    }
    pairs
}

/// Serializes headers in the ABI's map format (the inverse of [`decode_header_map`]).
pub fn encode_header_map(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    let count = u32::try_from(headers.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in headers {
        for len in [name.len(), value.len()] {
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        }
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_and_keep_raw_bytes() {
        let encoded = encode_header_map(&[(":path", "/x"), ("x-a", "")]);
        let decoded = decode_header_map(&encoded);
        assert_eq!(
            decoded,
            vec![
                (b":path".to_vec(), b"/x".to_vec()),
                (b"x-a".to_vec(), Vec::new())
            ]
        );
        // A value that is not UTF-8 comes back as the same bytes.
        let mut raw = encode_header_map(&[("x-junk", "ab")]);
        let at = raw.len() - 3;
        raw[at] = 0xff;
        assert_eq!(
            decode_header_map(&raw),
            vec![(b"x-junk".to_vec(), vec![0xff, b'b'])]
        );
    }

    #[test]
    fn truncated_or_lying_maps_never_panic() {
        let encoded = encode_header_map(&[("a", "b"), ("c", "d")]);
        for cut in 0..encoded.len() {
            let _ = decode_header_map(&encoded[..cut]);
        }
        let mut lying = encoded.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let _ = decode_header_map(&lying);
        let mut huge = encoded;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header_map(&huge).is_empty());
    }
}
