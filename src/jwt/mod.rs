//! JWT bearer verification (CONFIG.md `jwt_providers` and route `jwt`).
//! Skeleton: providers and route references are validated; verification
//! lands with the JWT issue.

use crate::config::raw::{RawProvider, RawRouteJwt};
use crate::config::{show_str, ConfigError};
use std::collections::BTreeMap;

/// All configured providers, by name.
#[derive(Debug, Default)]
pub struct JwtProviders {
    pub names: Vec<String>,
}

impl JwtProviders {
    pub fn compile(raw: &BTreeMap<String, RawProvider>) -> Result<JwtProviders, ConfigError> {
        Ok(JwtProviders {
            names: raw.keys().cloned().collect(),
        })
    }
}

/// A route's JWT requirements.
#[derive(Debug)]
pub struct RouteJwt {
    pub providers: Vec<usize>,
    pub allow_missing: bool,
}

impl RouteJwt {
    pub fn compile(
        raw: &RawRouteJwt,
        providers: &JwtProviders,
        path: &str,
    ) -> Result<RouteJwt, ConfigError> {
        let mut idx = Vec::new();
        for (i, p) in raw.providers.iter().enumerate() {
            match providers.names.iter().position(|n| n == p) {
                Some(k) => idx.push(k),
                None => {
                    return Err(ConfigError::expected(
                        format!("{path}.providers[{i}]"),
                        "the name of a provider in jwt_providers",
                        show_str(p),
                    ))
                }
            }
        }
        Ok(RouteJwt {
            providers: idx,
            allow_missing: raw.allow_missing,
        })
    }
}
