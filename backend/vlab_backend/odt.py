"""Validation of on-device-training (TYPE3) and federated-learning (TYPE4) configurations, as
the dAIEdge client writes them."""

from __future__ import annotations

from typing import Any

import numpy as np


class ConfigError(ValueError):
    """The configuration does not follow the schema; the message names the field."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# Upper bounds: what a training job may ask for without holding an instance for days or
# overflowing a sample's size.
MAX_DIM = 2**31
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 2**20
MAX_SAMPLE_BYTES = 2**40
MAX_ROUNDS = 10_000


def _positive_int(value: Any, where: str, maximum: int) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool) and 0 < value <= maximum,
             f"{where} must be a positive integer of at most {maximum}")
    return int(value)


def _tensor(section: Any, where: str) -> dict[str, Any]:
    _require(isinstance(section, dict), f"{where} must be an object")
    for key in ("name", "shape", "dtype", "train_file", "test_file"):
        _require(section.get(key) is not None, f"{where}.{key} is required")
    _require(isinstance(section["name"], str), f"{where}.name must be a string")
    shape = section["shape"]
    _require(isinstance(shape, list) and bool(shape), f"{where}.shape must be a list")
    for index, dim in enumerate(shape):
        _positive_int(dim, f"{where}.shape[{index}]", MAX_DIM)
    try:
        np.dtype(section["dtype"])
    except TypeError as exc:
        raise ConfigError(f"{where}.dtype {section['dtype']!r} is not a numpy dtype") from exc
    for key in ("train_file", "test_file"):
        _require(isinstance(section[key], str) and bool(section[key]),
                 f"{where}.{key} must be a dataset reference")
    _require(sample_bytes(section) <= MAX_SAMPLE_BYTES,
             f"{where}: one sample would take more than {MAX_SAMPLE_BYTES} bytes")
    return section


def sample_bytes(section: dict[str, Any]) -> int:
    """Bytes of one sample of a tensor section (its shape excludes the batch dimension)."""
    size = np.dtype(section["dtype"]).itemsize
    for dim in section["shape"]:  # Python integers: no overflow to 0 as with np.prod
        size *= int(dim)
    return size


def validate_odt_config(config: Any) -> dict[str, Any]:
    """The ODT config (§7.5): learning parameters, input and output tensors with their files."""
    _require(isinstance(config, dict), "the ODT config must be a JSON object")
    params = config.get("learning_parameters")
    _require(isinstance(params, dict), "learning_parameters is required (an object)")
    _positive_int(params.get("batch_size"), "learning_parameters.batch_size", MAX_BATCH_SIZE)
    _positive_int(params.get("epochs"), "learning_parameters.epochs", MAX_EPOCHS)
    _tensor(config.get("input"), "input")
    _tensor(config.get("output"), "output")
    return config


def dataset_refs(config: dict[str, Any]) -> list[str]:
    return [config[part][key] for part in ("input", "output") for key in ("train_file",
                                                                        "test_file")]


def validate_fl_config(config: Any) -> dict[str, Any]:
    """The federated-learning experiment (§7.6): model, server config, clients, counters."""
    _require(isinstance(config, dict), "the FL config must be a JSON object")
    for key in ("model", "config", "clients"):
        _require(key in config, f"{key} is required")
    model = config["model"]
    _require(isinstance(model, dict), "model must be an object")
    for key in ("runtime", "input_shape", "output_shape"):
        _require(model.get(key) is not None, f"model.{key} is required")
    server = config["config"]
    _require(isinstance(server, dict), "config must be an object")
    _positive_int(server.get("rounds"), "config.rounds", MAX_ROUNDS)
    _require(server.get("aggregator", "FedAvg") in ("FedAvg",),
             "config.aggregator must be FedAvg")
    clients = config["clients"]
    _require(isinstance(clients, list) and bool(clients), "clients must be a non-empty list")
    for index, client in enumerate(clients):
        where = f"clients[{index}]"
        _require(isinstance(client, dict), f"{where} must be an object")
        for key in ("client_id", "target", "runtime", "odt_config"):
            _require(client.get(key) is not None, f"{where}.{key} is required")
        try:
            validate_odt_config(client["odt_config"])
        except ConfigError as exc:
            raise ConfigError(f"{where}.odt_config: {exc}") from exc
    return config
