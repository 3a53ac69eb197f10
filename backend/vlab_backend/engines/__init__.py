"""Engine registry. An engine is one module exposing `SPEC` (an EngineSpec) and `Adapter`.

Built-in engines are listed below; other packages add theirs through the `vlab.engines`
entry-point group (the entry point names the module).
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from types import ModuleType

from vlab_backend.engines.base import EngineAdapter, EngineSpec

BUILTIN_ENGINE_MODULES = (
    "vlab_backend.engines.onnxruntime_engine",
    "vlab_backend.engines.openvino_engine",
    "vlab_backend.engines.tflite_engine",
    "vlab_backend.engines.synthetic_engine",
)


@cache
def _modules() -> dict[str, ModuleType]:
    names = list(BUILTIN_ENGINE_MODULES)
    names += [ep.value for ep in entry_points(group="vlab.engines")]
    modules: dict[str, ModuleType] = {}
    for name in names:
        module = importlib.import_module(name)
        modules[module.SPEC.name] = module
    return modules


def engine_specs() -> dict[str, EngineSpec]:
    return {name: module.SPEC for name, module in _modules().items()}


def get_spec(name: str) -> EngineSpec:
    try:
        return engine_specs()[name]
    except KeyError:
        known = ", ".join(sorted(engine_specs()))
        raise KeyError(f"unknown engine {name!r}; known engines: {known}") from None


def create_adapter(name: str) -> EngineAdapter:
    get_spec(name)
    adapter: EngineAdapter = _modules()[name].Adapter()
    return adapter
