//! See `targets/mod.rs`.
#[path = "../targets/mod.rs"]
mod targets;
pub use targets::*;
