//! Circuit breaker (CONFIG.md `circuit_breaker`). Skeleton: lands with the
//! breaker issue.

use crate::config::raw::RawBreaker;
use crate::config::ConfigError;

#[derive(Debug)]
pub struct BreakerPolicy {}

impl BreakerPolicy {
    pub fn compile(_raw: &RawBreaker, _path: &str) -> Result<BreakerPolicy, ConfigError> {
        Ok(BreakerPolicy {})
    }
}
