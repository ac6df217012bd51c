//! An in-process fake of the proxy-wasm host, so the filter's real request handling (the
//! `proxy_on_*` entry points of the SDK, our `abi.rs` bindings, the worker) runs natively under
//! the fuzzer. It models what a request touches: the request header map (as raw bytes, any
//! byte a client could send), the plugin configuration, properties, shared data, the clock,
//! local responses and dispatched calls; every other host call answers InternalFailure, which
//! the filter must also survive.
#![allow(clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::collections::HashMap;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;
const INTERNAL_FAILURE: u32 = 10;

#[derive(Default)]
pub struct Host {
    pub config: Vec<u8>,
    pub request: Vec<(Vec<u8>, Vec<u8>)>,
    pub shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub responded: Option<u32>,
    pub next_token: u32,
}

thread_local! {
    pub static HOST: RefCell<Host> = RefCell::new(Host::default());
}

fn slice<'a>(data: *const u8, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        return &[];
    }
    // SAFETY: the guest passes a pointer and length of memory it owns for the call.
    unsafe { std::slice::from_raw_parts(data, size) }
}

/// Hands `bytes` to the guest as the SDK's allocator would (a boxed slice it frees).
fn give(bytes: &[u8], data: *mut *mut u8, size: *mut usize) -> u32 {
    let boxed: Box<[u8]> = bytes.to_vec().into_boxed_slice();
    let len = boxed.len();
    // SAFETY: out-pointers from the guest, valid for the call.
    unsafe {
        *data = if len == 0 { std::ptr::null_mut() } else { Box::into_raw(boxed) as *mut u8 };
        *size = len;
    }
    OK
}

