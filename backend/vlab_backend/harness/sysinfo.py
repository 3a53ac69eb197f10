"""Facts about the host and the process, for the report."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
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


def cpu_clock() -> tuple[float, float]:
    """(CPU seconds used by this process, wall seconds): a mark for `cpu_load_percent`."""
    times = os.times()
    return times.user + times.system, time.monotonic()


def cpu_load_percent(since: tuple[float, float]) -> float | None:
    """This process's CPU time over the wall time since `since`, in percent of one core."""
    cpu, wall = cpu_clock()
    elapsed = wall - since[1]
    return round(100.0 * (cpu - since[0]) / elapsed, 1) if elapsed > 0 else None


def temperature_c(hwmon: Path = Path("/sys/class/hwmon")) -> float | None:
    """The hottest sensor the kernel exposes (hwmon, millidegrees), where there is one.

    Read directly rather than through psutil, which is not worth its import time in the
    measured process."""
    if not hwmon.is_dir():
        return None
    readings = []
    for sensor in hwmon.glob("hwmon*/temp*_input"):
        try:
            readings.append(int(sensor.read_text()) / 1000)
        except (OSError, ValueError):
            continue
    readings = [r for r in readings if r]
    return round(max(readings), 1) if readings else None


# -- energy: RAPL counters (Intel, and AMD's compatible driver) --------------------------------

RAPL_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyMark:
    """RAPL package counters (microjoules) and the wall clock when they were read."""

    counters: dict[str, int]
    wall_s: float


@dataclass(frozen=True)
class Energy:
    """Energy the CPU packages used between two marks: joules over seconds (None when the
    machine cannot tell, with `note` saying why)."""

    joules: float | None
    seconds: float | None
    note: str

    @property
    def watts(self) -> float | None:
        return self.joules / self.seconds if self.joules is not None and self.seconds else None


def _rapl_packages(root: Path) -> list[Path]:
    """The package zones (`intel-rapl:N`), not their sub-zones (`intel-rapl:N:M`: cores,
    uncore, DRAM), which the package's count already holds."""
    return sorted(zone for zone in root.glob("intel-rapl:*")
                  if zone.name.count(":") == 1 and (zone / "energy_uj").exists())


def energy_mark(root: Path = RAPL_ROOT) -> tuple[EnergyMark | None, str]:
    """A reading of every RAPL package counter, or None and why there is none."""
    zones = _rapl_packages(root)
    if not zones:
        return None, f"this machine exposes no RAPL energy counters ({root}/intel-rapl:*)"
    counters = {}
    for zone in zones:
        try:
            counters[zone.name] = int((zone / "energy_uj").read_text())
        except PermissionError:
            return None, (f"the RAPL energy counters are not readable by this user "
                          f"({zone}/energy_uj: root only since Linux 5.10)")
        except (OSError, ValueError) as exc:
            return None, f"the RAPL energy counter {zone}/energy_uj cannot be read: {exc}"
    return EnergyMark(counters, time.monotonic()), ""


def energy_since(mark: EnergyMark | None, why: str = "",
                 root: Path = RAPL_ROOT) -> Energy:
    """The packages' energy since `mark` (a counter that wrapped around its
    `max_energy_range_uj` counted once). RAPL counts whole packages: other processes on the
    same CPU count too."""
    if mark is None:
        return Energy(None, None, why)
    end, _ = energy_mark(root)
    if end is None or set(end.counters) != set(mark.counters):
        return Energy(None, None, "the RAPL energy counters changed during the run")
    total_uj = 0
    for name, start in mark.counters.items():
        delta = end.counters[name] - start
        if delta < 0:
            try:
                delta += int((root / name / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                return Energy(None, None, f"the RAPL counter {name} wrapped around and its "
                                          "range is unknown")
        total_uj += delta
    zones = ", ".join(sorted(mark.counters))
    return Energy(total_uj / 1e6, end.wall_s - mark.wall_s,
                  f"RAPL package energy ({zones}) over the warm-up and timed runs: the whole "
                  "CPU package, other processes on it included")
