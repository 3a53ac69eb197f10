"""Engine registry. An engine is one module exposing `SPEC` (an EngineSpec) and `Adapter`.

Built-in engines are listed below; other packages add theirs through the `vlab.engines`
entry-point group (the entry point names the module; a built-in name cannot be taken over):

    [project.entry-points."vlab.engines"]
    myengine = "my_package.vlab_engine"

Everything that lists engines derives from this registry: the `host-cpu` target's engines
(`vlab_backend.targets`), the formats its support step accepts (`VLAB_ENGINE_FORMATS`, set
per engine offer), what a warm worker imports before it forks, and the resource catalogue.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

from vlab_backend.engines.base import EngineAdapter, EngineSpec

ENTRY_POINT_GROUP = "vlab.engines"

# Engine name -> module; entry points cannot take these names over. A harness that needs one
# built-in engine imports only its module and never scans the installed distributions for
# entry points (tens of milliseconds per run).
BUILTIN_ENGINE_MODULES = {
    "onnxruntime": "vlab_backend.engines.onnxruntime_engine",
    "openvino": "vlab_backend.engines.openvino_engine",
    "tflite": "vlab_backend.engines.tflite_engine",
    "synthetic": "vlab_backend.engines.synthetic_engine",
    "tflite-micro": "vlab_backend.engines.tflite_micro_engine",
}


@dataclass
class _Registry:
    modules: dict[str, ModuleType] = field(default_factory=dict)
    # The version of the distribution that provides each engine's module.
    provider_versions: dict[str, str] = field(default_factory=dict)
    # Entry points that could not be loaded -> why (a broken package must not take the
    # lab down; asking for its engine says what went wrong).
    broken: dict[str, str] = field(default_factory=dict)


def _warn(message: str, *args: object) -> None:
    # logging is imported here only: the harness imports this module on every run.
    import logging

    logging.getLogger("vlab.engines").warning(message, *args)


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _load_entry(entry: Any) -> ModuleType:
    module = importlib.import_module(entry.value)
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, EngineSpec) or not hasattr(module, "Adapter"):
        raise TypeError(f"module {entry.value} has no SPEC (an EngineSpec) and Adapter")
    return module


def _provider_version(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    return str(dist.version) if dist is not None else ""


@cache
def _registry() -> _Registry:
    from vlab_backend import __version__

    registry = _Registry()
    for name, module_name in BUILTIN_ENGINE_MODULES.items():
        registry.modules[name] = importlib.import_module(module_name)
        registry.provider_versions[name] = __version__
    for entry in _entry_points():
        try:
            module = _load_entry(entry)
        except Exception as exc:  # any error of a third-party import
            registry.broken[entry.name] = f"{type(exc).__name__}: {exc}"
            _warn("engine entry point %s = %s not loaded: %s", entry.name, entry.value,
                  registry.broken[entry.name])
            continue
        name = module.SPEC.name
        if name in registry.modules:
            _warn("engine module %s ignored: %r is already an engine", entry.value, name)
            continue
        registry.modules[name] = module
        registry.provider_versions[name] = _provider_version(entry)
    return registry


def _module(name: str) -> ModuleType:
    builtin = BUILTIN_ENGINE_MODULES.get(name)
    if builtin is not None:
        return importlib.import_module(builtin)
    registry = _registry()
    try:
        return registry.modules[name]
    except KeyError:
        known = ", ".join(sorted(registry.modules))
        why = f" (its entry point failed to load: {registry.broken[name]})" \
            if name in registry.broken else ""
        raise KeyError(f"unknown engine {name!r}{why}; known engines: {known}") from None


def engine_specs() -> dict[str, EngineSpec]:
    """Every registered engine: the built-in ones first, then those of entry points."""
    return {name: module.SPEC for name, module in _registry().modules.items()}


def engine_modules() -> dict[str, str]:
    """Engine name -> the module that implements it."""
    return {name: module.__name__ for name, module in _registry().modules.items()}


def engine_version(name: str) -> str:
    """The engine's version as a target offers it: that of its spec's `distribution` where it
    names an installed one, else that of the distribution providing the engine module."""
    from importlib.metadata import PackageNotFoundError, version

    spec = get_spec(name)
    if spec.distribution:
        try:
            return version(spec.distribution)
        except PackageNotFoundError:
            return ""
    return _registry().provider_versions.get(name, "")


def get_spec(name: str) -> EngineSpec:
    spec: EngineSpec = _module(name).SPEC
    return spec


def create_adapter(name: str) -> EngineAdapter:
    adapter: EngineAdapter = _module(name).Adapter()
    return adapter


def clear_cache() -> None:
    """Forget the registry, so that the next lookup scans the entry points again (tests)."""
    _registry.cache_clear()
