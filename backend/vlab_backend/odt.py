"""Validation of on-device-training (TYPE3) and federated-learning (TYPE4) configurations, as
the dAIEdge client writes them."""

from __future__ import annotations

import math
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
MAX_LEARNING_RATE = 1e3


def _positive_int(value: Any, where: str, maximum: int) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool) and 0 < value <= maximum,
             f"{where} must be a positive integer of at most {maximum}")
    return int(value)


def _tensor(section: Any, where: str, scalar: bool = False) -> dict[str, Any]:
    """A tensor section; `scalar`: its shape may be [] (one class index per sample)."""
    _require(isinstance(section, dict), f"{where} must be an object")
    for key in ("name", "shape", "dtype", "train_file", "test_file"):
        _require(section.get(key) is not None, f"{where}.{key} is required")
    _require(isinstance(section["name"], str), f"{where}.name must be a string")
    shape = section["shape"]
    _require(isinstance(shape, list) and (scalar or bool(shape)),
             f"{where}.shape must be a list" + ("" if scalar else " of dimensions"))
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
    _learning_extras(params)
    _tensor(config.get("input"), "input")
    _tensor(config.get("output"), "output", scalar=True)
    return config


def _learning_extras(params: dict[str, Any]) -> None:
    """The types of the optional learning parameters that this lab's targets read
    (`learning_rate`, `optimizer`, `loss`, `shuffle`, `seed`); which optimizers and losses
    exist is the target's to say."""
    where = "learning_parameters"
    if "learning_rate" in params:
        rate = params["learning_rate"]
        _require(isinstance(rate, int | float) and not isinstance(rate, bool)
                 and math.isfinite(rate) and 0 < rate <= MAX_LEARNING_RATE,
                 f"{where}.learning_rate must be a number above 0 and at most "
                 f"{MAX_LEARNING_RATE}")
    for key in ("optimizer", "loss"):
        if key in params:
            _require(isinstance(params[key], str) and 0 < len(params[key]) <= 64,
                     f"{where}.{key} must be a name")
    if "shuffle" in params:
        _require(isinstance(params["shuffle"], bool), f"{where}.shuffle must be true or false")
    if "seed" in params:
        seed = params["seed"]
        _require(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32,
                 f"{where}.seed must be an integer from 0 to {2**32 - 1}")


def dataset_refs(config: dict[str, Any]) -> list[str]:
    return [config[part][key] for part in ("input", "output") for key in ("train_file",
                                                                        "test_file")]


def validate_fl_config(config: Any) -> dict[str, Any]:
    """The federated-learning experiment (§7.6): model, server config, objectives, clients
    with their ODT configs and scripted events (`vlab_backend.federated.config`)."""
    from vlab_backend.federated.config import parse_experiment

    parse_experiment(config)
    return dict(config)
