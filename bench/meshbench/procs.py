"""The processes of a run: where they may run (CPU pinning), the Envoys (the
e2e tests' wrapper, tests/e2e/harness.py `EnvoyProcess`, with the bench's
settings), the rate limit service, and the list of everything started."""

import os
import re
import random
import shlex
import subprocess
import sys

from .common import E2E_DIR, RLS_DESCRIPTOR, RLS_DOMAIN, RLS_LIMITS, BenchError

if E2E_DIR not in sys.path:
    sys.path.insert(0, E2E_DIR)
import harness  # noqa: E402 (tests/e2e: the Envoy wrapper shared with the e2e tests)
from rls import RlsServer  # noqa: E402 (tests/e2e: the test rate limit service)

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


_BASE_ID = [random.randint(100, 5000) * 10]


def next_base_id():
    _BASE_ID[0] += 1
    return _BASE_ID[0] * 10 + os.getpid() % 10


def envoy(envoy_bin, workdir, name, make_doc, concurrency=1, role="proxy", wrapper=None):
    """One Envoy of the bench (not started): `make_doc(listen_port, admin_port)` builds its
    bootstrap; `role` is where it runs ("proxy": the CPU of the proxies under test, "others": the
    load generator's). No hot restart, warnings-only log, /ready polled every 5 ms (the config
    load time is start to ready). `wrapper`: a command Envoy runs under (e.g. valgrind and its
    options, `--instructions`); the process started, `proc.pid`, is then the wrapper's."""
    binary = envoy_bin if not wrapper else wrapper_script(workdir, name, wrapper, envoy_bin)
    return harness.EnvoyProcess(workdir, make_doc, name=name, concurrency=concurrency, cpus=PIN[role],
                                base_id=next_base_id(), log_level="warn", hot_restart=False, poll_s=0.005,
                                binary=binary)


def wrapper_script(workdir, name, wrapper, envoy_bin):
    """A shell script that `exec`s `wrapper + [envoy_bin]` with its own arguments appended: the
    Envoy wrapper (harness.EnvoyProcess) starts one binary; `exec` keeps the process id, so the
    process the wrapper started is the wrapper's own (valgrind's, what callgrind_control needs)."""
    path = os.path.join(workdir, f"{name}-wrapper.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in [*wrapper, envoy_bin]) + ' "$@"\n')
    os.chmod(path, 0o755)
    return path


def start(envoy, timeout=60):
    """Starts `envoy`, a BenchError if it does not become ready within `timeout` seconds (with its log tail)."""
    try:
        envoy.start(timeout)
    except harness.EnvoyError as e:
        raise BenchError(str(e)) from None
    ALL_PROCS.append(envoy.proc)
    return envoy


def stop_all():
    """Ends every process still running that the run started."""
    for p in ALL_PROCS:
        if p.poll() is None:
            p.terminate()
    for p in ALL_PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


class BenchRls:
    """The one rate limit service of the run (tests/e2e/rls.py RlsServer: tests/rls-server, counting in
    memory), shared by every scenario with uses_rls. Its stderr has one line per ShouldRateLimit call,
    written before the answer is sent: after wrk completed n requests, at least n lines are there."""

    def __init__(self, workdir):
        self.server = RlsServer(workdir, RLS_LIMITS)

    def start(self):
        try:
            self.server.start()
        except RuntimeError as e:  # binary missing (`make rls`), bad limits, ...
            raise BenchError(f"rate limit service: {e}")
        ALL_PROCS.append(self.server.proc)
        if PIN["others"]:
            harness.set_affinity(self.server.proc.pid, PIN["others"])
        self.port = self.server.port
        return self

    def stop(self):
        self.server.stop()

    def alive(self):
        return self.server.proc is not None and self.server.proc.poll() is None

    def cpu_us(self):
        return harness.cpu_us(self.server.proc.pid)

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
            # +1 per request; a leased limit's refills ask for a batch (+N).
            if re.match(rf'rls: domain="{RLS_DOMAIN}" \[{re.escape(RLS_DESCRIPTOR)}\+\d+\] -> OK \[OK "bench-all" ',
                        line):
                ok += 1
            elif len(other) < 5:
                other.append(line)
        return {"calls": calls, "ok": ok, "dropped": dropped, "other": other, "cpu_us": cpu}
