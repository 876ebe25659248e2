//! Native driver of the ratelimit hot path (placeholder; filled in by the perf work).
fn main() {}
