"""Target configuration: the dAIEdge target configuration file, or this machine's CPU cores.

File format (dAIEdge, with two local extensions per instance: `cpuset` and `repository`,
which may also be given per engine):

    {"host-cpu": [{"target_uid": "host-cpu-0", "cpuset": [0],
                   "memory": {"ram": 1073741824, "storage": 1073741824},
                   "engines": {"onnxruntime": {"version": "1.18", "supported_types": ["TYPE1"],
                                               "repository": "targets/host-cpu"}}}]}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlab_backend.engines import engine_specs

BENCHMARK_TYPES = ("TYPE1", "TYPE2", "TYPE3", "TYPE4")
DEFAULT_TYPE = "host-cpu"


class TargetConfigError(ValueError):
    """The target configuration file is invalid; the message names the offending entry."""


@dataclass
class EngineOffer:
    name: str
    version: str = ""
    supported_types: list[str] = field(default_factory=lambda: ["TYPE1", "TYPE2"])
    repository: str = ""
    image: str = ""
    env: dict[str, str] = field(default_factory=dict)
    devices: list[Any] = field(default_factory=list)
    volumes: list[Any] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class InstanceConfig:
    uid: str
    target_type: str
    engines: dict[str, EngineOffer]
    cpuset: list[int] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    host: str = "localhost"


def builtin_targets_dir() -> Path:
    explicit = os.environ.get("VLAB_TARGETS_DIR")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[2] / "targets"


def _engine_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"tflite": "ai-edge-litert"}.get(name, name)
    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def local_cpu_targets() -> list[InstanceConfig]:
    """`host-cpu`: one instance per core this process may use, each pinned to its core."""
    repository = str(builtin_targets_dir() / DEFAULT_TYPE)
    instances = []
    for core in sorted(os.sched_getaffinity(0)):
        engines = {name: EngineOffer(name=name, version=_engine_version(name),
                                     repository=repository)
                   for name in ("onnxruntime", "openvino", "tflite")}
        instances.append(InstanceConfig(uid=f"{DEFAULT_TYPE}-{core}", target_type=DEFAULT_TYPE,
                                        engines=engines, cpuset=[core]))
    return instances


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TargetConfigError(message)


def parse_target_config(data: Any, base_dir: Path | None = None) -> list[InstanceConfig]:
    """Validate a target configuration (already parsed JSON) and return its instances."""
    _require(isinstance(data, dict) and bool(data),
             "the target configuration must be a non-empty JSON object keyed by target type")
    known_engines = engine_specs()
    seen: set[str] = set()
    instances: list[InstanceConfig] = []
    for target_type, entries in data.items():
        where = f"target type {target_type!r}"
        _require(isinstance(entries, list) and bool(entries),
                 f"{where}: expected a non-empty list of targets")
        for position, entry in enumerate(entries):
            at = f"{where}, target #{position + 1}"
            _require(isinstance(entry, dict), f"{at}: expected an object")
            uid = entry.get("target_uid")
            _require(isinstance(uid, str) and bool(uid.strip()), f"{at}: missing 'target_uid'")
            _require(uid not in seen, f"{at}: duplicate target_uid {uid!r}")
            seen.add(uid)
            engines_raw = entry.get("engines")
            _require(isinstance(engines_raw, dict) and bool(engines_raw),
                     f"{at} ({uid}): missing 'engines' (an object keyed by engine name)")
            cpuset = entry.get("cpuset", [])
            _require(isinstance(cpuset, list) and all(isinstance(c, int) and c >= 0
                                                      for c in cpuset),
                     f"{at} ({uid}): 'cpuset' must be a list of core numbers")
            engines = {}
            for name, offer in engines_raw.items():
                engines[name] = _parse_engine(f"{at} ({uid}), engine {name!r}", name, offer,
                                              entry, base_dir, known_engines)
            memory = entry.get("memory", {})
            _require(isinstance(memory, dict), f"{at} ({uid}): 'memory' must be an object")
            instances.append(InstanceConfig(uid=uid, target_type=target_type, engines=engines,
                                            cpuset=cpuset, memory=memory,
                                            host=str(entry.get("host", "localhost"))))
    return instances


def _parse_engine(at: str, name: str, offer: Any, entry: dict[str, Any], base_dir: Path | None,
                  known_engines: dict[str, Any]) -> EngineOffer:
    _require(isinstance(offer, dict), f"{at}: expected an object")
    types = offer.get("supported_types", ["TYPE1"])
    _require(isinstance(types, list) and bool(types) and all(t in BENCHMARK_TYPES for t in types),
             f"{at}: 'supported_types' must list some of {', '.join(BENCHMARK_TYPES)}")
    repository = offer.get("repository") or entry.get("repository") or ""
    image = offer.get("image", "")
    _require(bool(repository) or bool(image),
             f"{at}: needs a 'repository' (local runner) or an 'image' (Nomad runner)")
    if repository and base_dir is not None and not Path(repository).is_absolute() \
            and "://" not in repository:
        repository = str((base_dir / repository).resolve())
    env = offer.get("env", {})
    _require(isinstance(env, dict), f"{at}: 'env' must be an object")
    return EngineOffer(name=name, version=str(offer.get("version", "")), supported_types=types,
                       repository=repository, image=image,
                       env={str(k): str(v) for k, v in env.items()},
                       devices=list(offer.get("devices", [])),
                       volumes=list(offer.get("volumes", [])))


def load_target_config(path: Path) -> list[InstanceConfig]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise TargetConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TargetConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return parse_target_config(data, base_dir=path.parent)
