#!/usr/bin/env python3
"""meshguard soak: one real Envoy (--concurrency 2) loading meshguard, mixed
traffic through all four policies for SOAK_SECONDS, with periodic hot
reloads (file-based ECDS, as Istio's WasmPlugin), JWKS key rotation at a remote IdP, and an
upstream that flaps. Loopback only.

Prints, every SAMPLE_SECONDS, the proxy's RSS, the requests and outcomes so
far; at the end a summary (also written as JSON to SOAK_REPORT, default
target/soak/report.json). Exits non-zero when:

- any Envoy log line shows a wasm trap or a Rust panic, or the V8 VM count
  changed (a trapped VM is replaced);
- any request a policy should have admitted was refused (a valid token
  answered 401, a never-limited key answered 429, the breaker open long
  after the upstream recovered, a cache answer whose body is not the one of
  its URL and Vary value);
- the rate limits are no longer exact (each exactness probe: a fresh key of
  capacity 5 gets exactly 5 of 8 requests admitted);
- the RSS is still growing after warm-up: the least-squares slope of the
  RSS samples after the first WARMUP_FRACTION of the run (at least 120 s)
  is above RSS_SLOPE_KIB_PER_MIN (default 64 KiB/min, i.e. < 4 MiB/h,
  documented in docs/operations.md, "Soak"); runs shorter than
  300 s are too short to judge and only report it;
- transport errors (connection refused/reset, no answer) exceed
  MAX_TRANSPORT_ERRORS (default 0).

Environment: ENVOY_BIN, MESHGUARD_WASM (as the e2e suite), SOAK_SECONDS
(default 600), SOAK_RATE (requests/s, default 150), SAMPLE_SECONDS (default 10), RELOAD_SECONDS (default 30),
ROTATE_SECONDS (default 90), FLAP_SECONDS (default 40), LOAD_THREADS (2).
"""

import argparse
import http.client
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import harness  # noqa: E402
import vmcheck  # noqa: E402
from jwt_support import JwksServer, b64u, claims, mint_hs  # noqa: E402


def env_num(name, default):
    return float(os.environ.get(name, default))


SOAK_SECONDS = env_num("SOAK_SECONDS", 600)
SAMPLE_SECONDS = env_num("SAMPLE_SECONDS", 10)
RELOAD_SECONDS = env_num("RELOAD_SECONDS", 30)
ROTATE_SECONDS = env_num("ROTATE_SECONDS", 90)
FLAP_SECONDS = env_num("FLAP_SECONDS", 40)
LOAD_THREADS = int(env_num("LOAD_THREADS", 2))
# Requests per second, all load threads together (the machine is shared).
RATE = env_num("SOAK_RATE", 150)
WARMUP_FRACTION = env_num("WARMUP_FRACTION", 0.25)
RSS_SLOPE_KIB_PER_MIN = env_num("RSS_SLOPE_KIB_PER_MIN", 64)
MAX_TRANSPORT_ERRORS = int(env_num("MAX_TRANSPORT_ERRORS", 0))
REPORT = os.environ.get("SOAK_REPORT", os.path.join(ROOT, "target", "soak", "report.json"))

# The breaker: 3 failures open it for 1 s, doubling up to 4 s (+10% jitter).
# After the upstream recovers, a probe is let through within that time, so
# an open breaker 7 s after recovery is a wrong refusal.
BREAKER_GRACE_S = 7.0
# The upstream of /flaky answers 503 for the first FLAP_DOWN_S of every
# FLAP_SECONDS.
FLAP_DOWN_S = 10.0
EXACT_CAPACITY = 5


