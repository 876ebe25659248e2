"""A real Envoy rate limit service for the global rate limit tests:
tests/rls-server (limitador, gRPC envoy.service.ratelimit.v3) and the
redis-server it counts in. Loopback addresses only; `make rls` builds the
server and installs redis-server.

    with Redis(tmp_path) as redis, RlsServer(tmp_path, limits, redis_url=redis.url) as rls:
        ... static_cluster("rls", rls.port, http2=True) ...
        redis.stop(); ...; redis.start()   # same port: the server reconnects
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import harness

RLS_BIN_DEFAULT = os.path.join(harness.ROOT, "target/rls-server/debug/meshguard-test-rls")


def rls_bin():
    path = os.environ.get("MESHGUARD_RLS_BIN") or RLS_BIN_DEFAULT
    if not os.path.exists(path):
        raise RuntimeError(
            f"{path} is missing. Build it with `make rls` "
            "(tests/rls-server, into target/rls-server), or set MESHGUARD_RLS_BIN.")
    return path


def redis_server_bin():
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError(
            "redis-server is not installed. Run `make rls` (it installs Debian's redis-server).")
    return path


class Redis:
    """redis-server on 127.0.0.1:<free port>, no persistence. stop() and start()
    again keep the port, so a test can take Redis away and bring it back."""

    def __init__(self, workdir, port=None):
        self.workdir = str(workdir)
        self.port = port or harness.free_port()
        self.proc = None
        self.log_path = os.path.join(self.workdir, f"redis-{self.port}.log")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=10):
        if self.proc and self.proc.poll() is None:
            return self
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [redis_server_bin(), "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.workdir],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} not answering PING after {timeout}s:\n"
                           f"{self.log()[-3000:]}")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        """Terminate and wait: the port stops answering (connections refused)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()

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


class RlsServer:
    """meshguard-test-rls with `limits` (a list of dicts, see
    tests/rls-server/README.md), counting in `redis_url` (else in memory), and
    answering each call after `delay_ms`. `.port` is known once started."""

    def __init__(self, workdir, limits, redis_url=None, delay_ms=0):
        self.workdir = str(workdir)
        self.limits = limits
        self.redis_url = redis_url
        self.delay_ms = delay_ms
        self.proc = None
        self.port = None
        self.tag = f"rls-{harness.free_port()}"  # a unique file name
        self.limits_path = os.path.join(self.workdir, f"{self.tag}-limits.json")
        self.log_path = os.path.join(self.workdir, f"{self.tag}.log")

    def start(self, timeout=30):
        with open(self.limits_path, "w") as f:
            json.dump(self.limits, f, indent=1)
        cmd = [rls_bin(), "--listen", "127.0.0.1:0", "--limits", self.limits_path]
        if self.redis_url:
            cmd += ["--redis", self.redis_url]
        if self.delay_ms:
            cmd += ["--delay-ms", str(int(self.delay_ms))]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=self.workdir, text=True)
        first = []
        reader = threading.Thread(target=lambda: first.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = first[0].strip() if first else ""
        if not line.startswith("listening on "):
            if first and not first[0]:  # stdout closed: it is exiting
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            code = self.proc.poll()
            self.stop()
            why = (f"exited with {code}" if code is not None
                   else f"printed {line!r}" if first else f"no `listening on` line after {timeout}s")
            raise RuntimeError(f"meshguard-test-rls {why}:\n{self.log()[-3000:]}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.proc.stdout.close()
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        """Its stderr: one line per ShouldRateLimit call (domain, descriptors, result)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def limit(name, n, seconds=60, route="g", var=None):
    """A limitador limit matching meshguard's descriptor for (route, limit),
    one counter per value of descriptor entry `var`."""
    return {
        "name": name, "namespace": "meshguard", "max_value": n, "seconds": seconds,
        "conditions": [f"descriptors[0].route == '{route}'",
                       f"descriptors[0].limit == '{name}'"],
        "variables": [f"descriptors[0]['{var}']"] if var else [],
    }


def cluster(server_or_port):
    """The Envoy cluster `ratelimit` (HTTP/2) of a started service, or of a port."""
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    return [harness.static_cluster("ratelimit", port, http2=True)]
