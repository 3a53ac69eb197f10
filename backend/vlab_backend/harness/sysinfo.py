"""Facts about the host and the process, for the report."""

from __future__ import annotations

import os
import platform
import resource
from functools import cache
from pathlib import Path
from typing import Any


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def total_ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return None


def pinned_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def cpu_frequency_mhz(cpus: list[int]) -> float | None:
    """Mean current frequency of the given cores, where the OS exposes it (cpufreq)."""
    readings = []
    for cpu in cpus:
        try:
            khz = Path(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq").read_text()
            readings.append(int(khz) / 1000)
        except (OSError, ValueError):
            continue
    return round(sum(readings) / len(readings), 1) if readings else None


def cpu_load_percent() -> float | None:
    """This process's CPU time over its wall time, in percent of one core."""
    try:
        import psutil

        proc = psutil.Process()
        times = proc.cpu_times()
        import time

        wall = time.time() - proc.create_time()
        return round(100.0 * (times.user + times.system) / wall, 1) if wall > 0 else None
    except Exception:
        return None


def temperature_c() -> float | None:
    try:
        import psutil

        sensors = psutil.sensors_temperatures()
    except Exception:
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current]
    return round(max(readings), 1) if readings else None
