//! Response cache (CONFIG.md `cache`, `cache_store`). Skeleton: lands with
//! the cache issue.

use crate::config::raw::RawCache;
use crate::config::ConfigError;

#[derive(Debug)]
pub struct CachePolicy {}

impl CachePolicy {
    pub fn compile(_raw: &RawCache, _path: &str) -> Result<CachePolicy, ConfigError> {
        Ok(CachePolicy {})
    }
}
