//! Root context: configuration, metrics definitions, timers.

use super::http::Stream;
use crate::breaker;
use crate::config::Config;
use crate::host::proxy_wasm::{self as adapter, ProxyWasmHost};
use crate::host::{Host, MetricId, MetricKind};
use crate::ratelimit::{self, Limiter};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

/// Everything a stream needs, immutable after `on_configure`.
pub struct Runtime {
    pub config: Config,
    pub limiter: Limiter,
    /// Per route: does any rate-limit key need the peer address?
    pub needs_peer_ip: Vec<bool>,
}

impl Runtime {
    pub fn new(host: &impl Host, mut config: Config) -> Runtime {
        let evictions = host
            .define_metric(MetricKind::Counter, "meshguard.ratelimit.evictions")
            .unwrap_or(MetricId::NONE);
        for r in config.routes.iter_mut() {
            ratelimit::define_metrics(host, &r.name, &mut r.rate_limits);
            if let Some(b) = r.breaker.as_mut() {
                b.metrics = breaker::BreakerMetrics::define(host, &r.name);
            }
        }
        let needs_peer_ip = config
            .routes
            .iter()
            .map(|r| {
                config.xff_trusted_hops > 0
                    || r.rate_limits
                        .iter()
                        .any(|l| l.key.contains(&ratelimit::KeyPart::ClientIp))
            })
            .collect();
        let limiter = Limiter {
            slots: config.max_rate_limit_keys,
            style: config.rate_limit_headers,
            xff_trusted_hops: config.xff_trusted_hops,
            evictions,
        };
        Runtime {
            config,
            limiter,
            needs_peer_ip,
        }
    }
}

/// The root context of one worker VM.
#[derive(Default)]
pub struct Root {
    runtime: Option<Rc<Runtime>>,
}

impl Root {
    pub fn new() -> Self {
        Root::default()
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        log::info!(
            "meshguard {} ({}) started",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_HASH
        );
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = adapter::plugin_configuration().unwrap_or_default();
        match Config::from_bytes(&bytes) {
            Ok(config) => {
                let routes = config.routes.len();
                self.runtime = Some(Rc::new(Runtime::new(&ProxyWasmHost, config)));
                log::info!("meshguard: configuration loaded ({routes} routes)");
                true
            }
            Err(e) => {
                log::error!("meshguard: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
