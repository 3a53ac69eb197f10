"""Scripted client events: what each does to a client's round, and the battery model."""

from __future__ import annotations

from typing import Any

import pytest

from vlab_backend.federated.config import ClientSpec
from vlab_backend.federated.events import ClientState, after_round, plan_round


def client(events: dict[int, list[dict[str, Any]]], join: int = 0) -> ClientSpec:
    return ClientSpec(client_id="client_0", target="board", runtime="onnxruntime", odt={},
                      join_at_round=join, learning={"epochs": 3, "batch_size": 8},
                      events=events)


def battery(level: float | None = None, per_round: float | None = None,
            per_second: float | None = None, mode: str = "discharging",
            low: float = 20.0, high: float = 100.0) -> dict[str, Any]:
    status: dict[str, Any] = {"status_type": "power_status", "power_source": "Battery",
                              "mode": mode, "bounds": {"min_level_pct": low,
                                                       "max_level_pct": high}}
    if level is not None:
        status["initial_level_pct"] = level
    if per_round is not None:
        status["discharge_pct_per_round"] = per_round
    if per_second is not None:
        status["discharge_pct_per_second"] = per_second
    return {"type": "updated_status", "round": 1, "status_update": status,
            "description": "battery"}


def test_a_client_without_events_takes_part() -> None:
    plan = plan_round(client({}), 1, ClientState())
    assert plan.absent is None and plan.epochs is None and plan.reduced is None
    assert (plan.slow_factor, plan.delay_s, plan.network_timeout_s) == (1.0, 0.0, None)


def test_join_at_round() -> None:
    late = client({}, join=3)
    assert plan_round(late, 2, ClientState()).absent == "joins at round 3"
    assert plan_round(late, 3, ClientState()).absent is None
    assert plan_round(client({}, join=0), 1, ClientState()).absent is None


def test_failure_makes_the_client_absent_that_round_only() -> None:
    spec = client({2: [{"type": "failure", "round": 2,
                        "description": "Client failed at round 2"}]})
    assert plan_round(spec, 1, ClientState()).absent is None
    plan = plan_round(spec, 2, ClientState())
    assert plan.absent == "failure: Client failed at round 2"
    assert plan.events == [{"type": "failure", "description": "Client failed at round 2",
                            "effect": "absent this round"}]
    assert plan_round(spec, 3, ClientState()).absent is None


def test_network_issue_fail_fast_or_lost_update() -> None:
    fast = client({1: [{"type": "network_issue", "roud_timeout_s": None, "fail_fast": True}]})
    assert plan_round(fast, 1, ClientState()).absent == "network issue: unreachable (fail_fast)"
    slow = client({1: [{"type": "network_issue", "roud_timeout_s": 12, "fail_fast": False}]})
    plan = plan_round(slow, 1, ClientState())
    assert plan.absent is None and plan.network_timeout_s == 12.0
    unset = client({1: [{"type": "network_issue", "roud_timeout_s": None,
                         "fail_fast": False}]})
    assert plan_round(unset, 1, ClientState()).network_timeout_s == 0.0


def test_delays_slowness_partial_epochs_and_reduced_data() -> None:
    spec = client({1: [{"type": "delayed_response", "delay_seconds": 7},
                       {"type": "slow_response", "slow_factor": 2.5},
                       {"type": "epoch_completion", "epoch_number": 1},
                       {"type": "reduced_dataset", "new_size": 10, "suffule": False,
                        "seed": None}]})
    plan = plan_round(spec, 1, ClientState())
    assert plan.absent is None
    assert (plan.delay_s, plan.slow_factor, plan.epochs) == (7.0, 2.5, 1)
    assert plan.reduced == {"new_size": 10, "suffule": False, "seed": None}
    assert [e["type"] for e in plan.events] == ["delayed_response", "slow_response",
                                               "epoch_completion", "reduced_dataset"]


def test_battery_discharges_per_round_until_below_its_minimum() -> None:
    events = {1: [battery(level=50, per_round=15)], 2: [battery(per_round=15)],
              3: [battery(per_round=15)]}
    spec, state = client(events), ClientState()
    seen = []
    for round_number in (1, 2, 3):
        plan = plan_round(spec, round_number, state)
        seen.append((plan.status["battery_pct"], plan.absent))
        after_round(plan, state, busy_s=100.0)
    assert seen == [(50.0, None), (35.0, None),
                    (20.0, None)]
    assert state.battery_pct == 5.0
    plan = plan_round(client({4: [battery(per_round=15)]}), 4, state)
    assert plan.absent == "battery at 5.0 % is below its 20 % minimum"


def test_battery_discharges_per_second_of_work_and_charges_up_to_its_maximum() -> None:
    state = ClientState()
    plan = plan_round(client({1: [battery(level=80, per_second=0.5)]}), 1, state)
    after_round(plan, state, busy_s=10.0)
    assert state.battery_pct == pytest.approx(75.0)
    plan = plan_round(client({2: [battery(per_round=30, mode="charging", high=90)]}), 2, state)
    after_round(plan, state, busy_s=1.0)
    assert state.battery_pct == 90.0
    empty = ClientState()
    plan = plan_round(client({1: [battery(level=10, per_round=50, low=0)]}), 1, empty)
    after_round(plan, empty, busy_s=0)
    assert empty.battery_pct == 0.0  # never below empty


def test_state_survives_a_restart() -> None:
    state = ClientState(battery_pct=42.5)
    assert ClientState.from_dict(state.as_dict()) == state


def test_temperature_solar_ac_and_cost() -> None:
    def status(update: dict[str, Any]) -> dict[str, Any]:
        return {"type": "updated_status", "status_update": update, "description": ""}

    hot = plan_round(client({1: [status({"status_type": "temperature_status",
                                         "temperature_c": 90})]}), 1, ClientState())
    assert hot.absent == "temperature 90 °C over the 85 °C limit"
    warm = plan_round(client({1: [status({"status_type": "temperature_status",
                                          "temperature_c": 90, "max_temperature_c": 95})]}),
                      1, ClientState())
    assert warm.absent is None and warm.status["temperature_c"] == 90
    dark = plan_round(client({1: [status({"status_type": "power_status",
                                          "power_source": "Solar", "solar_intensity": 0})]}),
                      1, ClientState())
    assert dark.absent == "solar power: no sunlight (solar_intensity 0)"
    sunny = plan_round(client({1: [status({"status_type": "power_status",
                                           "power_source": "Solar",
                                           "solar_intensity": 0.7})]}), 1, ClientState())
    assert sunny.absent is None
    mains = plan_round(client({1: [status({"status_type": "power_status",
                                           "power_source": "AC"})]}), 1, ClientState())
    assert mains.absent is None and mains.status["power_source"] == "AC"
    cost = plan_round(client({1: [status({"status_type": "cost_status", "eur": 3})]}), 1,
                      ClientState())
    assert cost.absent is None and cost.status["cost"] == {"eur": 3}
