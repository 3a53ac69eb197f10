"""Kernel-side client of the VLab workbench.

    from vlab_kernel import connect
    lab = connect()                       # finds the backend: extension, env or local credential
    lab.targets()                         # DataFrame of target instances
    bench = lab.benchmark("model.onnx", "host-cpu", "onnxruntime", runs=100)
    bench.wait()                          # live progress bar
    bench.latencies.describe()

The names below are imported on first use: the server imports this package's small shared
modules (`vlab_kernel.defaults`, `vlab_kernel.stats`) into every benchmark process, which must
not pay for pandas and httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlab_kernel.client import VlabClient
    from vlab_kernel.errors import (
        AuthenticationError,
        BadRequest,
        BenchmarkFailed,
        Conflict,
        ConnectionFailed,
        NotFound,
        NotReady,
        PermissionDenied,
        RateLimited,
        ServerError,
        TooLarge,
        VlabError,
    )
    from vlab_kernel.federation import Federation, FLClient
    from vlab_kernel.lab import Benchmark, Lab, Training, connect, training_curves

_ERRORS = ("AuthenticationError", "BadRequest", "BenchmarkFailed", "Conflict",
           "ConnectionFailed", "NotFound", "NotReady", "PermissionDenied", "RateLimited",
           "ServerError", "TooLarge", "VlabError")
# Public name -> the module that defines it.
_HOMES = {"VlabClient": "vlab_kernel.client", "Benchmark": "vlab_kernel.lab",
          "Lab": "vlab_kernel.lab", "connect": "vlab_kernel.lab",
          "Training": "vlab_kernel.lab", "training_curves": "vlab_kernel.lab",
          "Federation": "vlab_kernel.federation", "FLClient": "vlab_kernel.federation",
          **dict.fromkeys(_ERRORS, "vlab_kernel.errors")}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vlab_kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


def load_ipython_extension(ipython: object) -> None:
    """`%load_ext vlab_kernel` registers the `%vlab` magic."""
    from vlab_kernel.magics import VlabMagics

    ipython.register_magics(VlabMagics)  # type: ignore[attr-defined]


__all__ = [
    "AuthenticationError", "BadRequest", "Benchmark", "BenchmarkFailed", "Conflict",
    "ConnectionFailed", "FLClient", "Federation", "Lab", "NotFound", "NotReady",
    "PermissionDenied", "RateLimited",
    "ServerError", "TooLarge", "Training", "VlabClient", "VlabError", "connect",
    "training_curves",
]
