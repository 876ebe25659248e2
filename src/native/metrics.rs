//! Metrics of a configuration, defined once on the main thread: Envoy
//! allows defining them only inside `envoy_dynamic_module_on_http_filter_config_new`
//! (it freezes metric creation after that hook). The filter layer defines
//! its metrics when a worker loads the configuration (`Runtime::new`), so
//! the same code runs here first with a host that records every name; a
//! worker's `define_metric` then finds the id by name.
//!
//! Names: Envoy puts a dynamic module's metrics under the filter's
//! `metrics_namespace` (default `dynamicmodulescustom`); with
//! `metrics_namespace: wasmcustom` the names in `/stats` are those of the
//! wasm build (`wasmcustom.meshguard.*`), and Prometheus output drops the
//! namespace in both (`docs/native.md`).

use super::abi::{self, ConfigEnvoyPtr, ModuleBuffer};
use super::host::encode_metric;
use crate::filter::runtime::Runtime;
use crate::host::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use crate::plan::Config;
use std::cell::RefCell;
use std::collections::HashMap;

struct Definer {
    envoy: ConfigEnvoyPtr,
    defined: RefCell<HashMap<String, MetricId>>,
}

impl Host for Definer {
    fn now_nanos(&self) -> u64 {
        super::host::wall_clock_nanos()
    }
    fn shared_get(&self, _key: &str) -> Result<SharedValue, HostError> {
        Ok((None, None))
    }
    fn shared_set(&self, _key: &str, _value: &[u8], _cas: Option<u32>) -> Result<(), SetError> {
        Ok(())
    }
    fn random_bytes(&self, _buf: &mut [u8]) -> Result<(), HostError> {
        Ok(())
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        if let Some(id) = self.defined.borrow().get(name) {
            return Ok(*id);
        }
        let mut envoy_id = 0usize;
        let define = match kind {
            MetricKind::Counter => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter
            }
            MetricKind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricKind::Histogram => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
        };
        // SAFETY: the configuration pointer Envoy gave the running hook;
        // the name is live for the call; Envoy writes one id.
        let r = unsafe {
            define(
                self.envoy,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null(),
                0,
                &mut envoy_id,
            )
        };
        if r != abi::METRICS_SUCCESS {
            return Err(HostError(format!("Envoy refused metric {name} ({r})")));
        }
        let id = encode_metric(kind, envoy_id);
        self.defined.borrow_mut().insert(name.to_owned(), id);
        Ok(id)
    }
    fn increment_metric(&self, _id: MetricId, _delta: i64) {}
    fn record_metric(&self, _id: MetricId, _value: u64) {}
}

/// Native only: panics the guard at the FFI edge caught (`guard.rs`),
/// counted per configuration.
pub const PANICS: &str = "meshguard.panics";

/// Defines every metric `config` uses; returns them by name.
pub fn define_all(envoy: ConfigEnvoyPtr, config: Config) -> HashMap<String, MetricId> {
    let d = Definer {
        envoy,
        defined: RefCell::new(HashMap::new()),
    };
    drop(Runtime::new(&d, config));
    let _ = d.define_metric(MetricKind::Counter, PANICS);
    d.defined.into_inner()
}
