#!/usr/bin/env python3
"""Side-by-side benchmark: meshguard vs Envoy's native filters vs no filter.

One shared upstream Envoy (direct_response 200, cacheable), and for every
scenario a proxy Envoy (--concurrency 1) in front of it, loaded with wrk.
Per scenario and round: proxy CPU time (utime+stime from /proc/<pid>/stat)
per completed request, and requests/s. Rounds are interleaved; the report
uses medians, and overhead = scenario minus passthrough of the same run
(also paired: minus a passthrough proxy loaded at the same time on the
same CPU, its "twin", which cancels the machine's drift).

    ENVOY_BIN=... MESHGUARD_WASM=... python3 bench/bench.py [--quick]

See bench/README.md.
"""

import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "jwt")
TRIVIAL_DIR = os.path.join(HERE, "trivial-filter")
TRIVIAL_WASM = os.path.join(TRIVIAL_DIR, "target", "wasm32-wasip1", "release", "trivial_filter.wasm")
E2E_DIR = os.path.join(ROOT, "tests", "e2e")  # tests/e2e/rls.py: the test rate limit service
RLS_MANIFEST = os.path.join(ROOT, "tests", "rls-server", "Cargo.toml")
RLS_TARGET = os.path.join(ROOT, "target", "rls-server")  # where `make rls` builds (debug)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PATH = "/bench"
ISSUER = "https://issuer.test"
AUDIENCE = "api"
# Global rate limits: one rate limit service (tests/rls-server, in memory) for
# meshguard's global limit and Envoy's ratelimit filter alike.
RLS_CLUSTER = "ratelimit"
RLS_DOMAIN = "meshguard"
RLS_TIMEOUT = "1s"  # generous: load must not turn into failure-mode passes (those fail the scenario)
# The descriptor both sides send: route=bench, limit=all.
RLS_DESCRIPTOR = "{route=bench,limit=all}"
# 4e9 per 60 s: every request passes, and it fits the RLS proto's uint32 requests_per_unit.
RLS_LIMITS = [{"name": "bench-all", "namespace": RLS_DOMAIN, "max_value": 4000000000, "seconds": 60,
               "conditions": ["descriptors[0].route == 'bench'", "descriptors[0].limit == 'all'"]}]
NATIVE_RATE_LIMITS = [{"actions": [
    {"generic_key": {"descriptor_key": "route", "descriptor_value": "bench"}},
    {"generic_key": {"descriptor_key": "limit", "descriptor_value": "all"}}]}]


class BenchError(Exception):
    pass


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ tools

def ensure_tool(tool="wrk", package="wrk"):
    """A load generator from Debian: `wrk` (HTTP/1.1), `h2load` (package nghttp2-client: HTTP/2,
    the gRPC scenarios), installed when missing and running as root."""
    if shutil.which(tool):
        return shutil.which(tool)
    cmd = ["apt-get", "install", "-y", package]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"bench: {tool} is missing; running: " + " ".join(cmd))
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if shutil.which(tool):
            return shutil.which(tool)
        raise BenchError(f"installing {tool} failed:\n" + r.stderr[-2000:])
    raise BenchError(f"{tool} is not installed; install it with: sudo apt-get install -y {package}")


def ensure_wrk():
    return ensure_tool("wrk", "wrk")


def ensure_cryptography():
    try:
        import cryptography  # noqa: F401
        return
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "cryptography"]
    if sys.prefix != sys.base_prefix:  # running inside a venv: install into it
        log("bench: installing the `cryptography` package into " + sys.prefix)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            import importlib
            importlib.invalidate_caches()
            import cryptography  # noqa: F401
            return
        raise BenchError("pip install cryptography failed:\n" + r.stderr[-2000:])
    raise BenchError("the bench needs the `cryptography` package to sign tokens; "
                     "run it from a venv (`make bench` uses .venv) or: " + " ".join(cmd))


def ensure_trivial_wasm(skip_build):
    if not skip_build:
        log("bench: building the trivial reference filter (bench/trivial-filter)")
        r = subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-q"],
                           cwd=TRIVIAL_DIR, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("building bench/trivial-filter failed (rustup target add wasm32-wasip1?):\n"
                             + r.stderr[-3000:])
    if not os.path.exists(TRIVIAL_WASM):
        raise BenchError(f"{TRIVIAL_WASM} is missing")
    return TRIVIAL_WASM


def ensure_rls_bin(skip_build):
    """The rate limit service binary for the global scenarios: $MESHGUARD_RLS_BIN, else a release
    build of tests/rls-server (built here, next to `make rls`'s debug one: the debug build costs ~8x
    the CPU per call and caps the load at ~2000 req/s on 2 cores), else the debug one."""
    if os.environ.get("MESHGUARD_RLS_BIN"):
        return os.environ["MESHGUARD_RLS_BIN"], "from MESHGUARD_RLS_BIN"
    release = os.path.join(RLS_TARGET, "release", "meshguard-test-rls")
    debug = os.path.join(RLS_TARGET, "debug", "meshguard-test-rls")
    why = ""
    if not skip_build:
        log("bench: building the rate limit service in release mode (tests/rls-server; ~6 min the first time)")
        r = subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", RLS_MANIFEST,
                            "--target-dir", RLS_TARGET], capture_output=True, text=True)
        if r.returncode != 0:
            why = "release build failed (run `make rls` first: it patches limitador): " + r.stderr[-1500:]
    if not why and os.path.exists(release):
        return release, "release build"
    log(f"bench: WARNING: using the debug build of the rate limit service. {why or 'no release build'}")
    return debug, "debug build (" + ("release build failed" if why else "no release build") + ")"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ envoy

ALL_PROCS = []  # every process we start; killed in main's finally

# CPU placement (--pin, the default with 2+ CPUs): the proxy under test alone on the last CPU, the
# load generator, the upstream and the rate limit service on the others. Without it the proxy, wrk
# and the upstream share every core and the proxy's CPU per request swings by +-20 us between runs
# (cache and scheduler interference), more than most differences we want to see.
PIN = {"proxy": None, "others": None}


def set_pinning(enabled):
    cpus = sorted(os.sched_getaffinity(0))
    if enabled and len(cpus) >= 2:
        PIN["proxy"], PIN["others"] = {cpus[-1]}, set(cpus[:-1])
    else:
        PIN["proxy"] = PIN["others"] = None


def pin_preexec(role):
    cpus = PIN[role]
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def pin_running(pid, role):
    """Moves every thread of a running process (the rate limit service) to the role's CPUs."""
    cpus = PIN[role]
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that just ended
_BASE_ID = [random.randint(100, 5000) * 10]


def next_base_id():
    _BASE_ID[0] += 1
    return _BASE_ID[0] * 10 + os.getpid() % 10


def router_filter():
    return {"name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def static_cluster(name, port, http2=False):
    c = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if http2:  # gRPC services (the rate limit service)
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def hcm(stat_prefix, route_config, http_filters, h2=False):
    """`h2`: the listener also speaks HTTP/2 without TLS (h2c, as gRPC clients do)."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            **({"codec_type": "AUTO", "http2_protocol_options": {}} if h2 else {}),
            "route_config": route_config,
            "http_filters": list(http_filters) + [router_filter()],
        },
    }


def listener(port, hcm_filter):
    return {"name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm_filter]}]}


UPSTREAM_BODY = "hello from the bench upstream\n"
# The gRPC scenarios: unary calls of one method, over HTTP/2 (h2c) on both sides of the proxy. The
# upstream answers each with a trailers-only OK (HTTP 200, grpc-status 0, no body): what a server
# sends for an empty answer, and no gRPC server process in the measurement.
GRPC_PATH = "/bench.v1.Bench/Call"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"  # one length-prefixed message (5 bytes)
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
GRPC_STREAMS = 4  # concurrent streams per HTTP/2 connection (gRPC multiplexes)


def upstream_bootstrap(listen_port, admin_port):
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
        "match": {"prefix": "/bench.v1.Bench/"},
        "direct_response": {"status": 200},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": "application/grpc"}},
            {"header": {"key": "grpc-status", "value": "0"}}],
    }, {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
        "response_headers_to_add": [
            {"header": {"key": "cache-control", "value": "public, max-age=600"}},
            {"header": {"key": "content-type", "value": "text/plain"}}],
    }]}]}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [listener(listen_port, {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "up", "codec_type": "AUTO", "http2_protocol_options": {},
                "route_config": route_config, "http_filters": [router_filter()]}})]},
    }


def proxy_bootstrap(listen_port, admin_port, upstream_port, http_filters, route_extra=None, extra_clusters=(),
                    h2=False):
    """`route_extra`: more fields of the route action (e.g. `rate_limits`); `extra_clusters`: more clusters;
    `h2`: HTTP/2 on both sides (the gRPC scenarios)."""
    action = dict({"cluster": "upstream", "timeout": "5s"}, **(route_extra or {}))
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
        "match": {"prefix": "/"}, "route": action}]}]}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [listener(listen_port, hcm("ingress", route_config, http_filters, h2=h2))],
            "clusters": [static_cluster("upstream", upstream_port, http2=h2)] + list(extra_clusters),
        },
    }


class Envoy:
    """One Envoy process on 127.0.0.1 ports; `make_doc(listen, admin)` builds its bootstrap."""

    def __init__(self, envoy_bin, workdir, name, make_doc, concurrency=1, role="proxy"):
        self.envoy_bin, self.workdir, self.name, self.role = envoy_bin, workdir, name, role
        self.make_doc, self.concurrency = make_doc, concurrency
        self.proc = None
        self.load_time_s = None

    def start(self, timeout=60):
        for attempt in range(3):
            self.listen_port, self.admin_port = free_port(), free_port()
            tag = f"{self.name}-{self.listen_port}"
            self.config_path = os.path.join(self.workdir, tag + ".json")
            self.log_path = os.path.join(self.workdir, tag + ".log")
            with open(self.config_path, "w") as f:
                json.dump(self.make_doc(self.listen_port, self.admin_port), f, indent=1)
            logf = open(self.log_path, "w")
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [self.envoy_bin, "-c", self.config_path, "--concurrency", str(self.concurrency),
                 "--base-id", str(next_base_id()), "--disable-hot-restart", "--log-level", "warn",
                 "--drain-time-s", "0", "--parent-shutdown-time-s", "1"],
                stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir, preexec_fn=pin_preexec(self.role))
            logf.close()
            ALL_PROCS.append(self.proc)
            end = t0 + timeout
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                        if r.status == 200:
                            self.load_time_s = time.monotonic() - t0
                            return self
                except OSError:
                    pass
                time.sleep(0.005)  # polling interval, not a readiness guess
            tail = self.log()[-4000:]
            self.stop()
            if "Address already in use" in tail or "cannot bind" in tail:
                continue  # a port was taken between free_port() and bind: retry with new ports
            raise BenchError(
                f"Envoy '{self.name}' did not become ready "
                f"(exit code {self.proc.returncode}); config {self.config_path}; log tail:\n{tail}")
        raise BenchError(f"Envoy '{self.name}': could not bind free ports 3 times")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def cpu_us(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) * 1e6 / CLK_TCK

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stat(self, name):
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/stats?filter=^{re.escape(name)}$", timeout=5) as r:
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(": ")
                if k == name:
                    return int(v)
        return 0

    def stats_matching(self, regex):
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/stats?filter={urllib.request.quote(regex)}", timeout=5) as r:
            out = {}
            for line in r.read().decode().splitlines():
                k, _, v = line.partition(": ")
                try:
                    out[k] = int(v)
                except ValueError:
                    pass
            return out

    def request(self, headers=None, grpc=False):
        """A GET of the bench path; `grpc`: a gRPC call of the bench method instead (sent over
        HTTP/1.1, which the h2 listeners also speak: a probe, not the load)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.listen_port, timeout=10)
        try:
            if grpc:
                conn.request("POST", GRPC_PATH, body=GRPC_MESSAGE, headers=dict(GRPC_HEADERS, **(headers or {})))
            else:
                conn.request("GET", PATH, headers=headers or {})
            r = conn.getresponse()
            body = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, body
        finally:
            conn.close()


