"""The load generators: wrk (HTTP/1.1, a Lua script for the headers or the
rotating tokens) and h2load (the gRPC scenarios), started and parsed."""

import re
import subprocess

from .common import GRPC_HEADERS, GRPC_PATH, GRPC_STREAMS, PATH, BenchError
from .procs import pin_preexec


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
