"""The target board's health column: each instance's health in words, colored, with the
evidence of its last health check as the cell's tooltip (no server: a stand-in client)."""

from __future__ import annotations

import re
from typing import Any, cast

from vlab_kernel.lab import Lab
from vlab_widgets import TargetBoard
from vlab_widgets.board import health_text


def instance(uid: str, health: str | None, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"target_uid": uid, "state": "free", "benchmark_id": None,
                             "cpuset": [0], "engines": {"onnxruntime": {}}}
    if health is not None:
        found["health"] = health
    return found | extra


class Client:
    def __init__(self, instances: list[dict[str, Any]]) -> None:
        self.instances = instances

    def targets(self) -> list[dict[str, Any]]:
        return [{"target": "host-cpu", "instances": self.instances, "queue_length": 0}]


class StandIn:
    def __init__(self, instances: list[dict[str, Any]]) -> None:
        self.client = Client(instances)


def cells(board: TargetBoard) -> dict[str, str]:
    """Instance -> its health cell's HTML."""
    rows = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td>.*?(<td[^>]*vlab-health[^>]*>.*?</td>)",
                      board.table.value)
    return dict(rows)


def test_the_board_has_a_health_column_with_the_evidence() -> None:
    degraded = {"verdict": "degraded: median 9.1 ms against the baseline's 2.3 ms "
                           "(+296.0%, beyond noise: p=0.000; more than the 10% minimum effect)",
                "ratio": 3.96, "p_value": 0.0005, "baseline_median_s": 0.0023,
                "median_s": 0.0091}
    board = TargetBoard(cast(Lab, StandIn([
        instance("host-cpu-0", "degraded", health_detail=degraded),
        instance("host-cpu-1", "healthy", health_checking=True,
                 health_detail={"verdict": "healthy: within noise of the baseline (+0.4%, "
                                           "p=0.62)", "ratio": 1.004}),
        instance("host-cpu-2", "error", health_detail={"verdict": "error: the check failed"}),
        instance("host-cpu-3", None)])), live=False)
    try:
        assert "<th>health</th>" in board.table.value
        found = cells(board)
        assert set(found) == {"host-cpu-0", "host-cpu-1", "host-cpu-2", "host-cpu-3"}
        assert "vlab-health-degraded" in found["host-cpu-0"]
        assert ">degraded +296 %</td>" in found["host-cpu-0"]
        assert 'title="degraded: median 9.1 ms' in found["host-cpu-0"]
        assert ">healthy (checking)</td>" in found["host-cpu-1"]
        assert "within noise" in found["host-cpu-1"]
        assert "vlab-health-error" in found["host-cpu-2"]
        # A server without health checks (or an instance never checked): unknown.
        assert ">unknown</td>" in found["host-cpu-3"]
        assert 'title="never checked"' in found["host-cpu-3"]
    finally:
        board.close()


def test_the_evidence_is_escaped() -> None:
    board = TargetBoard(cast(Lab, StandIn([instance(
        "host-cpu-0", "degraded<b>", health_detail={"verdict": '"><script>x</script>'})])),
        live=False)
    try:
        assert "<script>" not in board.table.value and "<b>" not in board.table.value
        assert "vlab-health-unknown" in board.table.value  # an unknown word gets no class
    finally:
        board.close()


def test_health_text() -> None:
    assert health_text({"health": "degraded", "health_detail": {"ratio": 1.523}}) \
        == "degraded +52.3 %"
    assert health_text({"health": "healthy", "health_detail": {"ratio": 0.97}}) == "healthy"
    assert health_text({}) == "unknown"
