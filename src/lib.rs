//! meshguard: a proxy-wasm filter for Envoy that protects services with four
//! policies configured by one JSON document: token-bucket rate limiting
//! exact across worker threads, JWT bearer verification, circuit breaking
//! with state shared by all workers, and an RFC 9111 response cache.
//!
//! Layout: `config` (the JSON contract), `host` (the port to Envoy),
//! `route` (matching), one folder per feature, and `filter` (the glue that
//! turns feature verdicts into proxy-wasm actions).

pub mod breaker;
pub mod cache;
pub mod config;
pub mod host;
pub mod jwt;
pub mod ratelimit;
pub mod request;
pub mod route;

#[cfg(target_os = "wasi")]
pub mod filter;

/// The git commit this module was built from (`unknown` outside a checkout).
pub const GIT_HASH: &str = env!("MESHGUARD_GIT_HASH");

#[cfg(target_os = "wasi")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    // A panic aborts the VM (panic = "abort"); say why before it does.
    std::panic::set_hook(Box::new(|info| log::error!("meshguard: panic: {info}")));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::Root::new(context_id))
    });
}}