fn encode_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[no_mangle]
pub extern "C" fn proxy_log(_level: u32, _data: *const u8, _size: usize) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_log_level(level: *mut u32) -> u32 {
    // SAFETY: out-pointer from the guest.
    unsafe { *level = 0 };
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32 {
    // SAFETY: out-pointer from the guest.
    unsafe { *time = 1_700_000_000_000_000_000 };
    OK
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(_period: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_buffer_bytes(kind: u32, _start: usize, _max: usize, data: *mut *mut u8, size: *mut usize) -> u32 {
    if kind != 7 {
        return NOT_FOUND;
    }
    HOST.with(|h| give(&h.borrow().config, data, size))
}

#[no_mangle]
pub extern "C" fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32 {
    if map != 0 {
        return NOT_FOUND;
    }
    HOST.with(|h| give(&encode_map(&h.borrow().request), data, size))
}

#[no_mangle]
pub extern "C" fn proxy_get_header_map_value(map: u32, key: *const u8, key_size: usize, data: *mut *mut u8, size: *mut usize) -> u32 {
    if map != 0 {
        return NOT_FOUND;
    }
    let key = slice(key, key_size).to_vec();
    HOST.with(|h| match h.borrow().request.iter().find(|(k, _)| *k == key) {
        Some((_, v)) => give(v, data, size),
        None => NOT_FOUND,
    })
}

#[no_mangle]
pub extern "C" fn proxy_replace_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32 {
    if map != 0 {
        return INTERNAL_FAILURE;
    }
    let (key, value) = (slice(key, key_size).to_vec(), slice(value, value_size).to_vec());
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.request.retain(|(k, _)| *k != key);
        h.request.push((key, value));
    });
    OK
}

#[no_mangle]
pub extern "C" fn proxy_add_header_map_value(map: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32 {
    if map != 0 {
        return INTERNAL_FAILURE;
    }
    let (key, value) = (slice(key, key_size).to_vec(), slice(value, value_size).to_vec());
    HOST.with(|h| h.borrow_mut().request.push((key, value)));
    OK
}

#[no_mangle]
pub extern "C" fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32 {
    if map != 0 {
        return INTERNAL_FAILURE;
    }
    let key = slice(key, key_size).to_vec();
    HOST.with(|h| h.borrow_mut().request.retain(|(k, _)| *k != key));
    OK
}

#[no_mangle]
pub extern "C" fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32 {
    match slice(path, path_size) {
        b"source\0address\0" => give(b"10.0.0.1:4321", data, size),
        b"request\0protocol\0" => give(b"HTTP/1.1", data, size),
        _ => NOT_FOUND,
    }
}

#[no_mangle]
pub extern "C" fn proxy_get_shared_data(key: *const u8, key_size: usize, data: *mut *mut u8, size: *mut usize, cas: *mut u32) -> u32 {
    let key = slice(key, key_size).to_vec();
    HOST.with(|h| match h.borrow().shared.get(&key) {
        Some((value, version)) => {
            // SAFETY: out-pointer from the guest.
            unsafe { *cas = *version };
            give(value, data, size)
        }
        None => NOT_FOUND,
    })
}

#[no_mangle]
pub extern "C" fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32 {
    let (key, value) = (slice(key, key_size).to_vec(), slice(value, value_size).to_vec());
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        let current = h.shared.get(&key).map(|(_, v)| *v).unwrap_or(0);
        if cas != 0 && cas != current {
            return CAS_MISMATCH;
        }
        h.shared.insert(key, (value, current + 1));
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_send_local_response(status: u32, _d: *const u8, _ds: usize, _b: *const u8, _bs: usize, _h: *const u8, _hs: usize, _g: i32) -> u32 {
    HOST.with(|h| h.borrow_mut().responded = Some(status));
    OK
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(_stream: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(_context: u32) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_define_metric(_kind: u32, _name: *const u8, _size: usize, id: *mut u32) -> u32 {
    // SAFETY: out-pointer from the guest.
    unsafe { *id = 1 };
    OK
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(_id: u32, _offset: i64) -> u32 {
    OK
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(_id: u32, _value: u64) -> u32 {
    OK
}

fn next_token(token: *mut u32) -> u32 {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.next_token += 1;
        // SAFETY: out-pointer from the guest.
        unsafe { *token = h.next_token };
    });
    OK
}

#[no_mangle]
pub extern "C" fn proxy_http_call(_u: *const u8, _us: usize, _h: *const u8, _hs: usize, _b: *const u8, _bs: usize, _t: *const u8, _ts: usize, _timeout: u32, token: *mut u32) -> u32 {
    next_token(token)
}

#[no_mangle]
pub extern "C" fn proxy_grpc_call(_u: *const u8, _us: usize, _s: *const u8, _ss: usize, _m: *const u8, _ms: usize, _i: *const u8, _is: usize, _d: *const u8, _ds: usize, _timeout: u32, token: *mut u32) -> u32 {
    next_token(token)
}

// Every other host call fails.
#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(_function_name_data: *const u8, _function_name_size: usize, _arguments_data: *const u8, _arguments_size: usize, _results_data: *mut *mut u8, _results_size: *mut usize,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream_type: u32) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_dequeue_shared_queue(_queue_id: u32, _return_value_data: *mut *mut u8, _return_value_size: *mut usize,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_done() -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_enqueue_shared_queue(_queue_id: u32, _value_data: *const u8, _value_size: usize,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_get_metric(_metric_id: u32, _return_value: *mut u64) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_get_status(_return_code: *mut u32, _return_message_data: *mut *mut u8, _return_message_size: *mut usize,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_grpc_cancel(_token_id: u32) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_grpc_close(_token_id: u32) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_grpc_send(_token: u32, _message_ptr: *const u8, _message_len: usize, _end_stream: bool,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_grpc_stream(_upstream_data: *const u8, _upstream_size: usize, _service_name_data: *const u8, _service_name_size: usize, _method_name_data: *const u8, _method_name_size: usize, _initial_metadata_data: *const u8, _initial_metadata_size: usize, _return_stream_id: *mut u32,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_register_shared_queue(_name_data: *const u8, _name_size: usize, _return_id: *mut u32,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_resolve_shared_queue(_vm_id_data: *const u8, _vm_id_size: usize, _name_data: *const u8, _name_size: usize, _return_id: *mut u32,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_set_buffer_bytes(_buffer_type: u32, _start: usize, _size: usize, _buffer_data: *const u8, _buffer_size: usize,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_set_header_map_pairs(_map_type: u32, _map_data: *const u8, _map_size: usize,) -> u32 {
    INTERNAL_FAILURE
}

#[no_mangle]
pub extern "C" fn proxy_set_property(_path_data: *const u8, _path_size: usize, _value_data: *const u8, _value_size: usize,) -> u32 {
    INTERNAL_FAILURE
}