# ------------------------------------------------------------------ filters

def wasm_filter(name, filename, root_id, config_text):
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name, "root_id": root_id, "fail_open": False,
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": filename}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": config_text},
            },
        },
    }


def native_local_ratelimit(headers=False, key_header=None):
    """`headers`: also send X-RateLimit-Limit/Remaining/Reset (off by default in Envoy).
    `key_header`: one bucket per value of this request header (a descriptor without a value:
    Envoy's dynamic descriptors, at most 10000 like meshguard's default `max_rate_limit_keys`)."""
    pct = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    bucket = {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"}
    cfg = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench_rl",
        "token_bucket": bucket,
        "filter_enabled": dict(pct, runtime_key="bench_rl_enabled"),
        "filter_enforced": dict(pct, runtime_key="bench_rl_enforced"),
    }
    if headers:
        cfg["enable_x_ratelimit_headers"] = "DRAFT_VERSION_03"
    if key_header:
        cfg["rate_limits"] = [{"actions": [{"request_headers": {"header_name": key_header,
                                                                 "descriptor_key": "key"}}]}]
        cfg["descriptors"] = [{"entries": [{"key": "key"}], "token_bucket": bucket}]
        cfg["max_dynamic_descriptors"] = 10000
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": cfg}


def native_global_ratelimit():
    """Envoy's own RLS client, `envoy.filters.http.ratelimit`, on the same service as meshguard's
    global limit; the route's `rate_limits` (NATIVE_RATE_LIMITS) build the same descriptor."""
    return {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": RLS_DOMAIN,
        "timeout": RLS_TIMEOUT,
        "failure_mode_deny": False,
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
                               "transport_api_version": "V3"},
    }}


def native_jwt_authn(jwks, cache):
    provider = {"issuer": ISSUER, "audiences": [AUDIENCE], "forward": False,
                "local_jwks": {"inline_string": json.dumps(jwks)}}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    }}


def native_cache():
    return {"name": "envoy.filters.http.cache", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"},
    }}


# ------------------------------------------------------------------ tokens

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_b64url(n):
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def make_distinct_tokens(count, alg="RS256"):
    """A fresh key (kid bench-rsa for RS256/PS256, bench-ec for ES256, bench-ed for EdDSA) and `count`
    distinct tokens signed by it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
    if alg in ("RS256", "PS256"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_numbers()
        kid = "bench-rsa"
        jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": alg, "n": int_b64url(pub.n), "e": int_b64url(pub.e)}
        pad = (padding.PKCS1v15() if alg == "RS256"
               else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))

        def sign(data):
            return key.sign(data, pad, hashes.SHA256())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kid = "bench-ed"
        jwk = {"kty": "OKP", "kid": kid, "use": "sig", "alg": alg, "crv": "Ed25519", "x": b64url(raw)}

        def sign(data):
            return key.sign(data)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_numbers()
        kid = "bench-ec"
        jwk = {"kty": "EC", "kid": kid, "use": "sig", "alg": alg, "crv": "P-256",
               "x": b64url(pub.x.to_bytes(32, "big")), "y": b64url(pub.y.to_bytes(32, "big"))}

        def sign(data):
            r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())
    now = int(time.time())
    tokens = []
    for i in range(count):
        payload = b64url(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i}", "jti": f"bench-{i}",
                                     "iat": now - 60, "exp": now + 6 * 3600},
                                    separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        tokens.append(f"{header}.{payload}.{b64url(sign(signing_input))}")
    return jwk, tokens


# ------------------------------------------------------------------ wrk

def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_static_lua(path, headers):
    with open(path, "w") as f:
        for k, v in headers.items():
            f.write(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}\n")
    return path


def write_rotating_lua(path, tokens):
    """The tokens in order, from a cursor on: thread t of T sends positions cursor + t, + T, + 2T...
    (each thread its own tokens), wrapping around the list. `start_wrk` passes T (the `-t` it runs
    with: a twin's wrk runs half the threads) and the cursor; at the end the script prints the
    first position no thread used, and the next run of the same scenario starts there. So a token
    comes back only after every other token was sent: none is still in meshguard's verified-token
    cache (1024 entries, oldest evicted first) when the list is longer than that, across wrk runs
    too (a new run starting over from the first tokens would find the previous run's last ones
    still cached)."""
    with open(path, "w") as f:
        f.write("local tokens = {\n")
        for t in tokens:
            f.write(f"  {lua_str(t)},\n")
        f.write("}\n")
        # wrk calls setup(thread) in its main Lua state, then init(args) in the thread's.
        f.write("""local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  nthreads = tonumber(args[1]) or 1
  pos = (tonumber(args[2]) or 0) + tid
end
function request()
  local t = tokens[(pos % #tokens) + 1]
  pos = pos + nthreads
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. t})
end
function done(summary, latency, requests)
  local next_pos = 0
  for _, thread in ipairs(threads) do
    local p = thread:get("pos")
    if p and p > next_pos then next_pos = p end
  end
  io.write("meshguard-token-cursor " .. next_pos .. "\\n")
end
""")
    return path


UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_latency(text):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    return float(m.group(1)) * UNITS_S[m.group(2)] * 1e3 if m else None  # ms


def start_wrk(wrk, port, script, duration, threads, connections, cursor=0):
    """`cursor`: where a rotating-token script starts (see `write_rotating_lua`)."""
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
           "-s", script, f"http://127.0.0.1:{port}{PATH}", "--", str(threads), str(cursor)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin_preexec("others"))


def finish_wrk(proc, duration):
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BenchError("wrk did not finish")
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {err[-2000:]}\n{out[-2000:]}")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise BenchError("cannot parse wrk output:\n" + out + err)
    res = {"requests": int(m.group(1)), "elapsed_s": float(m.group(2)) * UNITS_S[m.group(3)]}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else res["requests"] / max(res["elapsed_s"], 1e-9)
    m = re.search(r"^meshguard-token-cursor (\d+)$", out, re.M)
    res["token_cursor"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = parse_latency(m.group(1)) if m else None
    return res


def start_h2load(h2load, port, payload, duration, threads, connections):
    """h2load: `connections` HTTP/2 connections with GRPC_STREAMS streams each, every request the
    bench gRPC call (POST of `payload`, the gRPC headers)."""
    threads = max(1, min(threads, connections))
    cmd = [h2load, "-D", str(duration), "-t", str(threads), "-c", str(connections), "-m", str(GRPC_STREAMS),
           "-d", payload]
    for k, v in GRPC_HEADERS.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{GRPC_PATH}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pin_preexec("others"))


def finish_h2load(proc, duration):
    """The same figures as `finish_wrk` from h2load's report (no percentiles: h2load prints none)."""
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BenchError("h2load did not finish")
    if proc.returncode != 0:
        raise BenchError(f"h2load failed ({proc.returncode}): {err[-2000:]}\n{out[-2000:]}")
    m = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out)
    r = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    c = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and r and c):
        raise BenchError("cannot parse h2load output:\n" + out + err)
    done = int(r.group(1))
    return {"requests": done, "elapsed_s": float(m.group(1)) * UNITS_S[m.group(2)],
            "rps": float(m.group(3)), "non_2xx": int(c.group(3)) + int(c.group(4)),
            "socket_errors": int(r.group(4)) + int(r.group(5)), "token_cursor": None,
            "p50_ms": None, "p99_ms": None}


def start_load(ctx, sc, port, script, duration, threads, connections, cursor=0):
    """The scenario's load: h2load for gRPC scenarios, else wrk with `script`."""
    if sc is not None and sc.grpc:
        return start_h2load(ctx["h2load"], port, ctx["grpc_payload"], duration, threads, connections)
    return start_wrk(ctx["wrk"], port, script, duration, threads, connections, cursor)


def finish_load(sc, proc, duration):
    return finish_h2load(proc, duration) if sc is not None and sc.grpc else finish_wrk(proc, duration)


def run_load(ctx, sc, port, script, duration, threads, connections):
    """One load run of a scenario (wrk or h2load), advancing its token cursor."""
    cursor = sc.token_cursor if sc else 0
    res = finish_load(sc, start_load(ctx, sc, port, script, duration, threads, connections, cursor), duration)
    if sc and res["token_cursor"] is not None:
        sc.token_cursor = res["token_cursor"]
    return res


def run_wrk(wrk, port, script, duration, threads, connections, sc=None):
    """`sc`: the scenario whose token cursor the run starts from and advances."""
    cursor = sc.token_cursor if sc else 0
    res = finish_wrk(start_wrk(wrk, port, script, duration, threads, connections, cursor), duration)
    if sc and res["token_cursor"] is not None:
        sc.token_cursor = res["token_cursor"]
    return res


# ------------------------------------------------------------------ scenarios

class Scenario:
    def __init__(self, name, desc, filters, headers=None, tokens=None, group=None,
                 probe=None, expect_upstream=None, expect_stat=None, expect_zero=None,
                 route_extra=None, uses_rls=False, grpc=False):
        self.name, self.desc, self.filters = name, desc, filters
        self.grpc = grpc                # gRPC calls over HTTP/2 both sides (h2load), not wrk's GETs
        self.route_extra = route_extra  # more fields of the proxy's route action (native rate_limits)
        self.uses_rls = uses_rls        # needs the `ratelimit` cluster; every request must call the service
        self.expect_zero = expect_zero  # regex of stats that must stay 0 (failure-mode passes, errors)
        self.headers = headers or {}
        self.tokens = tokens            # rotate these as Bearer tokens (distinct-token scenarios)
        self.token_cursor = 1           # the next token a wrk run sends (the probe sent the first)
        self.group = group
        self.probe = probe              # extra check: f(envoy) raising BenchError
        self.expect_upstream = expect_upstream or ("none" if group == "cache" else "all")
        self.expect_stat = expect_stat  # regex of a stat that must be > 0 after the run
        self.rounds = []
        self.load_times = []
        self.error = None
        self.envoy = None
        self.paired = []  # per round: this scenario's CPU/req minus its passthrough twin's (or the run before)
        self.paired_rps = []  # per round: this scenario's req/s / its passthrough twin's

    def first_headers(self):
        h = dict(self.headers)
        if self.tokens:
            h["Authorization"] = "Bearer " + self.tokens[0]
        return h


