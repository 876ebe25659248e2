//! Wakers: one Envoy scheduler per waiting stream, committed every 10 ms by
//! one process-wide thread (see "Timers" in `mod.rs`). A scheduler's commit
//! is safe from any thread; it is unregistered (under the lock the thread
//! commits under) before it is deleted, so no commit reaches a deleted one.
//!
//! Relays: one configuration scheduler per configuration with a rate limit
//! service, committed by a worker that queued a call for the main thread
//! (`callout.rs`, "Which call goes where"), with [`RELAY_EVENT`]. Deleted
//! under the same kind of lock.

use super::abi::{self, FilterEnvoyPtr};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// The period of the wakers (the wasm build's fast tick).
pub const PERIOD: Duration = Duration::from_millis(10);

/// The period of the configurations' main-thread tick (the wasm build's
/// `SLOW_TICK`: JWKS refresh polls), in waker periods.
const CONFIG_EVERY: u32 = 50;

static SCHEDULERS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static CONFIG_SCHEDULERS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static START: Once = Once::new();
/// The relay schedulers: (configuration id, scheduler).
static RELAYS: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());

/// The event id of the configurations' 500 ms tick.
pub const TICK_EVENT: u64 = 1;
/// The event id of a relay: calls are queued for the main thread.
pub const RELAY_EVENT: u64 = 2;

fn run() {
    let mut n: u32 = 0;
    loop {
        std::thread::sleep(PERIOD);
        n = n.wrapping_add(1);
        {
            let list = SCHEDULERS.lock().unwrap_or_else(|e| e.into_inner());
            for s in list.iter() {
                // SAFETY: registered schedulers are live (see the module docs).
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                        *s as abi::SchedulerPtr,
                        1,
                    )
                };
            }
        }
        if n % CONFIG_EVERY == 0 {
            let list = CONFIG_SCHEDULERS.lock().unwrap_or_else(|e| e.into_inner());
            for s in list.iter() {
                // SAFETY: as above.
                unsafe {
                    abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                        *s as abi::SchedulerPtr,
                        TICK_EVENT,
                    )
                };
            }
        }
    }
}

fn start() {
    START.call_once(|| {
        if let Err(e) = std::thread::Builder::new()
            .name("meshguard-timer".into())
            .spawn(run)
        {
            log::error!("meshguard: the timer thread could not start: {e}");
        }
    });
}

/// A configuration's scheduler: its main-thread tick every 500 ms.
pub struct ConfigTicker {
    scheduler: usize,
}

impl ConfigTicker {
    pub fn new(config: abi::ConfigEnvoyPtr) -> Option<ConfigTicker> {
        // SAFETY: the configuration pointer of the running hook.
        let s =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        if s.is_null() {
            return None;
        }
        start();
        CONFIG_SCHEDULERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s as usize);
        Some(ConfigTicker {
            scheduler: s as usize,
        })
    }
}

impl Drop for ConfigTicker {
    fn drop(&mut self) {
        CONFIG_SCHEDULERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s != self.scheduler);
        // SAFETY: ours, no longer reachable by the timer thread.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                self.scheduler as abi::SchedulerPtr,
            )
        };
    }
}

/// A stream's scheduler, registered with the timer thread while it lives.
pub struct Waker {
    scheduler: usize,
}

impl Waker {
    pub fn new(filter: FilterEnvoyPtr) -> Option<Waker> {
        if filter.is_null() {
            return None;
        }
        // SAFETY: the live filter of the running hook.
        let s = unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(filter) };
        if s.is_null() {
            return None;
        }
        start();
        SCHEDULERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s as usize);
        Some(Waker {
            scheduler: s as usize,
        })
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        SCHEDULERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s != self.scheduler);
        // SAFETY: ours, no longer reachable by the timer thread.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(
                self.scheduler as abi::SchedulerPtr,
            )
        };
    }
}

/// Gives configuration `cfg` a relay scheduler (on the main thread, in its
/// `config_new` hook).
pub fn relay_register(cfg: u64, config: abi::ConfigEnvoyPtr) -> bool {
    // SAFETY: the configuration pointer of the running hook.
    let s = unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
    if s.is_null() {
        return false;
    }
    RELAYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((cfg, s as usize));
    true
}

/// Deletes the relay scheduler of `cfg` (its configuration is destroyed).
pub fn relay_unregister(cfg: u64) {
    let gone: Vec<usize> = {
        let mut relays = RELAYS.lock().unwrap_or_else(|e| e.into_inner());
        let gone = relays
            .iter()
            .filter(|(c, _)| *c == cfg)
            .map(|(_, s)| *s)
            .collect();
        relays.retain(|(c, _)| *c != cfg);
        gone
    };
    for s in gone {
        // SAFETY: ours, no longer reachable by a commit (taken out under
        // the lock commits hold).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                s as abi::SchedulerPtr,
            )
        };
    }
}

/// Wakes the main thread for `cfg`'s relayed calls (from any thread);
/// false when `cfg` has no relay scheduler.
pub fn relay_commit(cfg: u64) -> bool {
    let relays = RELAYS.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_, s)) = relays.iter().find(|(c, _)| *c == cfg) else {
        return false;
    };
    // SAFETY: registered schedulers are live (see the module docs).
    unsafe {
        abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
            *s as abi::SchedulerPtr,
            RELAY_EVENT,
        )
    };
    true
}

/// Whether `cfg` has a relay scheduler.
pub fn has_relay(cfg: u64) -> bool {
    RELAYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(c, _)| *c == cfg)
}

/// Wakes every waiting stream now (their workers tick): after the main
/// thread recorded a lease answer that they may wait for.
pub fn wake_all() {
    let list = SCHEDULERS.lock().unwrap_or_else(|e| e.into_inner());
    for s in list.iter() {
        // SAFETY: registered schedulers are live (see the module docs).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                *s as abi::SchedulerPtr,
                1,
            )
        };
    }
}
