"""RAPL energy in the host-cpu report: the reader against fake powercap trees (package zones
counted, sub-zones not, wrap-around, unreadable counters), and the report's keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlab_backend.harness import sysinfo
from vlab_backend.harness.report import energy_keys


def zone(root: Path, name: str, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (path / "name").write_text("package-0\n" if name.count(":") == 1 else "core\n")
    return path


def test_packages_are_summed_and_their_sub_zones_are_not(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", 1_000_000)
    zone(tmp_path, "intel-rapl:1", 5_000_000)
    zone(tmp_path, "intel-rapl:0:0", 700_000)  # the cores of package 0: already counted
    mark, why = sysinfo.energy_mark(tmp_path)
    assert mark is not None and why == ""
    assert mark.counters == {"intel-rapl:0": 1_000_000, "intel-rapl:1": 5_000_000}
    zone(tmp_path, "intel-rapl:0", 3_500_000)
    zone(tmp_path, "intel-rapl:1", 6_000_000)
    zone(tmp_path, "intel-rapl:0:0", 9_999_999)
    energy = sysinfo.energy_since(mark, why, tmp_path)
    assert energy.joules == pytest.approx(3.5)
    assert energy.seconds is not None and energy.seconds >= 0
    assert "intel-rapl:0, intel-rapl:1" in energy.note and "whole CPU package" in energy.note


def test_a_counter_that_wraps_is_counted_once(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", 999_000, max_uj=1_000_000)
    mark, why = sysinfo.energy_mark(tmp_path)
    zone(tmp_path, "intel-rapl:0", 1_000, max_uj=1_000_000)
    assert sysinfo.energy_since(mark, why, tmp_path).joules == pytest.approx(0.002)


def test_no_rapl_says_why(tmp_path: Path) -> None:
    mark, why = sysinfo.energy_mark(tmp_path / "powercap")
    assert mark is None and "exposes no RAPL energy counters" in why
    energy = sysinfo.energy_since(mark, why)
    assert energy.joules is None and energy.watts is None and energy.note == why


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_counter_says_why(tmp_path: Path) -> None:
    (zone(tmp_path, "intel-rapl:0", 1) / "energy_uj").chmod(0)
    mark, why = sysinfo.energy_mark(tmp_path)
    assert mark is None and "not readable" in why


def test_an_unreadable_counter_says_why_whoever_runs_it(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    zone(tmp_path, "intel-rapl:0", 1)

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    mark, why = sysinfo.energy_mark(tmp_path)
    assert mark is None and "not readable by this user" in why and "Linux 5.10" in why


def test_report_keys_from_the_energy() -> None:
    keys = energy_keys({"joules": 10.0, "seconds": 2.0, "inferences": 500, "note": "RAPL"},
                       flops=1e6)
    assert keys["power_consumption"] == pytest.approx(5.0)  # W
    assert keys["inferences_per_joule"] == pytest.approx(50.0)
    assert keys["enery_efficiency"] == pytest.approx(5e7)  # operations per joule (per watt)
    assert keys["energy_j"] == 10.0 and keys["energy_note"] == "RAPL"
    none = energy_keys({"joules": None, "seconds": None, "inferences": 5,
                        "note": "this machine exposes no RAPL energy counters"}, flops=1e6)
    assert none["power_consumption"] is None and none["enery_efficiency"] is None
    assert none["energy_note"].startswith("this machine exposes no RAPL")
    assert energy_keys({"joules": 4.0, "seconds": 1.0, "inferences": 8}, flops=None)[
        "enery_efficiency"] is None
