//! ShouldRateLimit on limitador: each descriptor is checked on its own, in the
//! request's `domain` as limitador namespace.

use crate::grpc::{code, Status};
use crate::limits;
use crate::proto::{
    Code, DescriptorStatus, RateLimit, RateLimitDescriptor, RateLimitRequest, RateLimitResponse,
    Unit,
};
use limitador::counter::Counter;
use limitador::errors::LimitadorError;
use limitador::limit::{Limit, Namespace};
use limitador::reservation::ReservationLimits;
use limitador::storage::redis::AsyncRedisStorage;
use limitador::storage::AsyncStorage;
use limitador::{AsyncRateLimiter, AsyncRateLimiterBuilder, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest wait for one Redis round of one descriptor: a stopped or hung
/// Redis must turn into UNAVAILABLE quickly, never a hung call.
pub const STORAGE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

enum Storage {
    /// limitador's in-memory storage. Its check-and-update reads then writes,
    /// so calls are serialised here to make the count exact.
    Memory(Mutex<RateLimiter>),
    /// limitador's `AsyncRedisStorage`. Hits are taken with limitador's
    /// reservation script, which checks and holds in one atomic Lua call;
    /// limitador's `check_rate_limited_and_update` reads in one round trip and
    /// increments in another, so concurrent callers all pass the check.
    Redis(AsyncRateLimiter),
}

pub struct Service {
    storage: Storage,
    storage_name: String,
}

/// One descriptor's result from limitador.
struct Checked {
    limited: bool,
    /// The counters of the limits that matched, with `remaining` (after this
    /// hit when admitted, before it when limited) and `expires_in`.
    counters: Vec<Counter>,
}

impl Service {
    pub fn in_memory(limits: Vec<Limit>) -> Service {
        let limiter = RateLimiter::new(100_000);
        for limit in limits {
            limiter.add_limit(limit);
        }
        Service {
            storage: Storage::Memory(Mutex::new(limiter)),
            storage_name: "memory".to_string(),
        }
    }

    pub async fn redis(url: &str, limits: Vec<Limit>) -> Result<Service, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
        // Fail fast and recover fast: one connection attempt per try (the
        // default retries for seconds with backoff, and calls wait meanwhile);
        // a call that finds the connection lost starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(STORAGE_TIMEOUT);
        // At startup, wait a little for a Redis that is starting too.
        let deadline = Instant::now() + Duration::from_secs(5);
        let storage = loop {
            let attempt = async {
                let manager =
                    ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
                AsyncRedisStorage::new_with_conn_manager(manager).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(storage)) => break storage,
                Ok(Err(e)) if Instant::now() > deadline => return Err(format!("redis {url}: {e}")),
                Err(_) if Instant::now() > deadline => {
                    return Err(format!("redis {url}: no answer"))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        // A hit is a hold that lasts until the end of its counter's window
        // (limitador caps a hold there): the ttl ceiling must reach it.
        let reservation_limits = ReservationLimits {
            max_fraction: 1.0,
            max_ttl: Duration::from_secs(limits::longest_window(&limits)),
        };
        let limiter =
            AsyncRateLimiterBuilder::new(AsyncStorage::with_counter_storage(Box::new(storage)))
                .reservation_limits(reservation_limits)
                .build();
        for limit in limits {
            limiter.add_limit(limit);
        }
        Ok(Service {
            storage: Storage::Redis(limiter),
            storage_name: url.to_string(),
        })
    }

    pub fn storage_name(&self) -> &str {
        &self.storage_name
    }

    async fn check(
        &self,
        namespace: &Namespace,
        descriptor: &RateLimitDescriptor,
        delta: u64,
    ) -> Result<Checked, Status> {
        let entries: HashMap<String, String> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let ctx = limits::context_for(entries);
        match &self.storage {
            Storage::Memory(limiter) => {
                let limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
                let result = limiter
                    .check_rate_limited_and_update(namespace, &ctx, delta)
                    .map_err(limitador_status)?;
                Ok(Checked {
                    limited: result.limited,
                    counters: result.counters,
                })
            }
            Storage::Redis(limiter) => {
                let reserve = || limiter.reserve(namespace, &ctx, delta, None);
                let attempts = async {
                    match reserve().await {
                        // Nothing was sent, and the failed attempt started a
                        // new connection: if Redis is back, that one works.
                        Err(e) if connection_refused(&e) => {}
                        result => return result,
                    }
                    reserve().await
                };
                let result = tokio::time::timeout(STORAGE_TIMEOUT, attempts)
                    .await
                    .map_err(|_| {
                        Status::new(
                            code::UNAVAILABLE,
                            format!(
                                "redis {}: no answer within {} ms",
                                self.storage_name,
                                STORAGE_TIMEOUT.as_millis()
                            ),
                        )
                    })?
                    .map_err(limitador_status)?;
                Ok(Checked {
                    limited: result.limited,
                    counters: result.counters,
                })
            }
        }
    }

    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        if let Some(i) = request.descriptors.iter().position(|d| d.is_negative_hits) {
            return Err(Status::new(
                code::INVALID_ARGUMENT,
                format!("descriptors[{i}]: is_negative_hits is not supported"),
            ));
        }
        let namespace = Namespace::from(request.domain.as_str());
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            let delta = hits(request, descriptor);
            let checked = self.check(&namespace, descriptor, delta).await?;
            let status = descriptor_status(&checked, delta);
            if status.code == Code::OverLimit as i32 {
                overall = Code::OverLimit;
            }
            statuses.push(status);
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
        })
    }
}

