//! A configuration Envoy handed over to the module.

use super::abi::ConfigEnvoyPtr;
use crate::host::MetricId;
use std::collections::HashMap;

/// A configuration Envoy handed over (one per filter configuration).
pub struct ModuleConfig {
    /// Unique in the process (keys the workers' roots).
    pub(crate) id: u64,
    pub(crate) envoy: usize,
    pub(crate) bytes: Vec<u8>,
    /// Every metric the configuration uses, defined on the main thread.
    pub metrics: HashMap<String, MetricId>,
    /// The main-thread tick of a configuration with remote keys (held for
    /// its `Drop`: the scheduler is deleted with the configuration).
    pub(crate) _ticker: Option<super::timer::ConfigTicker>,
}

impl ModuleConfig {
    pub fn envoy(&self) -> ConfigEnvoyPtr {
        self.envoy as ConfigEnvoyPtr
    }
}
