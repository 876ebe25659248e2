"""The machine's foreign CPU load during a measured window: CPU time the whole
machine was busy minus what the benchmark's own processes (this Python
process and everything it started) used, in % of one CPU.

Why: the proxies' CPU per request is only comparable between runs when
nothing else ran. Other work on these shared 2-core machines evicts the
proxy's caches and takes its CPU between its requests; the CPU per request
and the twins' differences grow with it (full runs on these machines have
read a passthrough request at 47 us and at 99-175 us), and nothing in the
report said how busy the machine was. Now it does (render.py). Other guests
of the same host (a hypervisor's neighbours) are not seen here except as
steal time: passthrough's CPU per request is the other sign."""

import os
import statistics
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Above this (max over the measured windows, % of one CPU) a run's CPU figures are not those of an
# idle machine: the report says so loudly. An idle machine reads 0-3% (tick rounding, the kernel's
# own threads); a busy loop beside the bench ~50% (it gets half of a CPU the bench also loads).
NOISY_PCT = 10
# /proc/stat's aggregate `cpu` line: user nice system idle iowait irq softirq steal ... The busy ones;
# guest time is already inside user (and nice), idle and iowait are not work.
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def machine_busy_ticks():
    """Clock ticks every CPU of the machine spent busy since boot (all processes, the kernel's
    interrupts, the time a hypervisor gave to other guests)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                fields = line.split()[1:]
                return sum(int(fields[i]) for i in BUSY_FIELDS if i < len(fields))
    raise OSError("/proc/stat has no aggregate cpu line")


def read_stat(pid):
    """(ppid, CPU ticks) of a process, or None if it is gone. The ticks are
    utime+stime+cutime+cstime: a child its parent waited for (wrk, h2load: started, finished and
    reaped inside the window) is charged to the parent once gone, and to nobody else."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3): ppid is field 4, utime..cstime fields 14..17.
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_ticks(root=None):
    """CPU ticks of `root` (default: this process) and all its live descendants, found through the
    ppid links of /proc/*/stat: the benchmark's own processes (the Envoys, wrk or h2load, the rate
    limit service) wherever they run."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(name)
            if st is not None:
                stats[int(name)] = st
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [os.getpid() if root is None else root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, ()))
    return total


def snapshot():
    """What `foreign_pct` compares: the time, the machine's busy ticks, our process tree's ticks."""
    return {"t": time.monotonic(), "busy": machine_busy_ticks(), "tree": tree_ticks()}


def foreign_pct(before, after):
    """Other processes' CPU between two snapshots, in % of one CPU over the wall time. Our tree's
    CPU in between is the difference of its totals: a process present at both counts its
    difference, one started in between (wrk) all of its time, and one that ended in between
    moved all of its time into its parent's cutime while its time before the window left the
    total. Clamped at 0: tick rounding can make it read slightly negative."""
    foreign_s = (after["busy"] - before["busy"] - (after["tree"] - before["tree"])) / CLK_TCK
    wall_s = after["t"] - before["t"]
    return max(0.0, 100.0 * foreign_s / wall_s) if wall_s > 0 else 0.0


def summarize(values):
    """Median and max over the measured windows of a run (None: no window was measured)."""
    if not values:
        return None
    return {"median": statistics.median(values), "max": max(values), "runs": len(values)}


def is_noisy(summary):
    return bool(summary) and summary["max"] > NOISY_PCT
