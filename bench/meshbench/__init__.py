"""meshguard's benchmark as a package, one job per module (bench/bench.py runs it):

- common: paths, constants, the error, the log line
- tools: wrk / h2load / cryptography / the trivial filter / the release rate
  limit service, installed or built when missing; the machine's description
- procs: CPU pinning, the Envoys (tests/e2e/harness.py `EnvoyProcess`, the
  wrapper the e2e tests use), the rate limit service, every process started
- bootstraps: the upstream's and the proxies' Envoy bootstraps, the filters
- tokens: distinct signed tokens
- drive: wrk and h2load, started and parsed
- scenarios: the scenarios, their probes, the head-to-head comparisons
- run: measured runs (twins), the rounds, the memory measurement
- stats: medians, overheads, the targets
- render: results.md and the latest-run block
- docblock: rewriting that block in docs/performance.md
- cli: the command line (main)
"""
