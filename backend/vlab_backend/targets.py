"""Target configuration: the dAIEdge target configuration file, or this machine's CPU cores.

File format (dAIEdge, with two local extensions per instance: `cpuset` and `repository`,
which may also be given per engine):

    {"host-cpu": [{"target_uid": "host-cpu-0", "cpuset": [0],
                   "memory": {"ram": 1073741824, "storage": 1073741824},
                   "engines": {"onnxruntime": {"version": "1.18", "supported_types": ["TYPE1"],
                                               "repository": "targets/host-cpu"}}}]}

An engine of the registry also gets its model formats in its offer's `env`
(`VLAB_ENGINE_FORMATS`, unless the file sets it), which targets/host-cpu's support step reads.

A third local extension describes microcontroller-class boards: `"mcu_profile": "cortex-m4"`
(a profile of `vlab_backend.mcu.profiles`) fills the instance's `memory` (`storage` = flash,
`ram` = SRAM, unless the file gives them) and adds the board's `VLAB_MCU_*` variables to its
engines' `env` (`targets/mcu/targets.json` declares one instance per profile).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlab_backend.engines import engine_specs, engine_version
from vlab_backend.engines.base import EngineSpec, parse_user_json
from vlab_kernel.shipped import shipped_folder

log = logging.getLogger("vlab.targets")

BENCHMARK_TYPES = ("TYPE1", "TYPE2", "TYPE3", "TYPE4")
DEFAULT_TYPE = "host-cpu"
MAX_CPU = 8191  # Linux numbers at most 8192 CPUs (NR_CPUS)
MAX_MEMORY_BYTES = 2**60  # an exbibyte: more than any board declares


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
    """The built-in target repositories: $VLAB_TARGETS_DIR, else the checkout's `targets/`,
    else the copy a wheel installs (`<prefix>/share/vlab/targets`)."""
    explicit = os.environ.get("VLAB_TARGETS_DIR")
    if explicit:
        return Path(explicit)
    return shipped_folder("targets")


# The model formats (file extensions, lower case, space-separated) of the job's engine: the
# support step of a target repository built for this lab (targets/host-cpu) reads them
# instead of keeping its own table, so that every registered engine runs there.
ENGINE_FORMATS_VAR = "VLAB_ENGINE_FORMATS"


def engine_formats_env(spec: EngineSpec) -> dict[str, str]:
    return {ENGINE_FORMATS_VAR: " ".join(fmt.lower() for fmt in spec.formats)}


def host_cpu_engines(repository: str) -> dict[str, EngineOffer]:
    """The registered engines this machine's CPU runs: those whose spec says they run in the
    harness on a CPU host and whose runtime is installed here (the others are logged, not
    offered: a job would only fail on them)."""
    offers = {}
    for name, spec in engine_specs().items():
        if not spec.host_cpu:
            continue
        missing = spec.missing_runtime()
        if missing is not None:
            log.warning("engine %s is not offered on %s: %s", name, DEFAULT_TYPE, missing)
            continue
        offers[name] = EngineOffer(name=name, version=engine_version(name),
                                   supported_types=list(spec.host_cpu_types),
                                   repository=repository, env=engine_formats_env(spec))
    return offers


def local_cpu_targets() -> list[InstanceConfig]:
    """`host-cpu`: one instance per core this process may use, each pinned to its core, each
    offering `host_cpu_engines`."""
    engines = host_cpu_engines(str(builtin_targets_dir() / DEFAULT_TYPE))
    return [InstanceConfig(uid=f"{DEFAULT_TYPE}-{core}", target_type=DEFAULT_TYPE,
                           engines={name: replace(offer, env=dict(offer.env),
                                                    supported_types=list(offer.supported_types))
                                    for name, offer in engines.items()},
                           cpuset=[core])
            for core in sorted(os.sched_getaffinity(0))]


def simulated_mcu_targets() -> list[InstanceConfig]:
    """The simulated microcontroller boards of the built-in `targets/mcu` repository (one
    instance per board profile: `mcu-cortex-m4-0`, `mcu-cortex-m7-0`), as its
    `targets.json` declares them."""
    return load_target_config(builtin_targets_dir() / "mcu" / "targets.json")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise TargetConfigError(message)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


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
            _require(isinstance(cpuset, list) and all(_is_int(c, 0, MAX_CPU) for c in cpuset),
                     f"{at} ({uid}): 'cpuset' must be a list of core numbers from 0 to "
                     f"{MAX_CPU}")
            engines = {}
            for name, offer in engines_raw.items():
                engines[name] = _parse_engine(f"{at} ({uid}), engine {name!r}", name, offer,
                                              entry, base_dir, known_engines)
            memory = entry.get("memory", {})
            _require(isinstance(memory, dict), f"{at} ({uid}): 'memory' must be an object")
            if "mcu_profile" in entry:
                memory = _apply_mcu_profile(f"{at} ({uid})", entry["mcu_profile"], memory,
                                            engines)
            for key, size in memory.items():
                _require(_is_int(size, 0, MAX_MEMORY_BYTES),
                         f"{at} ({uid}): memory {key!r} must be a number of bytes from 0 to "
                         f"{MAX_MEMORY_BYTES}")
            instances.append(InstanceConfig(uid=uid, target_type=target_type, engines=engines,
                                            cpuset=cpuset, memory=memory,
                                            host=str(entry.get("host", "localhost"))))
    return instances


def _apply_mcu_profile(at: str, name: Any, memory: dict[str, Any],
                       engines: dict[str, EngineOffer]) -> dict[str, Any]:
    """The instance's memory with the board profile's budgets under the file's own, and the
    profile's variables in each engine's env (under the file's own)."""
    from vlab_backend.mcu.profiles import PROFILES

    profile = PROFILES.get(name) if isinstance(name, str) else None
    _require(profile is not None,
             f"{at}: 'mcu_profile' must be one of {', '.join(PROFILES)}")
    assert profile is not None
    memory = profile.memory() | memory
    budgets = profile.env() | {"VLAB_MCU_FLASH_BYTES": str(memory["storage"]),
                               "VLAB_MCU_SRAM_BYTES": str(memory["ram"])}
    for offer in engines.values():
        offer.env = budgets | offer.env
    return memory


def _parse_engine(at: str, name: str, offer: Any, entry: dict[str, Any], base_dir: Path | None,
                  known_engines: dict[str, EngineSpec]) -> EngineOffer:
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
    env = {str(k): str(v) for k, v in env.items()}
    if name in known_engines:  # a registered engine: its formats, unless the file says
        env = engine_formats_env(known_engines[name]) | env
    return EngineOffer(name=name, version=str(offer.get("version", "")), supported_types=types,
                       repository=repository, image=image, env=env,
                       devices=list(offer.get("devices", [])),
                       volumes=list(offer.get("volumes", [])))


def load_target_config(path: Path) -> list[InstanceConfig]:
    try:
        data = parse_user_json(path.read_bytes())
    except OSError as exc:
        raise TargetConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise TargetConfigError(f"{path}: not valid JSON ({exc})") from exc
    return parse_target_config(data, base_dir=path.parent)
