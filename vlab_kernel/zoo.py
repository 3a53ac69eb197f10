"""Networks that installed packages ship: the `onnx` package's light model zoo and any
`.tflite` file in the environment's site-packages, offered next to uploaded models."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["ShippedModel", "onnx_light_models", "shipped_models", "tflite_models"]

# The walk of site-packages is bounded: so many directories at most, this deep at most.
MAX_DIRECTORIES = 20_000
MAX_DEPTH = 6
SKIPPED = {"__pycache__", ".git", "node_modules", "include", "tests", "test"}


@dataclass(frozen=True)
class ShippedModel:
    """A model file an installed package ships."""

    name: str  # the file's stem: "light_squeezenet"
    path: Path
    format: str  # "onnx" or "tflite"
    size: int  # bytes
    source: str  # where it comes from: "onnx zoo", or the package that ships it

    @property
    def label(self) -> str:
        """How a model list shows it: "light_squeezenet (onnx zoo)"."""
        return f"{self.name} ({self.source})"


def _site_packages() -> list[Path]:
    """The environment's site-packages directories (under `sys.prefix`)."""
    paths = {sysconfig.get_path(kind, vars={"base": sys.prefix, "platbase": sys.prefix})
             for kind in ("purelib", "platlib")}
    return sorted({Path(p) for p in paths if p and Path(p).is_dir()})


def onnx_light_models() -> list[ShippedModel]:
    """`onnx/backend/test/data/light/light_*.onnx` (their weights are generated in-graph);
    empty without the onnx package. The `*_output_0.pb` files beside them are not models."""
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        return []
    models = []
    for location in spec.submodule_search_locations:
        light = Path(location) / "backend" / "test" / "data" / "light"
        for path in sorted(light.glob("light_*.onnx")) if light.is_dir() else []:
            if path.is_file():
                models.append(ShippedModel(path.stem, path, "onnx", path.stat().st_size,
                                           "onnx zoo"))
    return models


def _walk(root: Path, suffix: str, max_directories: int, max_depth: int) -> list[Path]:
    """Files ending in `suffix` under `root`, breadth first, within the bounds."""
    found: list[Path] = []
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    visited = 0
    while queue and visited < max_directories:
        directory, depth = queue.popleft()
        visited += 1
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < max_depth and entry.name not in SKIPPED and \
                            not entry.name.endswith((".dist-info", ".egg-info")):
                        queue.append((Path(entry.path), depth + 1))
                elif entry.name.endswith(suffix) and entry.is_file():
                    found.append(Path(entry.path))
            except OSError:
                continue
    return sorted(found)


def tflite_models(roots: list[Path] | None = None, max_directories: int = MAX_DIRECTORIES,
                  max_depth: int = MAX_DEPTH) -> list[ShippedModel]:
    """Every `.tflite` file under site-packages (or `roots`), in a bounded walk."""
    models = []
    for root in roots if roots is not None else _site_packages():
        for path in _walk(root, ".tflite", max_directories, max_depth):
            package = path.relative_to(root).parts[0] if path.parent != root else root.name
            models.append(ShippedModel(path.stem, path, "tflite", path.stat().st_size, package))
    return models


@lru_cache(maxsize=1)
def _cached() -> tuple[ShippedModel, ...]:
    return tuple(onnx_light_models() + tflite_models())


def shipped_models(refresh: bool = False) -> list[ShippedModel]:
    """The networks installed packages ship, onnx zoo first, each once; cached (the walk
    takes a fraction of a second; `refresh=True` walks again)."""
    if refresh:
        _cached.cache_clear()
    seen: set[Path] = set()
    models = []
    for model in _cached():
        if model.path not in seen:
            seen.add(model.path)
            models.append(model)
    return models
