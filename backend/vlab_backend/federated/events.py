"""Scripted client events: what each one does to a client's round.

Rules (also in the README):

* `failure`: the client is absent that round.
* `network_issue`: with `fail_fast`, the client is unreachable from the start of the round
  (no job); otherwise it trains but its update never arrives: the server waits
  `roud_timeout_s` seconds (0 if unset) of experiment time for it, then drops it.
* `delayed_response`: the update arrives `delay_seconds` later.
* `slow_response`: the client's training takes `slow_factor` times as long.
  A response later than `round_timeout_s` is dropped. Delays are experiment time (added to
  the clock the time objectives read), never slept: a scripted delay holds no target.
* `reduced_dataset`: the client trains on `new_size` samples of its training set that round,
  taken after a shuffle with `seed` when `suffule` is true, else the first `new_size`.
* `epoch_completion`: the client completes only `epoch_number` epochs that round.
* `updated_status`: power — a battery (level from `initial_level_pct`, default 100, at the
  profile's first round; discharging by `discharge_pct_per_round` each round, or by
  `discharge_pct_per_second` times the client's response time; charging raises it, up to
  `bounds.max_level_pct`) leaves the client unavailable while its level is below
  `bounds.min_level_pct`; solar power with `solar_intensity` 0 leaves it unavailable; AC has
  no limit. Temperature — above `max_temperature_c` (default 85 °C) the client is unavailable
  (thermal shutdown). Cost statuses are recorded only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlab_backend.federated.config import ClientSpec

DEFAULT_MAX_TEMPERATURE_C = 85.0


@dataclass
class ClientState:
    """What persists from round to round: the battery's level."""

    battery_pct: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"battery_pct": self.battery_pct}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientState:
        return cls(battery_pct=data.get("battery_pct"))


@dataclass
class RoundPlan:
    """What a client does in one round."""

    absent: str | None = None  # why it takes no part, if it does not
    epochs: int | None = None  # None: as configured
    reduced: dict[str, Any] | None = None  # new_size, suffule, seed
    slow_factor: float = 1.0
    delay_s: float = 0.0
    network_timeout_s: float | None = None  # the update is lost; the server waits this long
    battery: dict[str, Any] | None = None  # the battery status of the round, if any
    status: dict[str, Any] = field(default_factory=dict)  # battery/temperature/... as seen
    events: list[dict[str, Any]] = field(default_factory=list)  # what applied, as recorded


def _record(event: dict[str, Any], effect: str) -> dict[str, Any]:
    return {"type": event.get("type"), "description": event.get("description", ""),
            "effect": effect}


def plan_round(client: ClientSpec, round_number: int, state: ClientState) -> RoundPlan:
    """The client's plan for `round_number`; updates the battery level at the start of a
    battery profile."""
    plan = RoundPlan()
    if round_number < client.join_at_round:
        plan.absent = f"joins at round {client.join_at_round}"
        return plan
    for event in client.events.get(round_number, []):
        kind = event["type"]
        if kind == "failure":
            plan.absent = plan.absent or f"failure: {event.get('description') or 'client failed'}"
            plan.events.append(_record(event, "absent this round"))
        elif kind == "network_issue":
            if event.get("fail_fast"):
                plan.absent = plan.absent or "network issue: unreachable (fail_fast)"
                plan.events.append(_record(event, "unreachable from the start of the round"))
            else:
                plan.network_timeout_s = float(event.get("roud_timeout_s") or 0.0)
                plan.events.append(_record(
                    event, f"update lost; the server waits {plan.network_timeout_s:g} s"))
        elif kind == "delayed_response":
            plan.delay_s += float(event["delay_seconds"])
            plan.events.append(_record(event, f"+{float(event['delay_seconds']):g} s"))
        elif kind == "slow_response":
            plan.slow_factor *= float(event["slow_factor"])
            plan.events.append(_record(event, f"x{float(event['slow_factor']):g} training time"))
        elif kind == "reduced_dataset":
            plan.reduced = {"new_size": int(event["new_size"]),
                            "suffule": bool(event.get("suffule", True)),
                            "seed": event.get("seed")}
            plan.events.append(_record(event, f"trains on {int(event['new_size'])} samples"))
        elif kind == "epoch_completion":
            plan.epochs = int(event["epoch_number"])
            plan.events.append(_record(event, f"completes {plan.epochs} epoch(s)"))
        elif kind == "updated_status":
            _apply_status(event, plan, state)
    return plan


def _apply_status(event: dict[str, Any], plan: RoundPlan, state: ClientState) -> None:
    status = event["status_update"]
    kind = status["status_type"]
    if kind == "temperature_status":
        temperature = float(status["temperature_c"])
        limit = float(status.get("max_temperature_c") or DEFAULT_MAX_TEMPERATURE_C)
        plan.status["temperature_c"] = temperature
        if temperature > limit:
            plan.absent = plan.absent or (f"temperature {temperature:g} °C over the "
                                          f"{limit:g} °C limit")
            plan.events.append(_record(event, "unavailable: too hot"))
        else:
            plan.events.append(_record(event, "recorded"))
        return
    if kind == "cost_status":
        plan.status["cost"] = {k: v for k, v in status.items() if k != "status_type"}
        plan.events.append(_record(event, "recorded"))
        return
    source = status["power_source"]
    plan.status["power_source"] = source
    if source == "AC":
        plan.events.append(_record(event, "mains power"))
    elif source == "Solar":
        intensity = float(status["solar_intensity"])
        plan.status["solar_intensity"] = intensity
        if intensity <= 0:
            plan.absent = plan.absent or "solar power: no sunlight (solar_intensity 0)"
            plan.events.append(_record(event, "unavailable: no power"))
        else:
            plan.events.append(_record(event, "recorded"))
    else:
        bounds = status.get("bounds") or {}
        low = float(bounds.get("min_level_pct", 0.0))
        if status.get("initial_level_pct") is not None or state.battery_pct is None:
            state.battery_pct = float(status.get("initial_level_pct", 100.0))
        level = state.battery_pct
        plan.status["battery_pct"] = round(level, 3)
        plan.battery = status
        if level < low:
            plan.absent = plan.absent or (f"battery at {level:.1f} % is below its "
                                          f"{low:g} % minimum")
            plan.events.append(_record(event, "unavailable: battery low"))
        else:
            plan.events.append(_record(event, f"battery at {level:.1f} %"))


def after_round(plan: RoundPlan, state: ClientState, busy_s: float) -> None:
    """Battery use at the end of a round: per round, or per second of the client's busy
    time; charging adds instead, up to the profile's maximum. Nothing without a battery."""
    status = plan.battery
    if status is None or state.battery_pct is None:
        return
    bounds = status.get("bounds") or {}
    high = float(bounds.get("max_level_pct", 100.0))
    if status.get("discharge_pct_per_round") is not None:
        rate = float(status["discharge_pct_per_round"])
    elif status.get("discharge_pct_per_second") is not None:
        rate = float(status["discharge_pct_per_second"]) * max(0.0, busy_s)
    else:
        rate = 0.0
    if status.get("mode", "discharging") == "charging":
        state.battery_pct = min(high, state.battery_pct + rate)
    else:
        state.battery_pct = max(0.0, state.battery_pct - rate)
