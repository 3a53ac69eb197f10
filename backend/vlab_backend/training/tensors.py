"""The ODT config against the model it trains: the tensor names, shapes (without the batch
dimension) and dtypes must be the model's, checked at submission so that a mismatch is a 400
that names the field, not a failed job."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlab_backend.engines.base import TensorSpec
from vlab_backend.intake import ModelInfo
from vlab_backend.odt import ConfigError


def _describe(spec: TensorSpec) -> str:
    return f"{spec.name!r} (shape {list(spec.shape)}, {spec.dtype})"


def _find(section: dict[str, Any], where: str, specs: list[TensorSpec], kind: str) -> TensorSpec:
    by_name = {spec.name: spec for spec in specs}
    name = section["name"]
    if name not in by_name:
        listed = ", ".join(_describe(spec) for spec in specs)
        raise ConfigError(f"{where}.name {name!r} is not an {kind} of the model (its {kind}s: "
                          f"{listed})")
    return by_name[name]


def _per_sample(spec: TensorSpec) -> list[int]:
    """The tensor's shape without its first (batch) dimension."""
    return [int(d) for d in spec.shape[1:]]


def is_class_index_target(section: dict[str, Any]) -> bool:
    """Targets given as one class index per sample: an integer dtype, shape [] or [1]."""
    return np.dtype(section["dtype"]).kind in "iu" and list(section["shape"]) in ([], [1])


def check_config_against_model(odt: dict[str, Any], info: ModelInfo) -> None:
    """ConfigError naming the first field of `odt` (a validated ODT config) that does not fit
    the model: `input` must be the model's only input with its per-sample shape and dtype;
    `output` one of its outputs, the targets either of that output's per-sample shape (one-hot
    or values, of its dtype, or one-hot as integers) or class indices (an integer dtype, shape
    [1] or [])."""
    if not info.inputs or not info.outputs:
        return  # a format the platform cannot inspect: the target checks the tensors itself
    section = odt["input"]
    model_input = _find(section, "input", info.inputs, "input")
    if len(info.inputs) > 1:
        raise ConfigError(f"input: the model has {len(info.inputs)} inputs ("
                          + ", ".join(spec.name for spec in info.inputs)
                          + "); on-device training feeds a model with one input")
    if list(section["shape"]) != _per_sample(model_input):
        raise ConfigError(f"input.shape {list(section['shape'])} does not match the model's "
                          f"input {_describe(model_input)}: the config gives the shape of one "
                          f"sample, {_per_sample(model_input)}")
    if np.dtype(section["dtype"]) != np.dtype(model_input.dtype):
        raise ConfigError(f"input.dtype {section['dtype']} does not match the model's input "
                          f"{_describe(model_input)}")
    section = odt["output"]
    model_output = _find(section, "output", info.outputs, "output")
    per_sample = _per_sample(model_output)
    dtype = np.dtype(section["dtype"])
    if is_class_index_target(section) and per_sample != [1]:
        if len(per_sample) != 1:
            raise ConfigError(f"output.shape {list(section['shape'])}: class indices need a "
                              f"model output of shape [N, classes]; the model's output is "
                              f"{_describe(model_output)}")
        return
    if list(section["shape"]) != per_sample:
        raise ConfigError(f"output.shape {list(section['shape'])} does not match the model's "
                          f"output {_describe(model_output)}: give targets of shape "
                          f"{per_sample} (one-hot or values) or [1] (class indices, an integer "
                          "dtype)")
    if dtype != np.dtype(model_output.dtype) and dtype.kind not in "iu":
        raise ConfigError(f"output.dtype {section['dtype']} does not match the model's output "
                          f"{_describe(model_output)}")
