//! The benchmark's reference dynamic module (Envoy 1.40, ABI v0.2.0): the
//! same hook symbols as meshguard's native module (`src/native/mod.rs`),
//! every hook a no-op returning Continue. Its cost over passthrough is what
//! any dynamic module costs in Envoy (the per-stream filter object, the
//! calls across the ABI), the floor of the native module's rows.
//!
//! With the filter configuration `rl_floor` the request-headers hook also
//! does a rate limit's minimal work: read every request header through the
//! ABI (size, then the headers into a stack array), one atomic
//! compare-and-swap on a process-wide token count, and one counter
//! increment (`trivial.allowed`, defined when the configuration loads).
//! Any other configuration text: the no-op module.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    len: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    key_ptr: *const u8,
    key_len: usize,
    value_ptr: *const u8,
    value_len: usize,
}

const NULL_HEADER: Header = Header {
    key_ptr: std::ptr::null(),
    key_len: 0,
    value_ptr: std::ptr::null(),
    value_len: 0,
};

type Ptr = *mut c_void;

const CONTINUE: u32 = 0;
const REQUEST_HEADERS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: Ptr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: Ptr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: Ptr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: Ptr,
        header_type: u32,
        result: *mut Header,
    ) -> bool;
}

/// A configuration: whether to do the rate limit's work, and the counter.
struct Config {
    envoy: Ptr,
    rl_floor: bool,
    counter: usize,
}

/// The bucket `rl_floor` takes one token from per request (never empty:
/// the floor measures the work, not refusals).
static TOKENS: AtomicU64 = AtomicU64::new(u64::MAX);

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    c"v0.2.0".as_ptr().cast()
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: Ptr,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    let text = if config.ptr.is_null() {
        &[][..]
    } else {
        std::slice::from_raw_parts(config.ptr, config.len)
    };
    let rl_floor = text == b"rl_floor";
    let mut counter = 0usize;
    if rl_floor {
        let name = b"trivial.allowed";
        let r = envoy_dynamic_module_callback_http_filter_config_define_counter(
            config_envoy,
            Buffer {
                ptr: name.as_ptr(),
                len: name.len(),
            },
            std::ptr::null(),
            0,
            &mut counter,
        );
        if r != 0 {
            return std::ptr::null();
        }
    }
    Box::into_raw(Box::new(Config {
        envoy: config_envoy,
        rl_floor,
        counter,
    })) as *const c_void
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(p: *const c_void) {
    if !p.is_null() {
        drop(Box::from_raw(p as *mut Config));
    }
}

/// The stream's module pointer is the configuration's (nothing per stream).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    cfg: *const c_void,
    _filter: Ptr,
) -> *const c_void {
    cfg
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: Ptr,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let Some(cfg) = module.cast::<Config>().as_ref() else {
        return CONTINUE;
    };
    if !cfg.rl_floor {
        return CONTINUE;
    }
    // Every request header, as a rate limit matching its route reads them.
    let n = envoy_dynamic_module_callback_http_get_headers_size(filter, REQUEST_HEADERS);
    let mut hs = [NULL_HEADER; 64];
    let mut seen = 0usize;
    if n <= hs.len()
        && envoy_dynamic_module_callback_http_get_headers(filter, REQUEST_HEADERS, hs.as_mut_ptr())
    {
        for h in hs.iter().take(n) {
            seen = seen.wrapping_add(h.key_len + h.value_len);
        }
    }
    std::hint::black_box(seen);
    // One compare-and-swap: take a token.
    let mut cur = TOKENS.load(Ordering::Relaxed);
    while cur > 0 {
        match TOKENS.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break,
            Err(v) => cur = v,
        }
    }
    envoy_dynamic_module_callback_http_filter_config_increment_counter(
        cfg.envoy,
        cfg.counter,
        std::ptr::null(),
        0,
        1,
    );
    CONTINUE
}

macro_rules! noop {
    ($($name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty = $val:expr)?;)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            $($val)?
        }
    )*};
}

noop! {
    envoy_dynamic_module_on_http_filter_request_body(_f: Ptr, _m: *const c_void, _e: bool) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_request_trailers(_f: Ptr, _m: *const c_void) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_response_headers(_f: Ptr, _m: *const c_void, _e: bool) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_response_body(_f: Ptr, _m: *const c_void, _e: bool) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_response_trailers(_f: Ptr, _m: *const c_void) -> u32 = CONTINUE;
    envoy_dynamic_module_on_http_filter_stream_complete(_f: Ptr, _m: *const c_void);
    envoy_dynamic_module_on_http_filter_destroy(_m: *const c_void);
    envoy_dynamic_module_on_http_filter_scheduled(_f: Ptr, _m: *const c_void, _id: u64);
    envoy_dynamic_module_on_http_filter_http_callout_done(_f: Ptr, _m: *const c_void, _id: u64, _r: u32,
        _h: *const Header, _hl: usize, _b: *const Buffer, _bl: usize);
    envoy_dynamic_module_on_http_filter_config_scheduled(_c: Ptr, _m: *const c_void, _id: u64);
    envoy_dynamic_module_on_http_filter_config_http_callout_done(_c: Ptr, _m: *const c_void, _id: u64, _r: u32,
        _h: *const Header, _hl: usize, _b: *const Buffer, _bl: usize);
    envoy_dynamic_module_on_http_filter_http_stream_headers(_f: Ptr, _m: *const c_void, _id: u64,
        _h: *const Header, _hl: usize, _e: bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(_f: Ptr, _m: *const c_void, _id: u64,
        _d: *const Buffer, _dl: usize, _e: bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(_f: Ptr, _m: *const c_void, _id: u64,
        _t: *const Header, _tl: usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(_f: Ptr, _m: *const c_void, _id: u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(_f: Ptr, _m: *const c_void, _id: u64, _r: u32);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(_f: Ptr, _m: *const c_void);
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(_f: Ptr, _m: *const c_void);
}
