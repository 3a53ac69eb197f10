"""The engine adapter contract shared by the harness (which runs engines) and the API (which
validates requests against what each engine declares).

Adapters import their inference library lazily, in `load`, so that the API server can list
engines and validate parameters without loading any of them.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson

PARAMETER_TYPES = ("string", "integer", "number", "boolean", "object", "array", "enum")

# Bounds of what a user may send as a parameter value, whatever the parameter declares.
INT64 = (-(2**63), 2**63 - 1)
MAX_STRING_CHARS = 4096
MAX_JSON_DEPTH = 32
# What Python's json reads as non-finite numbers, which orjson rightly refuses.
_NON_FINITE = re.compile(r"NaN|Infinity")


def check_json_value(value: Any) -> None:
    """ValueError if lists and objects nest more than MAX_JSON_DEPTH deep in `value`, or if it
    holds a non-finite number. Walks without recursion: the depth is what it checks."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
            stack.extend((child, depth + 1) for child in item)


def parse_user_json(text: str | bytes) -> Any:
    """JSON a user sent: no NaN or Infinity (nor numbers that overflow to it), nesting at most
    MAX_JSON_DEPTH deep. ValueError saying what is wrong (the caller names the field); never
    RecursionError (orjson stops at its own depth limit)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        hint = "; NaN and Infinity are not JSON numbers" if _NON_FINITE.search(
            text if isinstance(text, str) else text.decode("utf-8", "replace")) else ""
        raise ValueError(f"{exc}{hint}") from exc
    check_json_value(value)
    return value


@dataclass(frozen=True)
class ParameterSpec:
    """A run-time parameter an engine accepts, with its type and default."""

    key: str
    type: str
    default: Any
    description: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def validate(self, value: Any) -> Any:
        """The value coerced to the declared type; ValueError with a clear message if invalid.
        Numbers are finite and within the declared bounds (integers within 64 bits)."""
        if self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"parameter {self.key!r} must be an integer")
            try:
                value = int(value)
            except ValueError as exc:
                raise ValueError(f"parameter {self.key!r} must be an integer") from exc
            self._check_range(value, *INT64)
        elif self.type == "number":
            try:
                value = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"parameter {self.key!r} must be a number") from exc
            if not math.isfinite(value):
                raise ValueError(f"parameter {self.key!r} must be a finite number")
        elif self.type == "boolean":
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                value = value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise ValueError(f"parameter {self.key!r} must be true or false")
        elif self.type == "object":
            value = _json_value(self.key, value, dict, "a JSON object")
        elif self.type == "array":
            value = _json_value(self.key, value, list, "a JSON array")
        elif self.type in ("string", "enum"):
            if isinstance(value, dict | list):
                raise ValueError(f"parameter {self.key!r} must be a string")
            value = str(value)
            if len(value) > MAX_STRING_CHARS:
                raise ValueError(f"parameter {self.key!r} must be at most {MAX_STRING_CHARS} "
                                 "characters")
        if self.choices and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise ValueError(f"parameter {self.key!r} must be one of: {allowed}")
        if self.type in ("integer", "number"):
            self._check_range(value, self.minimum, self.maximum)
        return value

    def _check_range(self, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise ValueError(f"parameter {self.key!r} must be at least {_number(low)}")
        if high is not None and value > high:
            raise ValueError(f"parameter {self.key!r} must be at most {_number(high)}")

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "type": self.type, "default": self.default,
                "description": self.description, "choices": list(self.choices)}


def _number(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _json_value(key: str, value: Any, kind: type, what: str) -> Any:
    try:
        if isinstance(value, str):
            value = parse_user_json(value)
        check_json_value(value)
    except ValueError as exc:
        raise ValueError(f"parameter {key!r} must be {what} ({exc})") from exc
    if not isinstance(value, kind):
        raise ValueError(f"parameter {key!r} must be {what}")
    return value


# Upper bounds of the harness's parameters: a run's timed phases stay well inside the
# manager step's time limit (30 minutes by default).
MAX_THREADS = 1024
MAX_RUNS = 100_000
MAX_WARMUP_S = 60.0
MAX_MIN_TIME_S = 600.0

# Parameters the harness itself understands, whatever the engine.
COMMON_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("threads", "integer", 0, "intra-op threads; 0 = one per pinned core",
                  minimum=0, maximum=MAX_THREADS),
    ParameterSpec("warmup_runs", "integer", 5, "untimed inferences before the timed ones",
                  minimum=0, maximum=MAX_RUNS),
    ParameterSpec("warmup_min_s", "number", 0.2, "minimum warm-up time in seconds", minimum=0,
                  maximum=MAX_WARMUP_S),
    ParameterSpec("min_time_s", "number", 0.0,
                  "keep running timed inferences until this many seconds have passed (TYPE1)",
                  minimum=0, maximum=MAX_MIN_TIME_S),
    ParameterSpec("seed", "integer", 0, "seed of the random inputs (TYPE1)", minimum=0,
                  maximum=INT64[1]),
    ParameterSpec("profile_layers", "boolean", True,
                  "after the timed runs, profile per layer where the engine can (not timed)"),
    ParameterSpec("profile_runs", "integer", 10, "inferences of the per-layer profile",
                  minimum=1, maximum=MAX_RUNS),
)


@dataclass(frozen=True)
class EngineSpec:
    """What an engine declares: enough for the API to list, validate and offer it without
    importing its runtime.

    `runtime_modules`: the modules the adapter imports to run (e.g. `onnxruntime`). An engine
    is offered on a CPU host only where their top-level packages are installed, and a warm
    worker imports them before it forks its runs, unless `preload` is False (a runtime that
    starts threads or opens a device on import is not safe to import before a fork).
    `distribution`: the distribution whose version is the engine's version; by default the
    one that provides the engine module. `host_cpu`: the engine runs in the harness on a CPU
    host, so `host-cpu` offers it; False for an engine that only exists on other targets (a
    microcontroller's runtime, driven by that target's repository). `host_cpu_types`: the
    benchmark types `host-cpu` offers with it (TYPE3, on-device training, where the built-in
    target repository trains with the engine).
    """

    name: str
    display_name: str
    formats: tuple[str, ...]
    parameters: tuple[ParameterSpec, ...] = field(default_factory=tuple)
    runtime_modules: tuple[str, ...] = ()
    distribution: str = ""
    host_cpu: bool = True
    preload: bool = True
    host_cpu_types: tuple[str, ...] = ("TYPE1", "TYPE2")

    def missing_runtime(self) -> str | None:
        """Why this engine cannot run in this Python environment (a runtime package is not
        installed), or None. Finds the packages without importing them."""
        import importlib.util

        for module in self.runtime_modules:
            top = module.partition(".")[0]
            try:
                found = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"its runtime module {top!r} is not installed"
        return None

    @property
    def all_parameters(self) -> tuple[ParameterSpec, ...]:
        return COMMON_PARAMETERS + self.parameters

    @property
    def file_extensions(self) -> list[str]:
        return ["." + fmt for fmt in self.formats]

    def validate_parameters(self, params: dict[str, Any],
                            extra: dict[str, ParameterSpec] | None = None) -> dict[str, Any]:
        """Values coerced to their declared types. `extra`: parameters attached to the engine
        by an administrator, which the target receives in its parameters file."""
        declared = {**(extra or {}), **{p.key: p for p in self.all_parameters}}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ValueError(f"engine {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(declared))}")
        return {key: declared[key].validate(value) for key, value in params.items()}

    def resolved_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter this engine declares, the given values over the defaults; keys it
        does not declare (target-specific ones) pass through unchanged."""
        values = {p.key: p.default for p in self.all_parameters}
        known = {k: v for k, v in params.items() if k in values}
        values.update(self.validate_parameters(known))
        values.update({k: v for k, v in params.items() if k not in values})
        return values


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class EngineAdapter(ABC):
    """Loads one model and runs it. `infer` is the only call the harness times."""

    spec: ClassVar[EngineSpec]

    @abstractmethod
    def load(self, model_path: Path, params: dict[str, Any], threads: int) -> None: ...

    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        """Bind the inputs of the next inference (not timed)."""

    @abstractmethod
    def infer(self) -> None:
        """One inference: the engine call alone."""

    @abstractmethod
    def results(self) -> list[np.ndarray]:
        """The outputs of the last inference (not timed)."""

    @abstractmethod
    def version(self) -> str: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""

    def profile_layers(self, runs: int) -> list[dict[str, Any]] | None:
        """Per-layer times over `runs` inferences of the bound inputs, where the engine offers
        them: `[{"name", "type", "mean_s", "share"}]`, slowest first. None otherwise."""
        return None


def aggregate_layers(times: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    """Per-layer mean time and share of the total, slowest first."""
    means = {key: sum(values) / len(values) for key, values in times.items() if values}
    total = sum(means.values()) or 1.0
    return [{"name": name, "type": kind, "mean_s": mean, "share": mean / total}
            for (name, kind), mean in sorted(means.items(), key=lambda item: -item[1])]
