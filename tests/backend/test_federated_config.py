"""The FL config as the published dAIEdge client writes it, and its refusals (each names the
field)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daiedge_vlab.fl import (
    ClientConfig,
    ClientDataset,
    FlConfig,
    FLEventDelayedResponse,
    FLEventEpochCompletion,
    FLEventFailure,
    FLEventNetworkIssue,
    FLEventReducedDataset,
    FLEventSlowResponse,
    FlExperiment,
    FlModel,
    FLTargetLossObjective,
    ServerDataset,
    TrainingConfig,
)

from vlab_backend.federated.config import (
    dataset_fields,
    parse_experiment,
    with_model_names,
)
from vlab_backend.odt import ConfigError, validate_fl_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A config exported by the client's own classes, with every kind of event."""
    root = tmp_path_factory.mktemp("fl")
    model = root / "m.onnx"
    model.write_bytes(b"not needed")
    x = np.zeros((12, 64), np.float32)
    y = np.zeros((12, 10), np.float32)
    config = FlConfig(rounds=4, server_dataset=ServerDataset((x, y)), round_timeout_s=30)
    config.set_min_clients(1, 2, 1)
    fl = FlExperiment(FlModel("onnxruntime", str(model), (64,), (10,)), config, clients=[],
                      output_path=str(root / "exp"), objective=FLTargetLossObjective(0.2))
    first = ClientConfig("board", ClientDataset((x, y), (x, y)),
                         TrainingConfig(epochs=2, batch_size=4, learning_rate=0.01))
    first.add_event(FLEventFailure(round=2))
    first.add_event(FLEventNetworkIssue(start_round=3, fail_fast=True))
    first.add_event(FLEventDelayedResponse(start_round=1, delay_seconds=5))
    first.add_event(FLEventSlowResponse(start_round=4, slow_factor=1.5))
    first.add_battery_profile(start_round=1, stop_round=4, initial_level_pct=60,
                              discharge_pct_per_round=10, min_level_pct=20)
    second = ClientConfig("board", ClientDataset((x, y), (x, y)),
                          TrainingConfig(epochs=1, batch_size=4, learning_rate=0.01),
                          join_at_round=2)
    second.add_event(FLEventReducedDataset(start_round=2, new_size=5, seed=3))
    second.add_event(FLEventEpochCompletion(start_round=3, epoch_number=1))
    second.add_temperature_profile(start_round=2, round_interval=2, temperature_c=40)
    second.add_solar_profile(start_round=4, solar_intensity=0.5)
    fl.add_client(first)
    fl.add_client(second)
    path = fl.export_experiment_config()
    return dict(json.loads(Path(path).read_text()))


def test_the_clients_config_parses(exported: dict[str, Any]) -> None:
    spec = parse_experiment(exported)
    assert validate_fl_config(exported) == exported
    assert (spec.rounds, spec.min_fit_clients, spec.min_available_clients,
            spec.min_eval_clients, spec.round_timeout_s) == (4, 1, 2, 1, 30.0)
    assert [o["type"] for o in spec.objectives] == ["max_rounds", "time_to_loss"]
    first, second = spec.clients
    assert first.client_id == "client_0" and second.join_at_round == 2
    assert first.learning == {"batch_size": 4, "epochs": 2, "learning_rate": 0.01}
    assert sorted(first.events) == [1, 2, 3, 4]
    assert [e["type"] for e in first.events[2]] == ["failure", "updated_status"]
    assert spec.server_dataset is not None
    fields = [f for f, _, _ in dataset_fields(spec)]
    assert fields[0] == "clients[0].odt_config.input.train_file"
    assert fields[-1] == "config.server_dataset.output.file"


def broken(exported: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(exported)
    *parents, last = path.split(".")
    node: Any = config
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    return config


@pytest.mark.parametrize(("path", "value", "message"), [
    ("config.rounds", 0, "config.rounds must be a positive integer of at most"),
    ("config.rounds", -3, "config.rounds"),
    ("config.aggregator", "FedProx", "config.aggregator 'FedProx' is not supported"),
    ("config.selection_strategy", "Random", "config.selection_strategy"),
    ("config.min_fit_clients", 3, "config.min_fit_clients must be an integer from 0 to 2"),
    ("config.round_timeout_s", 0, "config.round_timeout_s must be a number > 0"),
    ("config.objectives", [{"type": "fastest", "id": "O1"}],
     "config.objectives[0].type 'fastest' is not an objective"),
    ("config.objectives", [{"type": "acc_at_time", "time_seconds": -1}],
     "config.objectives[0].time_seconds"),
    ("config.server_dataset.input.shape", [0], "config.server_dataset.input.shape[0]"),
    ("clients", [], "clients must be a non-empty list"),
    ("clients.1.client_id", "client_0", "clients[1].client_id 'client_0' is used twice"),
    ("clients.0.join_at_round", 9, "clients[0].join_at_round"),
    ("clients.0.odt_config.learning_parameters.batch_size", 0,
     "clients[0].odt_config: learning_parameters.batch_size"),
    ("clients.0.training_parameters.learning_rate", -1,
     "clients[0].training_parameters.learning_rate"),
    ("clients.0.events", {"x": []}, "clients[0].events: 'x' is not a round number"),
    ("clients.0.events", {"1": [{"type": "meteor"}]},
     "clients[0].events[1][0].type 'meteor' is not an event type"),
    ("clients.0.events", {"1": [{"type": "delayed_response", "delay_seconds": -1}]},
     "clients[0].events[1][0].delay_seconds"),
    ("clients.0.events", {"1": [{"type": "reduced_dataset", "new_size": 0}]},
     "clients[0].events[1][0].new_size"),
    ("clients.0.events", {"1": [{"type": "network_issue", "fail_fast": "yes"}]},
     "clients[0].events[1][0].fail_fast"),
    ("clients.0.events", {"1": [{"type": "epoch_completion", "epoch_number": 0}]},
     "clients[0].events[1][0].epoch_number"),
    ("clients.0.events", {"1": [{"type": "updated_status",
                                 "status_update": {"status_type": "mood"}}]},
     "clients[0].events[1][0].status_update.status_type 'mood'"),
    ("clients.0.events", {"1": [{"type": "updated_status", "status_update": {
        "status_type": "power_status", "power_source": "Battery",
        "bounds": {"min_level_pct": 80, "max_level_pct": 20}}}]},
     "clients[0].events[1][0].status_update.bounds"),
])
def test_refusals_name_the_field(exported: dict[str, Any], path: str, value: Any,
                                 message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_experiment(broken(exported, path, value))
    assert message in str(refused.value)


def test_the_model_names_replace_the_clients_fixed_ones(exported: dict[str, Any]) -> None:
    odt = exported["clients"][0]["odt_config"]
    info = {"inputs": [{"name": "pixels"}], "outputs": [{"name": "probs"}, {"name": "aux"}]}
    named = with_model_names(odt, info)
    assert (named["input"]["name"], named["output"]["name"]) == ("pixels", "probs")
    assert odt["input"]["name"] == "input"  # the original is left as it was
    kept = with_model_names(odt, {"inputs": [{"name": "input"}], "outputs": [{"name": "aux"},
                                                                              {"name": "output"}]})
    assert (kept["input"]["name"], kept["output"]["name"]) == ("input", "output")
