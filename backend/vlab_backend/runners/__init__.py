"""Runner registry. A runner executes a job directory somewhere: `local` (a pinned subprocess
on this host) and `nomad` (a batch job on the instance's host) are built in; other packages add
theirs through the `vlab.runners` entry-point group. An entry point names a class (or any
callable) taking `(settings, db)` and returning an object that satisfies
`vlab_backend.runners.base.Runner`; a built-in name cannot be taken over.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlab_backend.config import Settings
    from vlab_backend.runners.base import Runner
    from vlab_backend.store.database import Database

ENTRY_POINT_GROUP = "vlab.runners"
# Name -> "module:attribute"; imported only when that runner is chosen.
BUILTIN_RUNNERS = {
    "local": "vlab_backend.runners.local:LocalRunner.from_settings",
    "nomad": "vlab_backend.runners.nomad:NomadRunner",
}

RunnerFactory = Callable[["Settings", "Database"], "Runner"]


class UnknownRunner(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown runner"


@cache
def _targets() -> dict[str, str]:
    """Every runner name and the object it refers to, built-ins first."""
    from importlib.metadata import entry_points

    targets = dict(BUILTIN_RUNNERS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in targets:
            logging.getLogger("vlab.runners").warning(
                "runner %s ignored: %r is already a runner", entry.value, entry.name)
            continue
        targets[entry.name] = entry.value
    return targets


def runner_names() -> list[str]:
    """Every runner that `vlab serve --runner` accepts."""
    return list(_targets())


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return obj


def create_runner(name: str, settings: Settings, db: Database) -> Runner:
    """The runner called `name`, built for these settings and this store."""
    try:
        reference = _targets()[name]
    except KeyError:
        raise UnknownRunner(f"unknown runner {name!r}; known runners: "
                            f"{', '.join(runner_names())}") from None
    factory: RunnerFactory = _load(reference)
    return factory(settings, db)