/// The descriptor's `hits_addend` if set, else the request's if > 0, else 1.
pub fn hits(request: &RateLimitRequest, descriptor: &RateLimitDescriptor) -> u64 {
    match &descriptor.hits_addend {
        Some(h) => h.value,
        None if request.hits_addend > 0 => u64::from(request.hits_addend),
        None => 1,
    }
}

fn connection_refused(e: &LimitadorError) -> bool {
    use std::error::Error;
    match e {
        LimitadorError::StorageError(e) => e
            .source()
            .and_then(|s| s.downcast_ref::<redis::RedisError>())
            .is_some_and(redis::RedisError::is_connection_refusal),
        LimitadorError::InterpreterError(_) => false,
    }
}

fn limitador_status(e: LimitadorError) -> Status {
    match e {
        LimitadorError::StorageError(e) => Status::new(code::UNAVAILABLE, e.to_string()),
        LimitadorError::InterpreterError(e) => {
            Status::new(code::INTERNAL, format!("evaluating a limit: {e}"))
        }
    }
}

fn descriptor_status(checked: &Checked, delta: u64) -> DescriptorStatus {
    let remaining = |c: &Counter| c.remaining().unwrap_or_else(|| c.max_value());
    // When limited: the tightest counter among those this hit does not fit in.
    let over = |c: &&Counter| checked.limited && remaining(c) < delta;
    let candidates: Vec<&Counter> = if checked.counters.iter().any(|c| over(&c)) {
        checked.counters.iter().filter(over).collect()
    } else {
        checked.counters.iter().collect()
    };
    let code = if checked.limited {
        Code::OverLimit
    } else {
        Code::Ok
    };
    let Some(counter) = candidates
        .into_iter()
        .min_by_key(|c| (remaining(c), c.max_value()))
    else {
        return DescriptorStatus {
            code: code as i32,
            ..Default::default()
        };
    };
    let limit = counter.limit();
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: limit.name().unwrap_or_default().to_string(),
            requests_per_unit: u32::try_from(limit.max_value()).unwrap_or(u32::MAX),
            unit: Unit::from_seconds(limit.seconds()) as i32,
        }),
        limit_remaining: if checked.limited {
            0
        } else {
            u32::try_from(remaining(counter)).unwrap_or(u32::MAX)
        },
        duration_until_reset: counter.expires_in().map(Into::into),
    }
}

/// `domain=d [{k=v,k=v}+hits, ...]` for the log.
pub fn describe_request(request: &RateLimitRequest) -> String {
    let mut out = format!("domain={:?} [", request.domain);
    for (i, d) in request.descriptors.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('{');
        for (j, e) in d.entries.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}={}", e.key, e.value);
        }
        let _ = write!(out, "}}+{}", hits(request, d));
        if let Some(o) = &d.limit {
            let _ = write!(
                out,
                " (override {}/unit {} ignored)",
                o.requests_per_unit, o.unit
            );
        }
    }
    out.push(']');
    out
}

/// `OVER_LIMIT [OK name 2/5 left reset 59.1s, OVER_LIMIT ..., OK no limit]`
pub fn describe_response(response: &RateLimitResponse) -> String {
    let name = |code: i32| match Code::try_from(code) {
        Ok(Code::Ok) => "OK",
        Ok(Code::OverLimit) => "OVER_LIMIT",
        _ => "UNKNOWN",
    };
    let mut out = format!("{} [", name(response.overall_code));
    for (i, s) in response.statuses.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name(s.code));
        match &s.current_limit {
            None => out.push_str(" no limit"),
            Some(l) => {
                let _ = write!(
                    out,
                    " {:?} {}/{} left",
                    l.name, s.limit_remaining, l.requests_per_unit
                );
                if let Some(d) = &s.duration_until_reset {
                    let _ = write!(out, " reset {:.1}s", d.as_secs_f64());
                }
            }
        }
    }
    out.push(']');
    out
}