def config(generation):
    routes = [
        {"name": "jwt", "match": {"path_prefix": "/jwt/"},
         "jwt": {"providers": ["idp"]},
         "rate_limit": [{"name": "per-user", "key": [{"claim": "sub"}], "capacity": 1000000,
                         "refill_tokens": 1000000, "refill_interval": "1s"}]},
        {"name": "open", "match": {"path_prefix": "/open/"},
         "rate_limit": [{"name": "per-client", "key": [{"header": "x-client"}],
                         "capacity": 1000000, "refill_tokens": 1000000, "refill_interval": "1s"}]},
        {"name": "exact", "match": {"path_prefix": "/exact/"},
         "rate_limit": [{"name": "per-client", "key": [{"header": "x-client"}],
                         "capacity": EXACT_CAPACITY, "refill_tokens": 1, "refill_interval": "1h"}]},
        {"name": "flaky", "match": {"path_prefix": "/flaky/"},
         "circuit_breaker": {"consecutive_failures": 3, "open_duration": "1s",
                             "max_open_duration": "4s"}},
        {"name": "cache", "match": {"path_prefix": "/cache/"},
         "cache": {"methods": ["GET"], "vary_allowlist": ["accept"]}},
        # Changes on every reload: the other routes are unchanged, so their
        # state (buckets, breaker) must survive it.
        {"name": f"gen{generation}", "match": {"path_prefix": f"/gen{generation}/"}},
    ]
    return {
        "jwt_providers": {"idp": {
            "issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["HS256"],
            "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json", "cache_duration": "20s"}}}},
        "cache_store": {"max_bytes": 4194304, "max_entry_bytes": 65536},
        "routes": routes,
    }


