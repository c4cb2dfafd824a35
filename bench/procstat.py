"""What the benchmark reads about processes from /proc: CPU time, RSS, children, fd limits;
and what malloc holds in this process (glibc's mallinfo2).

CPU time is utime + stime of /proc/PID/stat (every thread of the process, in clock
ticks); RSS is VmRSS of /proc/PID/status. A proxy is measured as the sum over its
process tree (nginx: master and worker). Nothing here starts or stops processes.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise this process's soft open-files limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process (all its threads); zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return (0.0, 0.0)
    # The command name may contain spaces: the fields start after its closing ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    return (int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    return sum(cpu_split(pid))


def total_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def total_system_seconds(pids: Iterable[int]) -> float:
    """The kernel's share (stime) of a process tree's CPU time."""
    return sum(cpu_split(pid)[1] for pid in pids)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def malloc_bytes() -> int:
    """Bytes malloc() has handed out in this process and not got back (heap chunks in use
    plus mmap'd chunks): OpenSSL's objects and buffers included, which tracemalloc does
    not see."""
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (VmRSS); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def total_rss_kib(pids: Iterable[int]) -> int:
    return sum(rss_kib(pid) for pid in pids)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children list)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.extend(int(item) for item in listing.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    result = [pid]
    index = 0
    while index < len(result):
        result.extend(children(result[index]))
        index += 1
    return result


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For `Popen(preexec_fn=...)`: the child gets SIGTERM when the process that started
    it dies, so a killed harness or test run leaves no backend or proxy behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
