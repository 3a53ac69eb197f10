"""Engine registry. An engine is one module exposing `SPEC` (an EngineSpec) and `Adapter`.

Built-in engines are listed below; other packages add theirs through the `vlab.engines`
entry-point group (the entry point names the module; a built-in name cannot be taken over).
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

from vlab_backend.engines.base import EngineAdapter, EngineSpec

# Engine name -> module; entry points cannot take these names over. A harness that needs one
# built-in engine imports only its module and never scans the installed distributions for
# entry points (tens of milliseconds per run).
BUILTIN_ENGINE_MODULES = {
    "onnxruntime": "vlab_backend.engines.onnxruntime_engine",
    "openvino": "vlab_backend.engines.openvino_engine",
    "tflite": "vlab_backend.engines.tflite_engine",
    "synthetic": "vlab_backend.engines.synthetic_engine",
}


@cache
def _modules() -> dict[str, ModuleType]:
    from importlib.metadata import entry_points

    modules = {name: importlib.import_module(module)
               for name, module in BUILTIN_ENGINE_MODULES.items()}
    for entry in entry_points(group="vlab.engines"):
        module = importlib.import_module(entry.value)
        if module.SPEC.name in modules:
            import logging

            logging.getLogger("vlab.engines").warning(
                "engine module %s ignored: %r is already an engine", entry.value,
                module.SPEC.name)
            continue
        modules[module.SPEC.name] = module
    return modules


def _module(name: str) -> ModuleType:
    builtin = BUILTIN_ENGINE_MODULES.get(name)
    if builtin is not None:
        return importlib.import_module(builtin)
    try:
        return _modules()[name]
    except KeyError:
        known = ", ".join(sorted(_modules()))
        raise KeyError(f"unknown engine {name!r}; known engines: {known}") from None


def engine_specs() -> dict[str, EngineSpec]:
    return {name: module.SPEC for name, module in _modules().items()}


def get_spec(name: str) -> EngineSpec:
    spec: EngineSpec = _module(name).SPEC
    return spec


def create_adapter(name: str) -> EngineAdapter:
    adapter: EngineAdapter = _module(name).Adapter()
    return adapter
