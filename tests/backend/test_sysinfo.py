"""Host and process facts for the report, read without psutil in the measured process."""

from __future__ import annotations

import time
from pathlib import Path

from vlab_backend.harness import sysinfo


def test_temperature_is_the_hottest_hwmon_sensor(tmp_path: Path) -> None:
    for chip, readings in {"hwmon0": ["41500", "0"], "hwmon1": ["55250", "bad"]}.items():
        for index, value in enumerate(readings, start=1):
            (tmp_path / chip).mkdir(exist_ok=True)
            (tmp_path / chip / f"temp{index}_input").write_text(value + "\n")
    assert sysinfo.temperature_c(tmp_path) == 55.2
    assert sysinfo.temperature_c(tmp_path / "missing") is None


def test_cpu_load_counts_only_the_marked_interval() -> None:
    idle = sysinfo.cpu_clock()
    time.sleep(0.3)
    idle_load = sysinfo.cpu_load_percent(idle)
    busy = sysinfo.cpu_clock()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    busy_load = sysinfo.cpu_load_percent(busy)
    assert idle_load is not None and busy_load is not None
    assert idle_load < 20 < busy_load <= 101
