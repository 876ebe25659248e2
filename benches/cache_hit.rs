//! Native driver of the cache_hit hot path (placeholder; filled in by the perf work).
fn main() {}