def probe_status(envoy, headers, want, what):
    status, hdrs, body = envoy.request(headers)
    if status != want:
        raise BenchError(f"{what}: expected {want}, got {status} {hdrs} {body[:300]!r}")
    return hdrs


def grpc_probe(envoy, sc):
    """A gRPC scenario answers the bench call with grpc-status 0 (meshguard's: with its limit's
    RateLimit-Policy, so the limit is active)."""
    status, hdrs, body = envoy.request(grpc=True)
    if status != 200 or hdrs.get("grpc-status") != "0":
        raise BenchError(f"{sc.name}: the gRPC call did not succeed: {status} {hdrs} {body[:300]!r}")
    if sc.name.startswith("mg-") and "ratelimit-policy" not in hdrs:
        raise BenchError(f"{sc.name}: no RateLimit-Policy header, is the limit active? {hdrs}")


def jwt_probe(envoy, sc):
    probe_status(envoy, {}, 401, "request without a token")
    bad = dict(sc.first_headers())
    bad["Authorization"] = bad["Authorization"][:-6] + ("AAAAAA" if not bad["Authorization"].endswith("AAAAAA") else "BBBBBB")
    probe_status(envoy, bad, 401, "request with a forged signature")


# The IETF headers of meshguard's bench rate limit on a first request (a bucket of 10^9 refilled
# every second), which the floor filter (trivial-rl-floor, op `rl_headers`) sends verbatim: both
# probes check them, so the floor stays the same bytes as what it is the floor of.
RL_HEADERS = {"ratelimit-policy": '"all";q=1000000000;w=1', "ratelimit": '"all";r=999999999;t=1'}


def rl_floor_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    got = {k: hdrs.get(k) for k in RL_HEADERS}
    if got != RL_HEADERS:
        raise BenchError(f"{sc.name}: the floor filter must send {RL_HEADERS}, sent {got}")


def hit_floor_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if "hit" not in hdrs.get("cache-status", "") or "age" not in hdrs:
        raise BenchError(f"{sc.name}: the floor must answer like meshguard's hit (Age, Cache-Status): {hdrs}")


def mg_cache_probe(envoy, sc):
    probe_status(envoy, sc.first_headers(), 200, "first request")
    hdrs = probe_status(envoy, sc.first_headers(), 200, "second request")
    if "hit" not in hdrs.get("cache-status", "").lower():
        raise BenchError(f"meshguard cache: second response is not a hit: {hdrs}")


def native_cache_probe(envoy, sc):
    probe_status(envoy, sc.first_headers(), 200, "first request")
    hdrs = probe_status(envoy, sc.first_headers(), 200, "second request")
    if "age" not in hdrs:
        raise BenchError(f"native cache: second response has no Age header (not a hit): {hdrs}")


def mg_ratelimit_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if "ratelimit-policy" not in hdrs:
        raise BenchError(f"meshguard rate limit: no RateLimit-Policy header, is the limit active? {hdrs}")
    if sc.name == "mg-ratelimit":
        got = {k: hdrs.get(k) for k in RL_HEADERS}
        if got != RL_HEADERS:
            raise BenchError(f"meshguard rate limit: headers {got}, the floor (trivial-rl-floor) sends "
                             f"{RL_HEADERS}: update RL_HEADERS and the trivial filter's `rl_headers`")


def legacy_headers_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if "x-ratelimit-limit" not in hdrs:
        raise BenchError(f"{sc.name}: no X-RateLimit-Limit header, is the limit active? {hdrs}")


def mg_global_probe(envoy, sc):
    """The service answered and its limit matched: meshguard builds RateLimit-Policy from the
    service's current_limit, so a `"all"` policy means a real answer, not a failure-mode pass."""
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if '"all"' not in hdrs.get("ratelimit-policy", ""):
        raise BenchError(f"meshguard global limit: no RateLimit-Policy for \"all\" (did the service "
                         f"answer and match?) {hdrs}")


