"""ODT and FL configurations: bounded numbers, refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from vlab_backend.odt import ConfigError, sample_bytes, validate_fl_config, validate_odt_config


def odt_config(shape: list[int], epochs: int = 2, batch_size: int = 8) -> dict[str, Any]:
    tensor = {"name": "x", "shape": shape, "dtype": "float32", "train_file": "a_1",
              "test_file": "b_2"}
    return {"learning_parameters": {"batch_size": batch_size, "epochs": epochs},
            "input": tensor, "output": {**tensor, "name": "y", "shape": [10]}}


def test_a_valid_config_passes() -> None:
    config = odt_config([8, 8])
    assert validate_odt_config(config) is config
    assert sample_bytes(config["input"]) == 8 * 8 * 4


@pytest.mark.parametrize(("config", "message"), [
    (odt_config([2**32, 2**32]), r"input.shape\[0\] must be a positive integer of at most"),
    (odt_config([2**20, 2**20, 2**10]), "input: one sample would take more than"),
    (odt_config([8], epochs=10**9), "learning_parameters.epochs must be a positive integer"),
    (odt_config([8], batch_size=2**40), "learning_parameters.batch_size must be a positive"),
    (odt_config([8], epochs=0), "learning_parameters.epochs must be a positive integer"),
])
def test_sizes_and_counts_are_bounded(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_odt_config(config)


def test_fl_rounds_are_bounded() -> None:
    config = {"model": {"runtime": "onnxruntime", "input_shape": [8], "output_shape": [10]},
              "config": {"rounds": 10**12}, "clients": [{}]}
    with pytest.raises(ConfigError, match=r"config\.rounds must be a positive integer of at most"):
        validate_fl_config(config)
