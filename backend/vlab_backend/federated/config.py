"""The federated-learning experiment as the dAIEdge client writes it (`fl_config`, §7.6),
validated field by field; every refusal names the field."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from vlab_backend.odt import MAX_ROUNDS, ConfigError, validate_odt_config

EVENT_TYPES = ("failure", "network_issue", "delayed_response", "slow_response",
               "reduced_dataset", "epoch_completion", "updated_status")
OBJECTIVE_TYPES = {"max_rounds": "max_rounds", "time_to_acc": "target_accuracy",
                   "time_to_loss": "target_loss", "loss_at_time": "time_seconds",
                   "acc_at_time": "time_seconds"}
STATUS_TYPES = ("power_status", "temperature_status", "cost_status")
POWER_SOURCES = ("Battery", "Solar", "AC")
# Only these strategy choices exist in the dAIEdge client; anything else is refused.
SUPPORTED = {"aggregator": ("FedAvg",), "model_controller": ("Single",),
             "selection_strategy": ("All",)}
MAX_CLIENTS = 64


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, where: str, minimum: float = 0.0, strict: bool = False,
            optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    _require(ok, f"{where} must be a number {'>' if strict else '>='} {minimum:g}")
    return float(value)


def _int(value: Any, where: str, minimum: int, maximum: int, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    rule = (f"a positive integer of at most {maximum}" if minimum == 1
            else f"an integer from {minimum} to {maximum}")
    _require(_is_int(value) and minimum <= value <= maximum, f"{where} must be {rule}")
    return int(value)


@dataclass
class ClientSpec:
    """One client: its target and engine, its data (ODT config) and its scripted events."""

    client_id: str
    target: str
    runtime: str
    odt: dict[str, Any]
    join_at_round: int
    learning: dict[str, Any]
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class ExperimentSpec:
    rounds: int
    min_fit_clients: int
    min_available_clients: int
    min_eval_clients: int
    round_timeout_s: float | None
    server_dataset: dict[str, Any] | None
    objectives: list[dict[str, Any]]
    clients: list[ClientSpec]
    model: dict[str, Any]


def _event(event: Any, where: str, rounds: int) -> dict[str, Any]:
    _require(isinstance(event, dict), f"{where} must be an object")
    kind = event.get("type")
    _require(kind in EVENT_TYPES,
             f"{where}.type {kind!r} is not an event type; known: {', '.join(EVENT_TYPES)}")
    if kind == "network_issue":
        _number(event.get("roud_timeout_s"), f"{where}.roud_timeout_s", optional=True)
        _require(isinstance(event.get("fail_fast", False), bool),
                 f"{where}.fail_fast must be true or false")
    elif kind == "delayed_response":
        _number(event.get("delay_seconds"), f"{where}.delay_seconds")
    elif kind == "slow_response":
        _number(event.get("slow_factor"), f"{where}.slow_factor", strict=True)
    elif kind == "reduced_dataset":
        _int(event.get("new_size"), f"{where}.new_size", 1, 2**40)
        _require(isinstance(event.get("suffule", True), bool),
                 f"{where}.suffule must be true or false")
        seed = event.get("seed")
        _require(seed is None or (_is_int(seed) and 0 <= seed < 2**63),
                 f"{where}.seed must be null or a non-negative integer")
    elif kind == "epoch_completion":
        _int(event.get("epoch_number"), f"{where}.epoch_number", 1, 10_000)
    elif kind == "updated_status":
        _status(event.get("status_update"), f"{where}.status_update")
    return event


def _status(status: Any, where: str) -> None:
    _require(isinstance(status, dict), f"{where} must be an object")
    kind = status.get("status_type")
    _require(kind in STATUS_TYPES,
             f"{where}.status_type {kind!r} is not one of {', '.join(STATUS_TYPES)}")
    if kind == "temperature_status":
        _number(status.get("temperature_c"), f"{where}.temperature_c", minimum=-273.15)
        _number(status.get("max_temperature_c"), f"{where}.max_temperature_c",
                minimum=-273.15, optional=True)
    if kind != "power_status":
        return
    source = status.get("power_source")
    _require(source in POWER_SOURCES,
             f"{where}.power_source {source!r} is not one of {', '.join(POWER_SOURCES)}")
    if source == "Solar":
        _number(status.get("solar_intensity"), f"{where}.solar_intensity")
    if source != "Battery":
        return
    _require(status.get("mode", "discharging") in ("charging", "discharging"),
             f"{where}.mode must be charging or discharging")
    bounds = status.get("bounds", {})
    _require(isinstance(bounds, dict), f"{where}.bounds must be an object")
    low = _number(bounds.get("min_level_pct", 0.0), f"{where}.bounds.min_level_pct")
    high = _number(bounds.get("max_level_pct", 100.0), f"{where}.bounds.max_level_pct")
    _require(low is not None and high is not None and low <= high <= 100,
             f"{where}.bounds: min_level_pct <= max_level_pct <= 100")
    _number(status.get("initial_level_pct"), f"{where}.initial_level_pct", optional=True)
    per_round = _number(status.get("discharge_pct_per_round"),
                        f"{where}.discharge_pct_per_round", optional=True)
    per_second = _number(status.get("discharge_pct_per_second"),
                         f"{where}.discharge_pct_per_second", optional=True)
    _require(per_round is None or per_second is None,
             f"{where}: discharge_pct_per_round or discharge_pct_per_second, not both")


def _objective(objective: Any, where: str) -> dict[str, Any]:
    _require(isinstance(objective, dict), f"{where} must be an object")
    kind = objective.get("type")
    _require(kind in OBJECTIVE_TYPES, f"{where}.type {kind!r} is not an objective; known: "
                                      f"{', '.join(OBJECTIVE_TYPES)}")
    key = OBJECTIVE_TYPES[kind]
    if kind == "max_rounds":
        _int(objective.get(key), f"{where}.{key}", 1, MAX_ROUNDS)
    elif kind == "time_to_acc":
        value = _number(objective.get(key), f"{where}.{key}")
        _require(value is not None and value <= 1, f"{where}.{key} must be from 0 to 1")
    else:
        _number(objective.get(key), f"{where}.{key}")
    return objective


def _learning(client: dict[str, Any], where: str) -> dict[str, Any]:
    """The learning parameters of a client's training jobs: the ODT config's, overridden by
    `training_parameters` (which alone carries `learning_rate` in the dAIEdge client)."""
    params = dict(client["odt_config"]["learning_parameters"])
    extra = client.get("training_parameters") or {}
    _require(isinstance(extra, dict), f"{where}.training_parameters must be an object")
    for key in ("epochs", "batch_size"):
        if extra.get(key) is not None:
            _int(extra[key], f"{where}.training_parameters.{key}", 1, 2**20)
    if extra.get("learning_rate") is not None:
        _number(extra["learning_rate"], f"{where}.training_parameters.learning_rate",
                strict=True)
    params.update({k: v for k, v in extra.items() if v is not None})
    try:
        validate_odt_config({**client["odt_config"], "learning_parameters": params})
    except ConfigError as exc:
        raise ConfigError(f"{where}.training_parameters: {exc}") from exc
    return params


def _server_dataset(data: Any) -> dict[str, Any] | None:
    if not data:
        return None
    _require(isinstance(data, dict), "config.server_dataset must be an object")
    for section in ("input", "output"):
        tensor = data.get(section)
        where = f"config.server_dataset.{section}"
        _require(isinstance(tensor, dict), f"{where} must be an object")
        for key in ("shape", "dtype", "file"):
            _require(tensor.get(key) is not None, f"{where}.{key} is required")
        _require(isinstance(tensor["shape"], list), f"{where}.shape must be a list")
        for index, dim in enumerate(tensor["shape"]):
            _int(dim, f"{where}.shape[{index}]", 1, 2**31)
        _require(isinstance(tensor["file"], str) and bool(tensor["file"]),
                 f"{where}.file must be a dataset reference")
    return data


def parse_experiment(config: Any) -> ExperimentSpec:
    """The experiment, or a ConfigError naming the first bad field."""
    _require(isinstance(config, dict), "the FL config must be a JSON object")
    for key in ("model", "config", "clients"):
        _require(key in config, f"{key} is required")
    model = config["model"]
    _require(isinstance(model, dict), "model must be an object")
    for key in ("runtime", "input_shape", "output_shape"):
        _require(model.get(key) is not None, f"model.{key} is required")
    server = config["config"]
    _require(isinstance(server, dict), "config must be an object")
    rounds = _int(server.get("rounds"), "config.rounds", 1, MAX_ROUNDS)
    for key, allowed in SUPPORTED.items():
        value = server.get(key) or allowed[0]
        _require(value in allowed, f"config.{key} {value!r} is not supported; use "
                                   f"{' or '.join(allowed)}")
    _require(server.get("client_config_provider") in (None, ""),
             "config.client_config_provider is not supported (leave it null)")
    clients_raw = config["clients"]
    _require(isinstance(clients_raw, list) and bool(clients_raw),
             "clients must be a non-empty list")
    _require(len(clients_raw) <= MAX_CLIENTS, f"clients: at most {MAX_CLIENTS} clients")
    minimums = {key: _int(server.get(key), f"config.{key}", 0, len(clients_raw), default=1)
                for key in ("min_fit_clients", "min_available_clients", "min_eval_clients")}
    timeout = _number(server.get("round_timeout_s"), "config.round_timeout_s", strict=True,
                      optional=True)
    objectives_raw = server.get("objectives") or [{"type": "max_rounds", "id": "O1",
                                                   "max_rounds": rounds}]
    _require(isinstance(objectives_raw, list), "config.objectives must be a list")
    objectives = [_objective(o, f"config.objectives[{i}]") for i, o in enumerate(objectives_raw)]
    clients: list[ClientSpec] = []
    seen: set[str] = set()
    for index, client in enumerate(clients_raw):
        where = f"clients[{index}]"
        _require(isinstance(client, dict), f"{where} must be an object")
        for key in ("client_id", "target", "runtime", "odt_config"):
            _require(client.get(key) is not None, f"{where}.{key} is required")
        for key in ("client_id", "target", "runtime"):
            _require(isinstance(client[key], str) and bool(client[key]),
                     f"{where}.{key} must be a string")
        _require(client["client_id"] not in seen,
                 f"{where}.client_id {client['client_id']!r} is used twice")
        seen.add(client["client_id"])
        try:
            validate_odt_config(client["odt_config"])
        except ConfigError as exc:
            raise ConfigError(f"{where}.odt_config: {exc}") from exc
        join = _int(client.get("join_at_round"), f"{where}.join_at_round", 0, rounds, default=0)
        events_raw = client.get("events") or {}
        _require(isinstance(events_raw, dict), f"{where}.events must be an object keyed by round")
        events: dict[int, list[dict[str, Any]]] = {}
        for key, listed in events_raw.items():
            _require(str(key).isdigit() and 1 <= int(key) <= MAX_ROUNDS,
                     f"{where}.events: {key!r} is not a round number")
            _require(isinstance(listed, list), f"{where}.events[{key}] must be a list")
            events[int(key)] = [_event(e, f"{where}.events[{key}][{i}]", rounds)
                                for i, e in enumerate(listed)]
        clients.append(ClientSpec(client_id=client["client_id"], target=client["target"],
                                  runtime=client["runtime"], odt=client["odt_config"],
                                  join_at_round=join, learning=_learning(client, where),
                                  events=events))
    return ExperimentSpec(rounds=rounds, min_fit_clients=minimums["min_fit_clients"],
                          min_available_clients=minimums["min_available_clients"],
                          min_eval_clients=minimums["min_eval_clients"],
                          round_timeout_s=timeout,
                          server_dataset=_server_dataset(server.get("server_dataset")),
                          objectives=objectives, clients=clients, model=model)


def dataset_fields(spec: ExperimentSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """Every dataset the experiment names: (field, ref, tensor section)."""
    fields = []
    for index, client in enumerate(spec.clients):
        for section in ("input", "output"):
            for key in ("train_file", "test_file"):
                fields.append((f"clients[{index}].odt_config.{section}.{key}",
                               client.odt[section][key], client.odt[section]))
    if spec.server_dataset:
        for section in ("input", "output"):
            tensor = spec.server_dataset[section]
            fields.append((f"config.server_dataset.{section}.file", tensor["file"], tensor))
    return fields


def with_model_names(odt: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """A client's ODT config with the model's tensor names. The dAIEdge client names every
    client's tensors `input` and `output` whatever the model calls them; the server knows
    the model, so a name the model does not have becomes its (only) input's, or its first
    output's."""
    odt = copy.deepcopy(odt)
    inputs = [t.get("name") for t in info.get("inputs") or []]
    outputs = [t.get("name") for t in info.get("outputs") or []]
    if len(inputs) == 1 and odt["input"].get("name") not in inputs:
        odt["input"]["name"] = inputs[0]
    if outputs and odt["output"].get("name") not in outputs:
        odt["output"]["name"] = outputs[0]
    return odt