class BenchRls:
    """The one rate limit service of the run (tests/e2e/rls.py RlsServer: tests/rls-server, counting in
    memory), shared by every scenario with uses_rls. Its stderr has one line per ShouldRateLimit call,
    written before the answer is sent: after wrk completed n requests, at least n lines are there."""

    def __init__(self, workdir):
        if E2E_DIR not in sys.path:
            sys.path.insert(0, E2E_DIR)
        from rls import RlsServer  # noqa: E402 (tests/e2e, with its harness module)
        self.server = RlsServer(workdir, RLS_LIMITS)

    def start(self):
        try:
            self.server.start()
        except RuntimeError as e:  # binary missing (`make rls`), bad limits, ...
            raise BenchError(f"rate limit service: {e}")
        ALL_PROCS.append(self.server.proc)
        pin_running(self.server.proc.pid, "others")
        self.port = self.server.port
        return self

    def stop(self):
        self.server.stop()

    def alive(self):
        return self.server.proc is not None and self.server.proc.poll() is None

    def cpu_us(self):
        with open(f"/proc/{self.server.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1e6 / CLK_TCK

    def mark(self):
        return os.path.getsize(self.server.log_path), self.cpu_us()

    def since(self, mark):
        """Calls logged since `mark`: total, the ones for our descriptor answered OK by our limit,
        examples of the others; and the service's CPU time meanwhile."""
        offset, cpu0 = mark
        cpu = self.cpu_us() - cpu0
        with open(self.server.log_path, "rb") as f:
            f.seek(offset)
            data = f.read().decode(errors="replace")
        calls = ok = dropped = 0
        other = []
        for line in data.splitlines():
            if line.startswith("rls: sending the answer:"):
                # The client reset the stream before the answer: Envoy cancels the calls of the
                # requests in flight when wrk closes its connections at the end of a run. (A
                # deadline would also do it; the proxy's timeout stats catch that.)
                dropped += 1
                continue
            if not line.startswith("rls: domain="):
                if line.strip() and len(other) < 5:
                    other.append(line)
                continue
            calls += 1
            if (line.startswith(f'rls: domain="{RLS_DOMAIN}" [{RLS_DESCRIPTOR}+1] -> OK [OK "bench-all" ')):
                ok += 1
            elif len(other) < 5:
                other.append(line)
        return {"calls": calls, "ok": ok, "dropped": dropped, "other": other, "cpu_us": cpu}


DIAG_OPS = ("all_headers", "status", "flags", "metric", "shared", "remove_auth", "time", "add_resp_header")
DIAG_REPEAT = 50  # host calls of one kind per request: one call's price = (overhead - trivial's) / 50


def diag_scenarios(trivial_wasm):
    """The trivial filter plus DIAG_REPEAT host calls of one kind per request (--diag): prices host calls."""
    return [Scenario(f"diag-{op}", f"trivial filter + {DIAG_REPEAT} x {op.replace('_', ' ')}",
                     [wasm_filter("trivial", trivial_wasm, "trivial", f"hdr,{op}*{DIAG_REPEAT}")],
                     headers={"x-api-key": "k1"}, group="diag") for op in DIAG_OPS]


# Head-to-head comparisons behind the targets: the two proxies run at the same time on the same CPU
# (twins), so the difference is not blurred by the machine's drift between runs. (a, b, label):
# the result is b minus a.
COMPARISONS = [
    ("trivial-wasm", "mg-nopolicy", "meshguard no-policy route vs trivial wasm filter"),
    ("mg-nopolicy", "mg-ratelimit", "rate limit (one bucket) vs no-policy route"),
    ("mg-nopolicy", "mg-ratelimit-key", "rate limit keyed by header vs no-policy route"),
    ("mg-routes-first", "mg-routes-last", "1,000 routes matched by header: the last route vs the first (route index)"),
    ("mg-nopolicy", "mg-nopolicy-token", "no-policy route: requests with the ~700-byte token vs without"),
    ("mg-nopolicy-token", "mg-jwt-rs256", "JWT RS256 repeated token vs no-policy route, same requests"),
    ("mg-nopolicy", "mg-breaker", "circuit breaker CLOSED vs no-policy route"),
    ("trivial-wasm", "trivial-breaker-floor", "breaker floor: a healthy breaker's host calls, over the trivial filter"),
    ("trivial-breaker-floor", "mg-breaker", "circuit breaker CLOSED: meshguard vs the floor of its host calls"),
    ("mg-nopolicy", "mg-ratelimit-noheaders", "rate limit without rate-limit headers vs no-policy route"),
    ("trivial-wasm", "trivial-rl-floor", "rate-limit floor: the host calls of an exact bucket + IETF headers, over the trivial filter"),
    ("trivial-wasm", "trivial-rl-floor-noheaders", "rate-limit floor without headers: the host calls of an exact bucket, over the trivial filter"),
    ("trivial-rl-floor", "mg-ratelimit", "rate limit (IETF headers): meshguard vs the floor of its host calls"),
    ("trivial-rl-floor-noheaders", "mg-ratelimit-noheaders", "rate limit without headers: meshguard vs the floor of its host calls"),
    ("native-ratelimit", "mg-ratelimit-noheaders", "local rate limit, no headers: meshguard vs native"),
    ("native-ratelimit-headers", "mg-ratelimit-legacy", "local rate limit, X-RateLimit-* headers: meshguard vs native"),
    ("native-ratelimit-key", "mg-ratelimit-key", "local rate limit keyed by header: meshguard vs native"),
    ("native-jwt-rs256-distinct", "mg-jwt-rs256-distinct", "distinct RS256 tokens: meshguard vs jwt_authn"),
    ("native-jwt-es256-distinct", "mg-jwt-es256-distinct", "distinct ES256 tokens: meshguard vs jwt_authn"),
    ("native-cache-hit", "mg-cache-hit", "cache HIT: meshguard vs native cache filter"),
    ("native-cache-hit", "trivial-reply", "cache HIT floor: a wasm filter that only answers vs native cache filter"),
    ("native-cache-hit", "trivial-hit-floor", "cache HIT floor with a hit's host calls and headers vs native cache filter"),
    ("trivial-reply", "mg-cache-hit", "cache HIT: meshguard vs the wasm floor"),
    ("trivial-reply", "trivial-hit-floor", "cache HIT: a hit's host calls and headers (no lookup) over answering only"),
    ("trivial-hit-floor", "mg-cache-hit", "cache HIT: meshguard vs the floor of its host calls and headers"),
    ("grpc-passthrough", "mg-grpc-ratelimit", "gRPC over HTTP/2: meshguard rate limit vs passthrough"),
]


# Distinct-token scenarios must measure signature checks, not the verified-token cache: each wrk
# thread cycles more tokens than the cache holds (FIFO), so no request may be a cache hit, and every
# check must have gone to Envoy's native verify_signature.
# The issue's reference: a wasm filter reading one header cost ~12 us of CPU per request on its host
# (Envoy 1.40 / V8); its absolute budgets (+3 us, +5 us) are read against that.
ISSUE_TRIVIAL_US = 12

DISTINCT_ZERO = r"^wasmcustom\.meshguard\.jwt\.bench\.(cache_hit|signature_checks_wasm)$"


def build_scenarios(mg_wasm, trivial_wasm, tokens_fixture, fixture_jwks, distinct):
    """`distinct`: {"RS256": (jwk, tokens), "ES256": (jwk, tokens)}."""
    jwks = {"keys": [k for k in fixture_jwks["keys"] if k["kty"] in ("RSA", "EC")] + [j for j, _ in distinct.values()]}
    route = {"name": "bench", "match": {"path_prefix": "/"}}
    rl = [{"name": "all", "capacity": 1000000000, "refill_tokens": 1000000000, "refill_interval": "1s"}]
    rl_key = [dict(rl[0], name="per-key", key=[{"header": "x-api-key"}])]
    provider = {"bench": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"inline": jwks}}}
    breaker = {"consecutive_failures": 5, "open_duration": "5s"}
    cache = {"methods": ["GET", "HEAD"]}
    # Route selection at scale: 1,000 routes told apart by a header, each with a limit.
    many_routes = {"routes": [{"name": f"t{i}", "match": {"headers": [{"name": "x-tenant", "exact": f"t{i}"}]},
                               "rate_limit": rl} for i in range(1000)]}

    def mg(doc):
        return [wasm_filter("meshguard", mg_wasm, "meshguard", json.dumps(doc))]

    def mg_route(**policies):
        doc = {"routes": [dict(route, **policies)]}
        if "jwt" in policies:
            doc["jwt_providers"] = provider
        return mg(doc)

    mg_global = mg({"rate_limit_service": {"cluster": RLS_CLUSTER, "domain": RLS_DOMAIN, "timeout": RLS_TIMEOUT,
                                           "failure_mode": "allow"},
                    "routes": [dict(route, rate_limit=[{"name": "all", "scope": "global"}])]})
    rs = {"Authorization": "Bearer " + tokens_fixture["valid_RS256"]}
    es = {"Authorization": "Bearer " + tokens_fixture["valid_ES256"]}
    jwt = {"providers": ["bench"]}
    S = Scenario
    return [
        S("passthrough", "no HTTP filter but the router", []),
        S("trivial-wasm", "reference wasm filter reading one header", [
            wasm_filter("trivial", trivial_wasm, "trivial", "")], headers={"x-api-key": "k1"}),
        S("trivial-reply", "reference wasm filter answering every request itself (the floor of a wasm cache hit)",
          [wasm_filter("trivial", trivial_wasm, "trivial", "reply")], headers={"x-api-key": "k1"},
          group="cache", expect_upstream="none"),
        S("trivial-rl-floor", "reference wasm filter making the host calls of an exact shared bucket with "
          "IETF headers (all request headers, clock, shared-data get, compare-and-swap set, the two headers "
          "meshguard sends), same requests as meshguard's: "
          "the floor of the rate-limit target", [wasm_filter("trivial", trivial_wasm, "trivial",
                                                              "all_headers,shared,time,rl_headers")],
          probe=rl_floor_probe),
        S("trivial-rl-floor-noheaders", "reference wasm filter making the host calls of an exact shared bucket "
          "(all request headers, clock, shared-data get, compare-and-swap set)", [wasm_filter("trivial", trivial_wasm, "trivial",
                                                                        "all_headers,shared,time")]),
        S("trivial-breaker-floor", "reference wasm filter making the host calls of a healthy breaker (all "
          "request headers, two shared-data reads of a key never written, the response's :status)",
          [wasm_filter("trivial", trivial_wasm, "trivial", "all_headers,shared_absent*2,status")]),
        S("mg-nopolicy", "meshguard, one route, no policy", mg_route()),
        S("mg-nopolicy-token", "meshguard, one route, no policy, requests carrying the RS256 token "
          "(the baseline of the JWT target: same request bytes)", mg_route(), headers=rs),
        S("mg-ratelimit", "meshguard rate limit, one bucket, all pass", mg_route(rate_limit=rl),
          group="ratelimit", probe=mg_ratelimit_probe),
        S("native-ratelimit", "local_ratelimit, all pass", [native_local_ratelimit()],
          group="ratelimit", expect_stat=r"http_local_rate_limit\.ok$"),
        S("mg-ratelimit-noheaders", "meshguard rate limit, one bucket, all pass, rate_limit_headers none "
          "(like local_ratelimit's default)", mg({"rate_limit_headers": "none", "routes": [dict(route, rate_limit=rl)]}),
          group="ratelimit", expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.allowed$"),
        S("mg-ratelimit-legacy", "meshguard rate limit, one bucket, all pass, X-RateLimit-* headers",
          mg({"rate_limit_headers": "legacy", "routes": [dict(route, rate_limit=rl)]}), group="ratelimit",
          probe=legacy_headers_probe),
        S("native-ratelimit-headers", "local_ratelimit, all pass, X-RateLimit-* headers (DRAFT_VERSION_03)",
          [native_local_ratelimit(headers=True)], group="ratelimit", expect_stat=r"http_local_rate_limit\.ok$",
          probe=legacy_headers_probe),
        S("mg-routes-first", "meshguard, 1,000 routes matched by an x-tenant header, request for the first",
          mg(many_routes), headers={"x-tenant": "t0"}, group="ratelimit",
          expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.t0\.all\.allowed$"),
        S("mg-routes-last", "meshguard, 1,000 routes matched by an x-tenant header, request for the last",
          mg(many_routes), headers={"x-tenant": "t999"}, group="ratelimit",
          expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.t999\.all\.allowed$"),
        S("mg-ratelimit-key", "meshguard rate limit keyed by x-api-key", mg_route(rate_limit=rl_key),
          headers={"x-api-key": "k1"}, group="ratelimit", probe=mg_ratelimit_probe),
        S("native-ratelimit-key", "local_ratelimit keyed by x-api-key (a bucket per value), all pass",
          [native_local_ratelimit(key_header="x-api-key")], headers={"x-api-key": "k1"}, group="ratelimit",
          expect_stat=r"http_local_rate_limit\.ok$"),
        S("mg-ratelimit-global", "meshguard global limit: one RLS call per request, all pass", mg_global,
          group="ratelimit-global", probe=mg_global_probe, uses_rls=True,
          expect_stat=r"^wasmcustom\.meshguard\.rls\.bench\.ok$",
          expect_zero=(r"^wasmcustom\.meshguard\.(rls\.bench\.(error|timeout|over_limit|failure_mode_\w+)"
                       r"|ratelimit\.bench\.all\.errors)$")),
        S("native-ratelimit-global", "ratelimit filter on the same RLS, same descriptor, all pass",
          [native_global_ratelimit()], group="ratelimit-global", uses_rls=True,
          route_extra={"rate_limits": NATIVE_RATE_LIMITS},
          expect_stat=r"^cluster\.upstream\.ratelimit\.ok$",
          expect_zero=r"^cluster\.upstream\.ratelimit\.(error|failure_mode_allowed|over_limit)$"),
        S("mg-jwt-rs256", "meshguard JWT RS256, one repeated token", mg_route(jwt=jwt),
          headers=rs, group="jwt-rs256", probe=jwt_probe),
        S("native-jwt-rs256", "jwt_authn RS256, repeated token, no cache", [native_jwt_authn(jwks, False)],
          headers=rs, group="jwt-rs256", probe=jwt_probe, expect_stat=r"jwt_authn\.allowed$"),
        S("native-jwt-rs256-cache", "jwt_authn RS256, repeated token, jwt_cache_config",
          [native_jwt_authn(jwks, True)], headers=rs, group="jwt-rs256", probe=jwt_probe,
          expect_stat=r"jwt_authn\.jwt_cache_hit$"),
        S("mg-jwt-es256", "meshguard JWT ES256, one repeated token", mg_route(jwt=jwt),
          headers=es, group="jwt-es256", probe=jwt_probe),
        S("native-jwt-es256", "jwt_authn ES256, repeated token, no cache", [native_jwt_authn(jwks, False)],
          headers=es, group="jwt-es256", probe=jwt_probe),
        S("native-jwt-es256-cache", "jwt_authn ES256, repeated token, jwt_cache_config",
          [native_jwt_authn(jwks, True)], headers=es, group="jwt-es256", probe=jwt_probe),
        *[sc for alg, (_, toks) in distinct.items() for sc in (
            S(f"mg-jwt-{alg.lower()}-distinct", f"meshguard JWT {alg}, {len(toks)} distinct tokens cycled",
              mg_route(jwt=jwt), tokens=toks, group="jwt-distinct", probe=jwt_probe,
              expect_stat=r"^wasmcustom\.meshguard\.jwt\.bench\.signature_checks_native$",
              expect_zero=DISTINCT_ZERO),
            S(f"native-jwt-{alg.lower()}-distinct", f"jwt_authn {alg}, {len(toks)} distinct tokens, no cache",
              [native_jwt_authn(jwks, False)], tokens=toks, group="jwt-distinct", probe=jwt_probe))],
        S("trivial-hit-floor", "reference wasm filter doing a cache hit's host calls without a lookup (read "
          "every request header, the clock, a 558-byte shared-data value; answer with the 8 headers and body "
          "meshguard's hit sends): the floor of meshguard's hit", [wasm_filter("trivial", trivial_wasm, "trivial",
                                                                             "hit_floor")],
          group="cache", probe=hit_floor_probe, expect_upstream="none"),
        S("mg-cache-hit", "meshguard cache, every request a HIT", mg_route(cache=cache),
          group="cache", probe=mg_cache_probe, expect_upstream="none"),
        S("native-cache-hit", "cache filter (SimpleHttpCache), every request a HIT", [native_cache()],
          group="cache", probe=native_cache_probe, expect_upstream="none"),
        S("mg-breaker", "meshguard circuit breaker, CLOSED", mg_route(circuit_breaker=breaker)),
        S("grpc-passthrough", f"gRPC unary calls over HTTP/2 both sides (h2load, {GRPC_STREAMS} streams per "
          "connection), no HTTP filter but the router", [], grpc=True, probe=grpc_probe),
        S("mg-grpc-ratelimit", "gRPC unary calls over HTTP/2 both sides, meshguard rate limit (route "
          "`match.grpc`, one bucket), all pass",
          mg({"routes": [{"name": "bench", "match": {"grpc": {"service": "bench.v1.Bench"}}, "rate_limit": rl}]}),
          grpc=True, probe=grpc_probe, expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.allowed$"),
        S("mg-jwt-rl-breaker", "meshguard JWT RS256 (repeated) + rate limit + breaker (no cache: every request goes upstream)",
          mg_route(jwt=jwt, rate_limit=rl, circuit_breaker=breaker),
          headers=rs, probe=jwt_probe),
        S("mg-all4", "meshguard JWT RS256 (repeated) + rate limit + breaker + cache",
          mg_route(jwt=jwt, rate_limit=rl, circuit_breaker=breaker, cache=cache),
          headers=rs, probe=jwt_probe, expect_upstream="any"),
    ]


# ------------------------------------------------------------------ running

def start_scenario(sc, args, ctx):
    """Starts the scenario's proxy, checks it does what it claims, warms it up."""
    up = ctx["upstream"]
    clusters = []
    if sc.uses_rls:
        rls = ctx.get("rls")
        if rls is None:
            raise BenchError(f"the rate limit service did not start: {ctx.get('rls_error')}")
        clusters.append(static_cluster(RLS_CLUSTER, rls.port, http2=True))
    envoy = Envoy(ctx["envoy_bin"], ctx["workdir"], sc.name,
                  lambda lp, ap: proxy_bootstrap(lp, ap, up.listen_port, sc.filters, sc.route_extra, clusters,
                                                 h2=sc.grpc))
    sc.envoy = envoy
    envoy.start()
    sc.load_times.append(envoy.load_time_s)
    mark = ctx["rls"].mark() if sc.uses_rls else None
    if not sc.grpc:
        probe_status(envoy, sc.first_headers(), 200, f"{sc.name}: request")
    if sc.probe:
        sc.probe(envoy, sc)
    if sc.uses_rls:
        seen = ctx["rls"].since(mark)
        if seen["ok"] < 1 or seen["ok"] != seen["calls"]:
            raise BenchError(f"the rate limit service did not see the probe as expected: {seen}")
    check_zero_stats(sc)
    if args.warmup > 0:
        run_load(ctx, sc, envoy.listen_port, sc.script, args.warmup, args.threads, args.connections)


def check_zero_stats(sc):
    if sc.expect_zero:
        bad = {k: v for k, v in sc.envoy.stats_matching(sc.expect_zero).items() if v}
        if bad:
            raise BenchError(f"stats that must stay 0 are not: {bad} (failure-mode passes are not a measurement)")


UPSTREAM_STAT = "cluster.upstream.upstream_rq_total"  # the proxy's own count of requests sent upstream


def measure(sc, args, ctx, record=True):
    """One measured wrk run against the scenario's (running) proxy."""
    return measure_many([(sc, record)], args, ctx)[0]


def measure_many(items, args, ctx):
    """Measured wrk runs against several running proxies at the same time, one wrk each, the
    connections and threads split between them: `items` is [(scenario, record)]. Proxies measured
    together share the same CPU at the same moments, so their difference is free of the machine's
    drift (which, on these shared 2-core machines, is larger than most differences we look for).
    An item may carry a third element, the wrk script to load it with instead of its own (a
    passthrough twin sent the same requests as the scenario it is paired with)."""
    scripts = [it[2] if len(it) > 2 and it[2] else it[0].script for it in items]
    items = [(it[0], it[1]) for it in items]
    n_items = len(items)
    threads = max(1, args.threads // n_items)
    conns = max(threads, args.connections // n_items)
    pre = []
    for sc, _ in items:
        envoy = sc.envoy
        if envoy.proc.poll() is not None:
            raise BenchError(f"{sc.name}: Envoy exited (code {envoy.proc.returncode}):\n{envoy.log()[-4000:]}")
        rls = ctx.get("rls") if sc.uses_rls else None
        if rls is not None and not rls.alive():
            raise BenchError("the rate limit service exited:\n" + rls.server.log()[-3000:])
        pre.append({"rls": rls, "up": envoy.stat(UPSTREAM_STAT), "rls_mark": rls.mark() if rls else None})
    for (sc, _), p in zip(items, pre):
        p["cpu"] = sc.envoy.cpu_us()
    procs = [start_load(ctx, sc, sc.envoy.listen_port, script, args.duration, threads, conns, sc.token_cursor)
             for (sc, _), script in zip(items, scripts)]
    results = [finish_load(sc, proc, args.duration) for (sc, _), proc in zip(items, procs)]
    for (sc, _), res in zip(items, results):
        if res["token_cursor"] is not None:
            sc.token_cursor = res["token_cursor"]
    for (sc, _), p in zip(items, pre):
        p["cpu_after"] = sc.envoy.cpu_us()
    out = []
    for (sc, record), p, res in zip(items, pre, results):
        envoy, rls = sc.envoy, p["rls"]
        rls_seen = rls.since(p["rls_mark"]) if rls else None
        up_after = envoy.stat(UPSTREAM_STAT)
        if envoy.proc.poll() is not None:
            raise BenchError(f"{sc.name}: Envoy exited during the run:\n{envoy.log()[-4000:]}")
        n = res["requests"]
        if n == 0:
            raise BenchError(f"{sc.name}: wrk completed no request")
        if res["non_2xx"] > 0.01 * n:
            raise BenchError(f"{sc.name}: {res['non_2xx']} of {n} responses were not 2xx/3xx; "
                             f"the scenario is misconfigured. Envoy log tail:\n{envoy.log()[-3000:]}")
        if res["socket_errors"] > 0.01 * n:
            raise BenchError(f"{sc.name}: {res['socket_errors']} socket errors for {n} requests")
        res["cpu_us_per_req"] = (p["cpu_after"] - p["cpu"]) / n
        res["upstream_fraction"] = (up_after - p["up"]) / n
        res["measured_with"] = [o.name for o, _ in items if o is not sc]
        if sc.expect_upstream == "none" and res["upstream_fraction"] > 0.01:
            raise BenchError(f"cache scenario: {res['upstream_fraction']:.1%} of requests reached the upstream")
        if sc.expect_upstream == "all" and res["upstream_fraction"] < 0.95:
            raise BenchError(f"only {res['upstream_fraction']:.1%} of requests reached the upstream")
        if sc.expect_stat:
            st = envoy.stats_matching(sc.expect_stat)
            if not st or max(st.values()) == 0:
                raise BenchError(f"stat /{sc.expect_stat}/ is 0 or missing: the filter did not act ({st})")
        check_zero_stats(sc)
        if rls_seen is not None:
            # Every completed request made one call, logged before its answer was sent: at least n
            # calls for our descriptor, each answered OK by our limit, and no other call.
            if rls_seen["ok"] < n or rls_seen["ok"] != rls_seen["calls"]:
                raise BenchError(f"the rate limit service logged {rls_seen['ok']} matching OK calls of "
                                 f"{rls_seen['calls']} for {n} completed requests: {rls_seen['other']}")
            if rls_seen["other"]:
                log(f"bench: {sc.name}: the rate limit service also logged: {rls_seen['other']}")
            res["rls_calls"] = rls_seen["calls"]
            res["rls_answers_dropped"] = rls_seen["dropped"]
            res["rls_calls_per_req"] = rls_seen["calls"] / n
            res["rls_cpu_us_per_req"] = rls_seen["cpu_us"] / n
        try:  # meshguard's own counters (e.g. JWT cache hits), for the JSON report
            res["wasm_stats"] = {k: v for k, v in envoy.stats_matching("^wasmcustom\\.").items() if v}
        except OSError:
            res["wasm_stats"] = {}
        if record:
            sc.rounds.append(res)
        out.append(res)
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def measure_rss(args, ctx, scenarios_by_name):
    """VmRSS at --concurrency 2 after ready, and after a short load."""
    out = {}
    up = ctx["upstream"]
    for name in ("passthrough", "trivial-wasm", "mg-nopolicy", "mg-all4"):
        sc = scenarios_by_name[name]
        envoy = Envoy(ctx["envoy_bin"], ctx["workdir"], name + "-c2",
                      lambda lp, ap, sc=sc: proxy_bootstrap(lp, ap, up.listen_port, sc.filters), concurrency=2)
        try:
            envoy.start()
            idle = envoy.rss_kb()
            run_wrk(ctx["wrk"], envoy.listen_port, sc.script, max(1, args.warmup), args.threads, args.connections,
                    sc)
            loaded = envoy.rss_kb()
            out[name] = {"rss_ready_kb": idle, "rss_after_load_kb": loaded, "load_time_s": envoy.load_time_s}
        finally:
            envoy.stop()
    return out


def machine_info(envoy_bin):
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ver = subprocess.run([envoy_bin, "--version"], capture_output=True, text=True).stdout.strip()
    m = re.search(r"version: (\S+)", ver)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "envoy_version": m.group(1) if m else ver,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "git": git or "?"}


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def best_overhead(s):
    """The paired overhead when measured (less sensitive to machine drift), else the difference of medians."""
    if s is None:
        return None
    return s["paired_overhead_us"] if s.get("paired_overhead_us") is not None else s["overhead_us"]


def evaluate(summary, comp=None):
    """The issue's targets. Each uses the head-to-head twin comparison when it ran (b - a measured at
    the same moments on the same CPU), else the paired overheads of separate runs."""
    comp = comp or {}

    def ov(name):
        return best_overhead(summary.get(name))

    def cpu(name):
        s = summary.get(name)
        return None if s is None else s["cpu_us_per_req"]

    def rps(name):
        s = summary.get(name)
        return None if s is None else s["rps"]

    def twin(a, b):
        c = comp.get(f"{b} - {a}")
        return None if c is None else c["diff_us"]

    def twin_note(a, b):
        c = comp.get(f"{b} - {a}")
        return "" if c is None else f" [twins: {c['min']:+.1f}..{c['max']:+.1f} over {c['n']} rounds]"

    def check(label, value, limit, ok, detail):
        return {"target": label, "measured": value, "limit": limit,
                "holds": None if value is None or limit is None else ok(value, limit), "detail": detail}

    nop, triv = ov("mg-nopolicy"), ov("trivial-wasm")
    t = []
    d = twin("trivial-wasm", "mg-nopolicy")
    if d is not None and triv is not None:
        t.append(check("no-policy overhead <= 1.2x trivial wasm filter overhead", d, 0.2 * triv,
                       lambda v, l: v <= l,
                       f"no-policy minus trivial {d:+.1f} us (twins){twin_note('trivial-wasm', 'mg-nopolicy')}; "
                       f"allowed +{0.2 * triv:.1f} us (0.2 x trivial's {triv:.1f} us overhead)"))
    else:
        t.append(check("no-policy overhead <= 1.2x trivial wasm filter overhead", nop,
                       None if triv is None else 1.2 * triv, lambda v, l: v <= l,
                       f"mg-nopolicy {fmt(nop)} us vs trivial {fmt(triv)} us"
                       + ("" if not nop or not triv else f" (ratio {nop / triv:.2f}x)")))
    for name, base, label, extra in (
            ("mg-ratelimit", "mg-nopolicy", "rate limit (default: IETF RateLimit headers)", 3),
            ("mg-ratelimit-noheaders", "mg-nopolicy", "rate limit without headers (local_ratelimit's default)", 3),
            ("mg-jwt-rs256", "mg-nopolicy-token", "JWT RS256 repeated", 5)):
        d = twin(base, name)
        if d is not None:
            # The budgets are absolute microseconds on the issue's host, where a wasm filter
            # reading one header cost ~12 us; shown also scaled to this host's trivial filter
            # (for information: the verdict is on the absolute figure).
            scaled = ("" if not triv else
                      f"; scaled to this host (trivial filter {triv:.1f} us vs the issue's ~{ISSUE_TRIVIAL_US} us): "
                      f"+{extra * triv / ISSUE_TRIVIAL_US:.1f} us, "
                      f"{'within' if d <= extra * triv / ISSUE_TRIVIAL_US else 'over'}")
            floor = {"mg-ratelimit": "trivial-rl-floor",
                     "mg-ratelimit-noheaders": "trivial-rl-floor-noheaders"}.get(name)
            f_over, mg_over = twin("trivial-wasm", floor), twin(floor, name)
            floor_note = ("" if f_over is None or mg_over is None else
                          f"; the floor of its host calls ({floor}) costs {f_over:+.1f} us over the trivial "
                          f"filter, meshguard {mg_over:+.1f} us over that floor")
            t.append(check(f"{label} overhead <= no-policy + {extra} us", d, extra, lambda v, l: v <= l,
                           f"{name} minus {base} {d:+.1f} us (twins){twin_note(base, name)}{scaled}{floor_note}"))
        else:
            o = ov(name)
            t.append(check(f"{label} overhead <= no-policy + {extra} us", o, None if nop is None else nop + extra,
                           lambda v, l: v <= l, f"{name} {fmt(o)} us vs no-policy {fmt(nop)} us"))
    md, nd = ov("mg-jwt-rs256-distinct"), ov("native-jwt-rs256-distinct")
    d = twin("native-jwt-rs256-distinct", "mg-jwt-rs256-distinct")
    if d is not None and nd is not None:
        t.append(check("distinct RS256 overhead <= 1.5x native jwt_authn (no cache)", d, 0.5 * nd,
                       lambda v, l: v <= l,
                       f"meshguard minus native {d:+.1f} us (twins){twin_note('native-jwt-rs256-distinct', 'mg-jwt-rs256-distinct')}; "
                       f"allowed +{0.5 * nd:.1f} us (0.5 x native's {nd:.1f} us overhead); ratio "
                       f"{(nd + d) / nd:.2f}x"))
    else:
        t.append(check("distinct RS256 overhead <= 1.5x native jwt_authn (no cache)", md,
                       None if nd is None else 1.5 * nd, lambda v, l: v <= l,
                       f"meshguard {fmt(md)} us vs native {fmt(nd)} us"
                       + ("" if not md or not nd else f" (ratio {md / nd:.2f}x)")))
    mc, nc = cpu("mg-cache-hit"), cpu("native-cache-hit")
    d = twin("native-cache-hit", "mg-cache-hit")
    if d is not None:
        c = comp["mg-cache-hit - native-cache-hit"]
        t.append(check("cache HIT CPU/request <= native cache HIT", d, 0.0, lambda v, l: v <= l,
                       f"meshguard minus native {d:+.1f} us/req (twins){twin_note('native-cache-hit', 'mg-cache-hit')}; "
                       f"{c['b_us']:.1f} vs {c['a_us']:.1f} us/req ({c['b_us'] / c['a_us']:.2f}x)"
                       + ("" if twin("native-cache-hit", "trivial-reply") is None else
                          f"; a wasm filter that only answers (trivial-reply) costs "
                          f"{twin('native-cache-hit', 'trivial-reply'):+.1f} us/req over native, meshguard "
                          f"{twin('trivial-reply', 'mg-cache-hit'):+.1f} us/req over that floor"
                          if twin("trivial-reply", "mg-cache-hit") is not None else "")
                       + ("" if twin("trivial-hit-floor", "mg-cache-hit") is None else
                          f"; a filter making a hit's host calls and sending its headers without any lookup "
                          f"(trivial-hit-floor) {twin('native-cache-hit', 'trivial-hit-floor'):+.1f} us/req over "
                          f"native, meshguard {twin('trivial-hit-floor', 'mg-cache-hit'):+.1f} us/req over it"
                          if twin("native-cache-hit", "trivial-hit-floor") is not None else "")))
    else:
        mo, no = ov("mg-cache-hit"), ov("native-cache-hit")
        t.append(check("cache HIT CPU/request <= native cache HIT", mo, no, lambda v, l: v <= l,
                       f"meshguard {fmt(mc)} us/req vs native {fmt(nc)} us/req"
                       + ("" if not mc or not nc else f" (ratio {mc / nc:.2f}x)")
                       + f"; overheads {fmt(mo)} vs {fmt(no)} us"))
    d = twin("mg-routes-first", "mg-routes-last")
    if d is not None:
        t.append(check("1,000th route costs <= the first + 1 us", d, 1.0, lambda v, l: v <= l,
                       f"last minus first {d:+.1f} us (twins){twin_note('mg-routes-first', 'mg-routes-last')}"))
    pt = rps("passthrough")
    # The issue's target: JWT + rate limit + breaker on one route, every
    # request going upstream. (all-four adds the cache: every request is a
    # hit, faster than passthrough; shown for reference.)
    for name, label in (("mg-jwt-rl-breaker", "JWT + rate limit + breaker"),
                        ("mg-all4", "all four (cache hits)")):
        r = rps(name)
        ratio = (summary.get(name) or {}).get("paired_rps_ratio")
        if ratio is not None:  # req/s over its passthrough twin's, same moments, same CPU
            triv_ratio = (summary.get("trivial-wasm") or {}).get("paired_rps_ratio")
            t.append(check(f"{label} requests/s >= 80% of passthrough", ratio, 0.8, lambda v, l: v >= l,
                           f"{name} {ratio:.0%} of its passthrough twin's req/s (median over rounds)"
                           + ("" if triv_ratio is None else
                              f"; the trivial wasm filter alone: {triv_ratio:.0%}")))
            continue
        t.append(check(f"{label} requests/s >= 80% of passthrough", r,
                       None if pt is None else 0.8 * pt, lambda v, l: v >= l,
                       f"{name} {fmt(r, 0)} req/s vs passthrough {fmt(pt, 0)} req/s"
                       + ("" if not r or not pt else f" ({r / pt:.0%})")))
    return t


def targets_table(targets, title):
    """The targets as markdown lines (a blank line after)."""
    L = [f"| {title} | holds | detail |", "|---|---|---|"]
    for t in targets:
        h = {True: "yes", False: "**NO**", None: "n/a"}[t["holds"]]
        L.append(f"| {t['target']} | {h} | {t['detail']} |")
    L.append("")
    return L


def render(info, args, summary, scenarios, targets, extra, comp=None):
    L = []
    L.append("# meshguard benchmark results\n")
    L.append(f"- date: {info['date']}; git {info['git']}")
    L.append(f"- machine: {info['nproc']} CPUs, {info['cpu_model']}, Linux {info['kernel']}")
    L.append(f"- Envoy {info['envoy_version']}, proxy `--concurrency 1`, V8 runtime; one shared upstream "
             f"Envoy (direct_response 200)")
    L.append(f"- load: wrk -t{args.threads} -c{args.connections}, {args.duration}s per scenario per round, "
             f"{args.rounds} interleaved round(s); each proxy warmed up {args.warmup}s after start and kept "
             f"running across rounds; medians over rounds")
    if PIN["proxy"]:
        L.append(f"- CPUs: proxies under test on CPU {','.join(map(str, sorted(PIN['proxy'])))}; wrk, the upstream "
                 f"and the rate limit service on CPU {','.join(map(str, sorted(PIN['others'])))}")
    if args.pairing == "twin":
        L.append("- pairing: every scenario runs at the same time as a passthrough proxy (its twin), each with "
                 "its own wrk (half the threads and connections) sending the same requests (the scenario's "
                 "headers and tokens), both proxies on the same CPU; the passthrough row is the median of the "
                 "twin runs with plain requests")
    if extra.get("rls_bin"):
        L.append(f"- rate limit service (global scenarios): tests/rls-server {extra['rls_bin']['kind']}, "
                 f"limitador counting in memory, on 127.0.0.1, shared by both global scenarios")
    if extra.get("note"):
        L.append(f"- note: {extra['note']}")
    L.append(f"- meshguard.wasm: {extra['wasm_size']:,} bytes (sha256 {extra['wasm_sha256'][:12]}); "
             f"trivial filter: {extra['trivial_size']:,} bytes")
    L.append("")
    L.append("CPU/req = proxy Envoy utime+stime / requests completed (median over rounds). Overhead = median "
             "CPU/req minus median passthrough CPU/req. Paired overhead = median over rounds of (CPU/req minus "
             + ("its passthrough twin's, measured at the same moments on the same CPU" if args.pairing == "twin"
                else "a passthrough run made just before it") +
             "), with its range: the estimate the targets use, since it cancels most of the machine's drift. Upstream = share of requests that reached the upstream.\n")
    names = {sc.name for sc in scenarios}
    L.append("| scenario | what | CPU us/req | overhead us/req | paired overhead us/req [range] | min CPU us/req | req/s | p50 ms | p99 ms | upstream | per-round CPU us/req |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for sc in scenarios:
        s = summary.get(sc.name)
        if s is None:
            L.append(f"| {sc.name} | {sc.desc} | FAILED | | | | | | | | {(sc.error or '').splitlines()[0][:100]} |")
            continue
        per = ", ".join(f"{r['cpu_us_per_req']:.1f}" for r in sc.rounds)
        paired = "-" if not sc.paired else (f"{fmt(s['paired_overhead_us'])} "
                                            f"[{min(sc.paired):.0f}..{max(sc.paired):.0f}]")
        L.append(f"| {sc.name} | {sc.desc} | {fmt(s['cpu_us_per_req'])} | {fmt(s['overhead_us'])} | {paired} | "
                 f"{fmt(s['cpu_us_per_req_min'])} | "
                 f"{fmt(s['rps'], 0)} | {fmt(s['p50_ms'], 2)} | {fmt(s['p99_ms'], 2)} | "
                 f"{s['upstream_fraction']:.0%} | {per} |")
    L.append("")
    L.append("## meshguard vs native\n")
    L.append("Overheads are the paired overheads (when measured); CPU/req is the median absolute cost. "
             "Ratios are meshguard / native (overhead ratio only when the native overhead is above 0.5 us).\n")
    L.append("| comparison | meshguard overhead us | native overhead us | meshguard / native | "
             "meshguard CPU us/req | native CPU us/req | CPU/req meshguard / native |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    pairs = [("rate limit", "mg-ratelimit", "native-ratelimit"),
             ("rate limit keyed by header", "mg-ratelimit-key", "native-ratelimit-key"),
             ("global rate limit (same RLS) vs ratelimit filter", "mg-ratelimit-global", "native-ratelimit-global"),
             ("JWT RS256 repeated vs jwt_authn no cache", "mg-jwt-rs256", "native-jwt-rs256"),
             ("JWT RS256 repeated vs jwt_authn + cache", "mg-jwt-rs256", "native-jwt-rs256-cache"),
             ("JWT ES256 repeated vs jwt_authn no cache", "mg-jwt-es256", "native-jwt-es256"),
             ("JWT ES256 repeated vs jwt_authn + cache", "mg-jwt-es256", "native-jwt-es256-cache"),
             ("JWT RS256 distinct tokens vs jwt_authn no cache", "mg-jwt-rs256-distinct", "native-jwt-rs256-distinct"),
             ("JWT ES256 distinct tokens vs jwt_authn no cache", "mg-jwt-es256-distinct", "native-jwt-es256-distinct"),
             ("cache HIT", "mg-cache-hit", "native-cache-hit")]

    def cpu(s):
        return None if s is None else s["cpu_us_per_req"]

    for label, a, b in pairs:
        sa, sb = summary.get(a), summary.get(b)
        if a not in names or b not in names:
            continue  # not run (--only)
        if not sa or not sb:
            L.append(f"| {label} | {fmt(best_overhead(sa))} | {fmt(best_overhead(sb))} | - | "
                     f"{fmt(cpu(sa))} | {fmt(cpu(sb))} | - |")
            continue
        oa, ob = best_overhead(sa), best_overhead(sb)
        ratio = oa / ob if ob is not None and oa is not None and ob > 0.5 else None
        L.append(f"| {label} | {fmt(oa)} | {fmt(ob)} | "
                 f"{'-' if ratio is None else f'{ratio:.2f}x'} | {fmt(cpu(sa))} | {fmt(cpu(sb))} | "
                 f"{cpu(sa) / cpu(sb):.2f}x |")
    L.append("")
    rls_rows = [sc for sc in scenarios if sc.uses_rls and summary.get(sc.name)]
    if rls_rows:
        L.append("## Global rate limits: the rate limit service\n")
        kind = (extra.get("rls_bin") or {}).get("kind", "?")
        L.append(f"Both scenarios call the same service (tests/rls-server, limitador counting in memory, {kind}), "
                 "which logs one line per call; a run fails unless it logged at least one matching OK "
                 "call per completed request and nothing else, and unless the proxy's error / timeout / "
                 "failure-mode stats stay 0. The service's own CPU is not in the proxy's CPU/req.\n")
        L.append("| scenario | RLS calls / request | RLS CPU us/req | proxy CPU us/req | req/s | p50 ms | p99 ms |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        pt = summary.get("passthrough")
        if pt:
            L.append(f"| passthrough (no call) | 0 | - | {fmt(pt['cpu_us_per_req'])} | {fmt(pt['rps'], 0)} | "
                     f"{fmt(pt['p50_ms'], 2)} | {fmt(pt['p99_ms'], 2)} |")
        for sc in rls_rows:
            s = summary[sc.name]
            L.append(f"| {sc.name} | {fmt(s.get('rls_calls_per_req'), 3)} | {fmt(s.get('rls_cpu_us_per_req'))} | "
                     f"{fmt(s['cpu_us_per_req'])} | {fmt(s['rps'], 0)} | {fmt(s['p50_ms'], 2)} | "
                     f"{fmt(s['p99_ms'], 2)} |")
        L.append("")
    diag = [sc for sc in scenarios if sc.group == "diag" and summary.get(sc.name)]
    if diag and summary.get("trivial-wasm"):
        L.append(f"## Host call prices (--diag: trivial filter + {DIAG_REPEAT} calls of one kind per request, "
                 "minus trivial, divided by the count)\n")
        L.append("| host call | us per call |")
        L.append("|---|---:|")
        base = best_overhead(summary["trivial-wasm"])
        for sc in diag:
            what = sc.desc.replace(f"trivial filter + {DIAG_REPEAT} x ", "")
            L.append(f"| {what} | {(best_overhead(summary[sc.name]) - base) / DIAG_REPEAT:.2f} |")
        L.append("")
    if comp:
        L.append("## Head to head (twins: both proxies loaded at the same moments on the same CPU)\n")
        L.append("| comparison | b minus a, us/req (median) | range | rounds | a us/req | b us/req |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for c in comp.values():
            L.append(f"| {c['label']} (a = {c['a']}, b = {c['b']}) | {c['diff_us']:+.1f} | "
                     f"{c['min']:+.1f}..{c['max']:+.1f} | {c['n']} | {c['a_us']:.1f} | {c['b_us']:.1f} |")
        L.append("")
    L.append("## Targets (ratios measured in this run)\n")
    L.extend(targets_table(targets, "target"))
    L.append("## Resources\n")
    L.append(f"- wasm module size: meshguard {extra['wasm_size']:,} bytes; trivial filter {extra['trivial_size']:,} bytes")
    rss = extra.get("rss") or {}
    if rss:
        L.append("")
        L.append("| Envoy `--concurrency 2` | VmRSS after ready | VmRSS after 1 s+ of load | start to /ready |")
        L.append("|---|---:|---:|---:|")
        for name, r in rss.items():
            L.append(f"| {name} | {r['rss_ready_kb'] / 1024:.1f} MiB | {r['rss_after_load_kb'] / 1024:.1f} MiB | "
                     f"{r['load_time_s'] * 1000:.0f} ms |")
    L.append("")
    L.append("| config load time (`--concurrency 1`, process start to /ready) | ms |")
    L.append("|---|---:|")
    for sc in scenarios:
        if sc.load_times and sc.name in ("passthrough", "trivial-wasm", "mg-nopolicy", "mg-jwt-rs256-distinct",
                                         "mg-all4", "native-jwt-rs256"):
            L.append(f"| {sc.name} | {median(sc.load_times) * 1000:.0f} |")
    L.append("")
    return "\n".join(L)


README_START = "<!-- bench:latest:start (written by make bench: bench/bench.py) -->"
README_END = "<!-- bench:latest:end -->"


def render_readme(info, args, summary, scenarios, targets, extra, comp):
    """The README's "latest run" block: machine, versions, every scenario's
    figures, the head-to-head twins and the targets (the whole record is
    bench/results.md)."""
    L = [README_START, ""]
    L.append(f"Latest full run: {info['date']}, git {info['git']}; {info['nproc']} CPUs ({info['cpu_model']}), "
             f"Linux {info['kernel']}; Envoy {info['envoy_version']} (V8), proxy `--concurrency 1`; "
             f"wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds of {args.duration} s; "
             f"meshguard.wasm {extra['wasm_size']:,} bytes. Overhead = CPU per request minus the passthrough "
             "twin's, measured at the same moments on the same CPU (median over rounds, range in brackets).")
    L.append("")
    L.append("| scenario | what | CPU us/req | overhead us/req [range] | req/s | p99 ms |")
    L.append("|---|---|---:|---:|---:|---:|")
    for sc in scenarios:
        s = summary.get(sc.name)
        if s is None:
            continue
        paired = "-" if not sc.paired else (f"{fmt(s['paired_overhead_us'])} "
                                            f"[{min(sc.paired):.0f}..{max(sc.paired):.0f}]")
        L.append(f"| {sc.name} | {sc.desc} | {fmt(s['cpu_us_per_req'])} | {paired} | {fmt(s['rps'], 0)} | "
                 f"{fmt(s['p99_ms'], 2)} |")
    L.append("")
    if comp:
        L.append("| head to head (twins) | b minus a, us/req [range] |")
        L.append("|---|---:|")
        for c in comp.values():
            L.append(f"| {c['label']} | {c['diff_us']:+.1f} [{c['min']:+.1f}..{c['max']:+.1f}] |")
        L.append("")
    rss = extra.get("rss") or {}
    loads = [(sc.name, median(sc.load_times) * 1000) for sc in scenarios
             if getattr(sc, "load_times", None) and sc.name in ("passthrough", "trivial-wasm", "mg-nopolicy", "mg-all4")]
    if rss or loads:
        parts = [f"{name} {r['rss_after_load_kb'] / 1024:.0f} MiB" for name, r in rss.items()]
        line = "Resources: module " + f"{extra['wasm_size']:,} bytes"
        if parts:
            line += "; Envoy RSS at `--concurrency 2` after load: " + ", ".join(parts)
        if loads:
            line += "; config load (start to /ready): " + ", ".join(f"{n} {ms:.0f} ms" for n, ms in loads)
        L.append(line + ".")
        L.append("")
    L.extend(targets_table(targets, "target (issue #8)"))
    L.append(README_END)
    return "\n".join(L)


def update_readme(path, block):
    """Replaces the block between the markers of `path`; returns False (and
    changes nothing) when the file or its markers are missing."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    text = text[:start] + block + text[end + len(README_END):]
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 2 s per scenario (smoke run)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=2, help="seconds of measured load per scenario per round")
    ap.add_argument("--pairing", choices=("twin", "before", "none"), default="twin",
                    help="twin (default): each scenario runs at the same time as a passthrough proxy on the same "
                         "CPU, its overhead is the difference; before: a passthrough run right before each "
                         "scenario run; none: overheads from medians only")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load after a proxy starts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=4400,
                    help="distinct tokens for the *-distinct scenarios: each wrk thread must cycle more than "
                         "the verified-token cache holds (1024), whatever the other threads do")
    ap.add_argument("--only", default="", help="comma-separated scenario names (passthrough is always included)")
    ap.add_argument("--diag", action="store_true",
                    help="also price single host calls with variants of the trivial filter")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the proxy to its own CPU (load generator and upstream on the others)")
    ap.add_argument("--no-rss", action="store_true", help="skip the --concurrency 2 memory measurement")
    ap.add_argument("--no-build", action="store_true", help="do not (re)build bench/trivial-filter nor the release rate limit service")
    ap.add_argument("--out", default=HERE, help="directory for results.md and results.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, Envoy logs)")
    ap.add_argument("--readme", default=os.path.join(os.path.dirname(HERE), "README.md"),
                    help="README whose latest-run block a complete run rewrites (not with --quick, --only, "
                         "--diag, or a failed scenario)")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
    set_pinning(not args.no_pin)

    envoy_bin = os.environ.get("ENVOY_BIN", "")
    if not envoy_bin or not os.access(envoy_bin, os.X_OK):
        raise BenchError(f"set ENVOY_BIN to the Envoy binary (got {envoy_bin!r}); `make bench` does it")
    mg_src = os.environ.get("MESHGUARD_WASM") or os.path.join(ROOT, "target/wasm32-wasip1/release/meshguard.wasm")
    if not os.path.exists(mg_src):
        raise BenchError(f"{mg_src} is missing: cargo build --release --target wasm32-wasip1 (or make build)")
    wrk = ensure_wrk()
    ensure_cryptography()
    trivial_src = ensure_trivial_wasm(args.no_build)

    workdir = tempfile.mkdtemp(prefix="meshguard-bench-")
    ok = False
    try:
        # Snapshot the modules: others may rebuild target/ while we run.
        mg_wasm = os.path.join(workdir, "meshguard.wasm")
        shutil.copyfile(mg_src, mg_wasm)
        trivial_wasm = os.path.join(workdir, "trivial_filter.wasm")
        shutil.copyfile(trivial_src, trivial_wasm)
        extra = {"wasm_size": os.path.getsize(mg_wasm), "wasm_sha256": sha256_file(mg_wasm),
                 "trivial_size": os.path.getsize(trivial_wasm), "wasm_source": mg_src}
        info = machine_info(envoy_bin)
        log(f"bench: Envoy {info['envoy_version']}, {info['nproc']} CPUs ({info['cpu_model']}), "
            f"meshguard.wasm {extra['wasm_size']:,} bytes, workdir {workdir}")

        with open(os.path.join(FIXTURES, "tokens.json")) as f:
            tokens_fixture = json.load(f)
        with open(os.path.join(FIXTURES, "jwks.json")) as f:
            fixture_jwks = json.load(f)
        t0 = time.monotonic()
        distinct = {alg: make_distinct_tokens(args.tokens, alg) for alg in ("RS256", "ES256")}
        log(f"bench: signed {args.tokens} distinct RS256 and ES256 tokens in {time.monotonic() - t0:.1f}s")

        scenarios = build_scenarios(mg_wasm, trivial_wasm, tokens_fixture, fixture_jwks, distinct)
        if args.diag:
            scenarios += diag_scenarios(trivial_wasm)
        if args.only:
            keep = set(args.only.split(",")) | {"passthrough"}
            if any(s.grpc for s in scenarios if s.name in keep):
                keep.add("grpc-passthrough")  # the gRPC scenarios' twin
            unknown = keep - {s.name for s in scenarios}
            if unknown:
                raise BenchError(f"unknown scenarios: {sorted(unknown)}")
            scenarios = [s for s in scenarios if s.name in keep]
        by_name = {s.name: s for s in scenarios}
        if any(sc.uses_rls for sc in scenarios):
            rls_bin, rls_kind = ensure_rls_bin(args.no_build)
            os.environ["MESHGUARD_RLS_BIN"] = rls_bin  # read by tests/e2e/rls.py
            extra["rls_bin"] = {"path": rls_bin, "kind": rls_kind}
        for sc in scenarios:
            path = os.path.join(workdir, f"wrk-{sc.name}.lua")
            sc.script = (write_rotating_lua(path, sc.tokens) if sc.tokens
                         else write_static_lua(path, sc.headers))

        up = Envoy(envoy_bin, workdir, "upstream", upstream_bootstrap, concurrency=1, role="others")
        up.start()
        ctx = {"envoy_bin": envoy_bin, "workdir": workdir, "wrk": wrk, "upstream": up}
        if any(sc.grpc for sc in scenarios):
            ctx["h2load"] = ensure_tool("h2load", "nghttp2-client")
            ctx["grpc_payload"] = os.path.join(workdir, "grpc-message.bin")
            with open(ctx["grpc_payload"], "wb") as f:
                f.write(GRPC_MESSAGE)
        comparisons = {}  # (a, b) -> twin runs of a and b at the same time
        if any(sc.uses_rls for sc in scenarios):
            try:
                ctx["rls"] = BenchRls(workdir).start()
                log(f"bench: rate limit service (tests/rls-server, in memory) on port {ctx['rls'].port}")
            except BenchError as e:
                ctx["rls_error"] = str(e)  # its scenarios fail at start, the others run
                log(f"\n!!!!! THE RATE LIMIT SERVICE DID NOT START !!!!!\n{e}\n")
        try:
            started = time.monotonic()
            # One proxy per scenario, started one after the other (so load
            # times do not disturb each other), then kept running for all rounds.
            for sc in scenarios:
                try:
                    start_scenario(sc, args, ctx)
                    log(f"bench: {sc.name:28s} ready in {sc.envoy.load_time_s * 1000:6.0f} ms")
                except BenchError as e:
                    sc.error = str(e)
                    log(f"\n!!!!! SCENARIO {sc.name} FAILED TO START !!!!!\n{e}\n")
                    if sc.envoy:
                        sc.envoy.stop()
            pt_sc = by_name["passthrough"]
            grpc_pt = by_name.get("grpc-passthrough")
            for rnd in range(args.rounds):
                # Rotate the order each round so no scenario always runs first or last.
                k = rnd * max(1, len(scenarios) // max(1, args.rounds)) % len(scenarios)
                for sc in scenarios[k:] + scenarios[:k]:
                    if sc.error:
                        continue
                    try:
                        base = None
                        if args.pairing == "twin" and (sc is pt_sc or sc is grpc_pt):
                            continue  # measured as every other scenario's twin
                        # The twin speaks the scenario's protocol: gRPC scenarios have their own.
                        twin_sc = grpc_pt if sc.grpc and grpc_pt is not None else pt_sc
                        if args.pairing == "twin" and not twin_sc.error:
                            # The twin gets the scenario's own requests (its headers, its tokens):
                            # the overhead is what the filter adds to the same traffic, not what a
                            # larger request costs Envoy. Only plain-request twin runs make up the
                            # passthrough row.
                            base, r = measure_many([(twin_sc, True, sc.script), (sc, True)], args, ctx)
                            base["plain"] = not sc.headers and not sc.tokens
                        else:
                            if args.pairing == "before" and sc is not twin_sc and not twin_sc.error:
                                base = measure(twin_sc, args, ctx, record=False)
                            r = measure(sc, args, ctx)
                        if base is not None:
                            sc.paired.append(r["cpu_us_per_req"] - base["cpu_us_per_req"])
                            sc.paired_rps.append(r["rps"] / base["rps"])
                        log(f"round {rnd + 1}/{args.rounds} {sc.name:28s} {r['cpu_us_per_req']:7.1f} us/req "
                            f"{r['rps']:8.0f} req/s  non-2xx {r['non_2xx']}  upstream {r['upstream_fraction']:.0%}"
                            + ("" if base is None else f"  paired overhead {sc.paired[-1]:6.1f} us"))
                    except BenchError as e:
                        sc.error = str(e)
                        log(f"\n!!!!! SCENARIO {sc.name} FAILED !!!!!\n{e}\n")
                if args.pairing == "twin":
                    for a, b, _ in COMPARISONS:
                        sa, sb = by_name.get(a), by_name.get(b)
                        if not sa or not sb or sa.error or sb.error:
                            continue
                        pair = [(sa, False), (sb, False)] if rnd % 2 == 0 else [(sb, False), (sa, False)]
                        try:
                            res = dict(zip((pair[0][0].name, pair[1][0].name), measure_many(pair, args, ctx)))
                        except BenchError as e:
                            log(f"bench: comparison {a} / {b} failed: {e}")
                            continue
                        d = res[b]["cpu_us_per_req"] - res[a]["cpu_us_per_req"]
                        comparisons.setdefault((a, b), []).append(
                            {"diff_us": d, "a_us": res[a]["cpu_us_per_req"], "b_us": res[b]["cpu_us_per_req"],
                             "rps_ratio": res[b]["rps"] / res[a]["rps"]})
                        log(f"round {rnd + 1}/{args.rounds} twins {b} - {a}: {d:+.1f} us/req")
                log(f"bench: round {rnd + 1} done after {time.monotonic() - started:.0f}s")
            for sc in scenarios:
                if sc.envoy:
                    sc.envoy.stop()
            if up.proc.poll() is not None:
                raise BenchError("the upstream Envoy died:\n" + up.log()[-4000:])
            extra["rss"] = {} if args.no_rss or args.only else measure_rss(args, ctx, by_name)
        finally:
            for sc in scenarios:
                if sc.envoy:
                    sc.envoy.stop()
            up.stop()
            if ctx.get("rls"):
                ctx["rls"].stop()

        summary = {}
        # The passthrough row: its twin runs with plain requests (all of them if none was plain).
        pt_sc = by_name["passthrough"]
        pt_sc.rounds = [r for r in pt_sc.rounds if r.get("plain", True)] or pt_sc.rounds
        pt = pt_sc.rounds
        pt_cpu = median([r["cpu_us_per_req"] for r in pt]) if pt else None
        # gRPC scenarios are compared with the gRPC passthrough (same protocol, same calls).
        gpt = by_name.get("grpc-passthrough")
        gpt_cpu = median([r["cpu_us_per_req"] for r in gpt.rounds]) if gpt and gpt.rounds else None
        for sc in scenarios:
            if sc.error or not sc.rounds:
                continue
            cpu = median([r["cpu_us_per_req"] for r in sc.rounds])
            base_cpu = gpt_cpu if sc.grpc else pt_cpu
            summary[sc.name] = {
                "cpu_us_per_req": cpu,
                "cpu_us_per_req_min": min(r["cpu_us_per_req"] for r in sc.rounds),
                "paired_overhead_us": median(sc.paired) if sc.paired else (
                    0.0 if sc.name in ("passthrough", "grpc-passthrough") else None),
                "paired_rps_ratio": median(sc.paired_rps) if sc.paired_rps else None,
                "overhead_us": None if base_cpu is None else cpu - base_cpu,
                "rps": median([r["rps"] for r in sc.rounds]),
                "p50_ms": median([r["p50_ms"] for r in sc.rounds]),
                "p99_ms": median([r["p99_ms"] for r in sc.rounds]),
                "upstream_fraction": median([r["upstream_fraction"] for r in sc.rounds]),
                "load_time_ms": median(sc.load_times) * 1000 if sc.load_times else None,
            }
            if sc.uses_rls:
                summary[sc.name].update({
                    "rls_calls_per_req": median([r.get("rls_calls_per_req") for r in sc.rounds]),
                    "rls_cpu_us_per_req": median([r.get("rls_cpu_us_per_req") for r in sc.rounds]),
                })
        comp = {}
        for a, b, label in COMPARISONS:
            runs = comparisons.get((a, b))
            if runs:
                diffs = [r["diff_us"] for r in runs]
                comp[f"{b} - {a}"] = {"a": a, "b": b, "label": label, "diff_us": median(diffs),
                                      "min": min(diffs), "max": max(diffs), "n": len(diffs),
                                      "a_us": median([r["a_us"] for r in runs]),
                                      "b_us": median([r["b_us"] for r in runs])}
        targets = evaluate(summary, comp)
        if sha256_file(mg_src) != extra["wasm_sha256"]:
            extra["note"] = f"{mg_src} was rebuilt during the run; the results are for the snapshot taken at start"
        md = render(info, args, summary, scenarios, targets, extra, comp)
        print("\n" + md)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"machine": info, "settings": vars(args), "extra": extra, "summary": summary,
                       "targets": targets, "comparisons": comp,
                       "scenarios": {s.name: {"desc": s.desc, "rounds": s.rounds, "paired_overhead_us": s.paired,
                                              "paired_rps_ratio": s.paired_rps,
                                              "load_times_s": s.load_times,
                                              "error": s.error} for s in scenarios}}, f, indent=1)
        log(f"bench: wrote {os.path.join(args.out, 'results.md')} and results.json")
        failed = [s.name for s in scenarios if s.error]
        if failed:
            log(f"bench: FAILED scenarios: {', '.join(failed)}")
            return 1
        if args.no_readme or args.quick or args.only or args.diag:
            log("bench: README left alone (not a complete run, or --no-readme)")
        elif update_readme(args.readme, render_readme(info, args, summary, scenarios, targets, extra, comp)):
            log(f"bench: wrote the latest-run block of {args.readme}")
        else:
            log(f"bench: {args.readme} has no latest-run block ({README_START}): left alone")
        ok = True
        return 0
    finally:
        for p in ALL_PROCS:
            if p.poll() is None:
                p.terminate()
        for p in ALL_PROCS:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"bench: configs and Envoy logs kept in {workdir}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
