"""Host and process facts for the report, read without psutil in the measured process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vlab_backend.harness import sysinfo


def test_temperature_is_the_hottest_hwmon_sensor(tmp_path: Path) -> None:
    for chip, readings in {"hwmon0": ["41500", "0"], "hwmon1": ["55250", "bad"]}.items():
        for index, value in enumerate(readings, start=1):
            (tmp_path / chip).mkdir(exist_ok=True)
            (tmp_path / chip / f"temp{index}_input").write_text(value + "\n")
    assert sysinfo.temperature_c(tmp_path) == 55.2
    assert sysinfo.temperature_c(tmp_path / "missing") is None


# In a process of its own: threads other tests leave in this one (event followers, servers'
# readers) would add their CPU time to the process's.
LOAD_PROBE = """
import time
from vlab_backend.harness import sysinfo
idle = sysinfo.cpu_clock()
time.sleep(0.3)
idle_load = sysinfo.cpu_load_percent(idle)
busy = sysinfo.cpu_clock()
deadline = time.monotonic() + 0.3
while time.monotonic() < deadline:
    pass
print(idle_load, sysinfo.cpu_load_percent(busy))
"""


def test_cpu_load_counts_only_the_marked_interval() -> None:
    done = subprocess.run([sys.executable, "-c", LOAD_PROBE], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    idle_load, busy_load = map(float, done.stdout.split())
    assert idle_load < 20 < busy_load <= 101
