"""What the bench needs besides Envoy: the load generators (wrk, h2load), the
`cryptography` package, the trivial reference filter, the release build of the
test rate limit service; file hashes and the machine's description."""

import datetime
import hashlib
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys

from .common import (RLS_MANIFEST, RLS_TARGET, ROOT, TRIVIAL_DIR, TRIVIAL_DM, TRIVIAL_DM_DIR, TRIVIAL_WASM,
                     BenchError, log)


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


def ensure_valgrind():
    """valgrind with callgrind and callgrind_control (Debian's package `valgrind`), for
    `--instructions`: installed when missing and running as root, else the command to run."""
    valgrind = ensure_tool("valgrind", "valgrind")
    if not shutil.which("callgrind_control"):
        raise BenchError("callgrind_control is missing (it comes with valgrind): sudo apt-get install -y valgrind")
    return valgrind


def ensure_cryptography():
    try:
        importlib.import_module("cryptography")
        return
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "cryptography"]
    if sys.prefix != sys.base_prefix:  # running inside a venv: install into it
        log("bench: installing the `cryptography` package into " + sys.prefix)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            importlib.invalidate_caches()
            importlib.import_module("cryptography")
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


def ensure_trivial_dm(skip_build):
    """The reference dynamic module (bench/trivial-dm), for the dm-* scenarios' floor rows."""
    if not skip_build:
        log("bench: building the trivial reference dynamic module (bench/trivial-dm)")
        r = subprocess.run(["cargo", "build", "--release", "-q"], cwd=TRIVIAL_DM_DIR, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("building bench/trivial-dm failed:\n" + r.stderr[-3000:])
    if not os.path.exists(TRIVIAL_DM):
        raise BenchError(f"{TRIVIAL_DM} is missing")
    return TRIVIAL_DM


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


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