def ecds_resource(cfg):
    """The meshguard filter as an extension config (ECDS), as Istio's
    WasmPlugin delivers it: a reload swaps the filter's configuration
    without draining the listener's connections."""
    wasm = harness.wasm_filter(json.dumps(cfg))
    return {"resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "meshguard", "typed_config": wasm["typed_config"]}]}


def write_atomically(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


class Keys:
    """The IdP's HMAC keys, rotated: tokens are minted with the current kid."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.current = self._new()
        self.tokens = self._mint(self.current)

    def _new(self):
        self.n += 1
        return (f"hs-{self.n}", secrets.token_bytes(32))

    @staticmethod
    def _mint(key):
        kid, secret = key
        return [mint_hs(claims(sub=f"user-{i}", aud="api", iss="https://issuer.test"),
                        kid=kid, secret=secret) for i in range(32)]

    @staticmethod
    def jwk(key):
        kid, secret = key
        return {"kty": "oct", "kid": kid, "alg": "HS256", "k": b64u(secret)}

    def token(self):
        with self.lock:
            return random.choice(self.tokens)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.wrong = []  # (kind, detail)
        self.transport = []

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def wrongly(self, kind, detail):
        with self.lock:
            self.wrong.append((kind, detail))
            print(f"WRONG {kind}: {detail}", flush=True)

    def transport_error(self, detail):
        with self.lock:
            self.transport.append(detail)
            print(f"TRANSPORT ERROR: {detail}", flush=True)

    def snapshot(self):
        with self.lock:
            return dict(self.counts), len(self.wrong), len(self.transport)


def request(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


class Flap:
    """The /flaky upstream: 503 for FLAP_DOWN_S of every FLAP_SECONDS."""

    def __init__(self, t0):
        self.t0 = t0

    def down(self, now=None):
        return ((now or time.monotonic()) - self.t0) % FLAP_SECONDS < FLAP_DOWN_S

    def up_for(self, now=None):
        """Seconds the upstream has been up (0 while down)."""
        phase = ((now or time.monotonic()) - self.t0) % FLAP_SECONDS
        return 0.0 if phase < FLAP_DOWN_S else phase - FLAP_DOWN_S


def load_loop(port, keys, stats, flap, stop, seed):
    rnd = random.Random(seed)
    interval = LOAD_THREADS / RATE
    next_at = time.monotonic()
    while not stop.is_set():
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()
        r = rnd.random()
        try:
            if r < 0.30:
                path = f"/open/{rnd.randrange(1000)}"
                s, h, b = request(port, path, {"x-client": f"c{rnd.randrange(3000)}"})
                stats.count(f"open {s}")
                if s != 200:
                    stats.wrongly("open", f"{path} -> {s} {b[:200]!r}")
            elif r < 0.50:
                tok = keys.token()
                s, h, b = request(port, f"/jwt/{rnd.randrange(100)}",
                                  {"authorization": f"Bearer {tok}"})
                stats.count(f"jwt-valid {s}")
                if s != 200:
                    stats.wrongly("jwt", f"valid token -> {s} {h.get('www-authenticate')} {b[:200]!r}")
            elif r < 0.55:
                tok = keys.token()
                bad = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
                s, h, b = request(port, "/jwt/bad", {"authorization": f"Bearer {bad}"})
                stats.count(f"jwt-bad {s}")
                if s != 401:
                    stats.wrongly("jwt-bad", f"bad signature -> {s}")
            elif r < 0.80:
                n = rnd.randrange(60)
                accept = rnd.choice(["text/a", "text/b", "text/c"])
                path = f"/cache/{n}"
                s, h, b = request(port, path, {"accept": accept})
                status = h.get("cache-status", "")
                stats.count(f"cache {s} {'hit' if '; hit' in status else 'miss'}")
                want = f"{path}|{accept}|".encode()
                if s != 200 or not b.startswith(want):
                    stats.wrongly("cache", f"{path} accept={accept} -> {s} {status} {b[:80]!r}")
            else:
                t = time.monotonic()
                s, h, b = request(port, f"/flaky/{rnd.randrange(10)}", {})
                opened = s == 503 and b"circuit_open" in b
                stats.count(f"flaky {'circuit_open' if opened else s}")
                if opened and flap.up_for(t) > BREAKER_GRACE_S:
                    stats.wrongly("breaker", f"open {flap.up_for(t):.1f}s after the upstream recovered")
                elif not opened and s not in (200, 503):
                    stats.wrongly("flaky", f"unexpected {s}")
        except (OSError, http.client.HTTPException) as e:
            stats.transport_error(f"{type(e).__name__}: {e}")


def exactness_probe(port, n):
    """A fresh key of capacity EXACT_CAPACITY: exactly that many of 8 pass."""
    statuses = [request(port, f"/exact/{n}", {"x-client": f"exact-{n}"})[0] for _ in range(8)]
    return statuses


def slope_kib_per_min(samples):
    """Least-squares slope of (t seconds, rss bytes), in KiB per minute."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (r - mr) for t, r in samples)
    return cov / var * 60 / 1024


def main():
    # No options: everything is set by the environment (see above); --help prints it.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    workdir = tempfile.mkdtemp(prefix="meshguard-soak-")
    upstream = harness.Upstream()
    flap = Flap(time.monotonic())

    def behaviour(method, path, headers):
        if path.startswith("/flaky/"):
            if flap.down():
                return 503, {"content-type": "text/plain"}, b"down", 0
            return 200, {"content-type": "text/plain"}, b"up", 0
        if path.startswith("/cache/"):
            accept = headers.get("accept", "")
            body = f"{path}|{accept}|".encode() + b"x" * (256 + hash(path) % 2048)
            return 200, {"content-type": "text/plain", "cache-control": "max-age=5",
                         "vary": "accept"}, body, 0
        return 200, {"content-type": "text/plain"}, b"ok", 0

    upstream.behaviour = behaviour
    # Clients going away mid-answer are part of the test, not news.
    upstream.server.handle_error = lambda *a: None
    keys = Keys()
    idp = JwksServer({"keys": [Keys.jwk(keys.current)]})

    ecds_dir = os.path.join(workdir, "ecds")
    os.mkdir(ecds_dir)
    ecds = os.path.join(ecds_dir, "meshguard.json")
    generation = 0
    write_atomically(ecds, ecds_resource(config(generation)))
    e = harness.Envoy(workdir, "{}", upstream.port, concurrency=2,
                      extra_clusters=[harness.static_cluster("idp", idp.port)])
    hcm = e.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = {"name": "meshguard", "config_discovery": {
        "config_source": {"path_config_source": {"path": ecds, "watched_directory": {"path": ecds_dir}},
                          "resource_api_version": "V3"},
        "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]}}
    e.doc["node"] = {"id": "meshguard-soak", "cluster": "meshguard-soak"}

    git = harness_git()  # of the checkout the run starts from
    stats = Stats()
    stop = threading.Event()
    samples = []  # (t, rss)
    probes = []  # (t, statuses)
    reloads = 0
    rotations = 0
    failures = []
    e.start()
    try:
        # Wait for the first JWKS (requests before it would wait, not fail).
        deadline = time.time() + 10
        while request(e.listen_port, "/jwt/warm", {"authorization": f"Bearer {keys.token()}"})[0] != 200:
            if time.time() > deadline:
                raise RuntimeError("no JWKS after 10 s:\n" + e.log()[-4000:])
            time.sleep(0.2)
        vms0 = vmcheck.vm_stats(e)
        print(f"soak: {SOAK_SECONDS:.0f}s, Envoy pid {e.proc.pid}, log {e.log_path}, "
              f"VMs {vms0}", flush=True)

        threads = [threading.Thread(target=load_loop,
                                    args=(e.listen_port, keys, stats, flap, stop, i), daemon=True)
                   for i in range(LOAD_THREADS)]
        for t in threads:
            t.start()

        t0 = time.monotonic()
        next_sample = t0
        next_reload = t0 + RELOAD_SECONDS
        next_rotate = t0 + ROTATE_SECONDS
        next_probe = t0 + 5
        rotation = None  # (phase, since, fetches at start, new key)
        probe_n = 0
        while time.monotonic() - t0 < SOAK_SECONDS:
            now = time.monotonic()
            if now >= next_sample:
                rss = e.rss_bytes()
                samples.append((now - t0, rss))
                counts, wrong, transport = stats.snapshot()
                total = sum(counts.values())
                print(f"t={now - t0:6.0f}s rss={rss / 1048576:7.1f}MiB requests={total} "
                      f"wrong={wrong} transport={transport} reloads={reloads} "
                      f"rotations={rotations} probes={len(probes)}", flush=True)
                next_sample += SAMPLE_SECONDS
            if now >= next_reload:
                generation += 1
                write_atomically(ecds, ecds_resource(config(generation)))
                reloads += 1
                next_reload += RELOAD_SECONDS
            if rotation is None and now >= next_rotate:
                new = keys._new()
                idp.set_jwks({"keys": [Keys.jwk(keys.current), Keys.jwk(new)]})
                rotation = ("publish", now, idp.count, new)
            elif rotation is not None and rotation[0] == "publish":
                # Mint with the new kid once a refresh fetched it and it
                # reached the workers (shared data; within a second).
                if idp.count > rotation[2] and now - rotation[1] > 2:
                    tokens = Keys._mint(rotation[3])
                    time.sleep(1.5)
                    with keys.lock:
                        old = keys.current
                        keys.current, keys.tokens = rotation[3], tokens
                    rotation = ("retire", time.monotonic(), idp.count, old)
            elif rotation is not None and rotation[0] == "retire" and now - rotation[1] > 2:
                idp.set_jwks({"keys": [Keys.jwk(keys.current)]})
                rotations += 1
                rotation = None
                next_rotate = time.monotonic() + ROTATE_SECONDS
            if now >= next_probe:
                probe_n += 1
                try:
                    st = exactness_probe(e.listen_port, probe_n)
                except (OSError, http.client.HTTPException) as ex:
                    stats.transport_error(f"exactness probe {probe_n}: {type(ex).__name__}: {ex}")
                    st = []
                probes.append((now - t0, st))
                if sorted(st) != sorted([200] * EXACT_CAPACITY + [429] * (8 - EXACT_CAPACITY)) \
                        or st[:EXACT_CAPACITY] != [200] * EXACT_CAPACITY:
                    stats.wrongly("exact", f"probe {probe_n}: {st}")
                next_probe += 20
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=30)

        # Final exactness over every probe key: none refilled (1 per hour),
        # so each must still refuse.
        for n in range(1, probe_n + 1, max(1, probe_n // 10)):
            s = request(e.listen_port, f"/exact/{n}", {"x-client": f"exact-{n}"})[0]
            if s != 429:
                stats.wrongly("exact-end", f"probe key {n} admitted again ({s}) after the run")

        traps = vmcheck.trap_lines(e.log())
        vms1 = vmcheck.vm_stats(e)
        counts, wrong, transport = stats.snapshot()
        # Warm-up: the first quarter of the run, at least 2 minutes (V8 and
        # Envoy's pools grow at first); the slope is judged over at least 3
        # minutes after it, else not at all (a shorter run cannot tell).
        warmup = max(SOAK_SECONDS * WARMUP_FRACTION, 120)
        after = [s for s in samples if s[0] >= warmup]
        judged = bool(after) and after[-1][0] - after[0][0] >= 180
        slope = slope_kib_per_min(after)
        rss_first = after[0][1] if after else 0
        rss_last = samples[-1][1] if samples else 0
        report = {
            "seconds": SOAK_SECONDS, "load_threads": LOAD_THREADS, "concurrency": 2,
            "requests": sum(counts.values()), "outcomes": counts,
            "wrong": stats.wrong[:50], "wrong_count": wrong,
            "transport_errors": stats.transport[:50], "transport_error_count": transport,
            "reloads": reloads, "rotations": rotations, "exactness_probes": len(probes),
            "idp_fetches": idp.count,
            "rss_samples": samples, "rss_after_warmup_first_mib": rss_first / 1048576,
            "rss_last_mib": rss_last / 1048576, "rss_max_mib": max(r for _, r in samples) / 1048576,
            "rss_slope_kib_per_min": slope, "rss_slope_bound_kib_per_min": RSS_SLOPE_KIB_PER_MIN,
            "rss_slope_judged": judged, "warmup_seconds": warmup,
            "traps": traps[:20], "vm_stats_start": vms0, "vm_stats_end": vms1,
            "git": git, "wasm": harness.wasm_path(),
        }
        os.makedirs(os.path.dirname(REPORT), exist_ok=True)
        with open(REPORT, "w") as f:
            json.dump(report, f, indent=1)

        if traps:
            failures.append(f"{len(traps)} trap/panic line(s): {traps[:3]}")
        created = vms1.get("wasm.envoy.wasm.runtime.v8.created", 0) - \
            vms0.get("wasm.envoy.wasm.runtime.v8.created", 0)
        if created > reloads or vms1.get("wasm.envoy.wasm.runtime.v8.active") != \
                vms0.get("wasm.envoy.wasm.runtime.v8.active"):
            # Each ECDS reload creates one VM (the new configuration's) and
            # retires one; any other VM created means one was replaced.
            failures.append(f"V8 VMs: {vms0} -> {vms1} over {reloads} reloads")
        if wrong:
            failures.append(f"{wrong} wrongly refused or wrong answers: {stats.wrong[:5]}")
        if transport > MAX_TRANSPORT_ERRORS:
            failures.append(f"{transport} transport errors: {stats.transport[:5]}")
        if not judged:
            print("RSS slope not judged: the run is too short (SOAK_SECONDS >= 300 needed)", flush=True)
        elif slope > RSS_SLOPE_KIB_PER_MIN:
            failures.append(f"RSS still growing after warm-up: {slope:.1f} KiB/min "
                            f"> {RSS_SLOPE_KIB_PER_MIN} KiB/min")
        print(f"\nsoak summary: {SOAK_SECONDS:.0f}s, {report['requests']} requests, "
              f"{reloads} reloads, {rotations} key rotations, {len(probes)} exactness probes, "
              f"{idp.count} JWKS fetches", flush=True)
        print(f"RSS: after warm-up {rss_first / 1048576:.1f} MiB, last {rss_last / 1048576:.1f} MiB, "
              f"max {report['rss_max_mib']:.1f} MiB, slope {slope:.1f} KiB/min "
              f"(bound {RSS_SLOPE_KIB_PER_MIN})", flush=True)
        print(f"outcomes: {json.dumps(counts, sort_keys=True)}", flush=True)
        print(f"wrong: {wrong}, transport errors: {transport}, traps: {len(traps)}, "
              f"VMs {vms0} -> {vms1}", flush=True)
        print(f"report: {REPORT}", flush=True)
    finally:
        stop.set()
        e.stop()
        upstream.stop()
        idp.stop()
    if failures:
        print("SOAK FAILED:\n  " + "\n  ".join(failures), flush=True)
        print("Envoy log: " + e.log_path, flush=True)
        return 1
    print("SOAK PASSED", flush=True)
    return 0


def harness_git():
    try:
        import subprocess
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
