//! Native tests of the filter against the fake proxy (`host::fake_stream`).
