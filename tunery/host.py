"""What this machine offers, read from /proc: CPU flags and model, physical cores, busy cores, free memory.

The one place that reads /proc; every answer has a fallback where /proc is missing (macOS,
containers that hide it). No torch: choosing precision or threads from these facts is the caller's.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpuinfo_text() -> str:
    """/proc/cpuinfo, or "" where it cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpuinfo_field(name: str) -> str | None:
    """The value of the first `name : value` line of /proc/cpuinfo (the first CPU's)."""
    for line in cpuinfo_text().splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """The first CPU's feature flags (`avx2`, `avx512_bf16`, `amx_bf16`, ...); empty when unknown."""
    return set((cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    return cpuinfo_field("model name") or "unknown"


def cpu_signature() -> str:
    """A string that differs between CPUs whose native builds differ (the flags line)."""
    for line in cpuinfo_text().splitlines():
        if line.startswith("flags"):
            return line
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AMX or AVX512-BF16 units (bf16 matmuls several times faster)."""
    flags = cpuinfo_text()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs, at most os.cpu_count(); half the logical CPUs if unknown."""
    ids, current = set(), None
    for line in cpuinfo_text().splitlines():
        if line.startswith("physical id"):
            current = line.split(":")[1].strip()
        elif line.startswith("core id"):
            ids.add((current, line.split(":")[1].strip()))
    if ids:
        return min(len(ids), os.cpu_count() or 1)
    return max(1, (os.cpu_count() or 2) // 2)


def runnable_tasks() -> int | None:
    """`procs_running` of /proc/stat: tasks running or ready to run now, this process included."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def busy_cores(processes: int = 1, samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores other processes keep busy now: the median count of runnable tasks, less our own.

    The count comes from /proc/stat (`procs_running`, which includes this process and, under
    torchrun, its `processes - 1` siblings). The 1-minute load average is the fallback: it still
    counts a job that ended a minute ago, so a run started right after another got fewer threads.
    """
    counts = []
    for i in range(samples):
        running = runnable_tasks()
        if running is None:
            return int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        counts.append(running)
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, sorted(counts)[len(counts) // 2] - max(1, processes))


def available_memory_bytes() -> int | None:
    """`MemAvailable` of /proc/meminfo in bytes (what can be allocated without swapping)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None where unknown.

    Tells a live process from a later one that was given the same pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # the command name may hold spaces and ')'
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """True when a process with this pid runs on this machine (ours or another user's); a zombie is dead.

    A trainer killed with its worker may stay a zombie where PID 1 does not reap (containers).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
