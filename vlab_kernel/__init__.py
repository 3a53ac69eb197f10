"""Kernel-side client of the VLab workbench.

    from vlab_kernel import connect
    lab = connect()                       # finds the backend: extension, env or local credential
    lab.targets()                         # DataFrame of target instances
    bench = lab.benchmark("model.onnx", "host-cpu", "onnxruntime", runs=100)
    bench.wait()                          # live progress bar
    bench.latencies.describe()
"""

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
from vlab_kernel.lab import Benchmark, Lab, connect


def load_ipython_extension(ipython: object) -> None:
    """`%load_ext vlab_kernel` registers the `%vlab` magic."""
    from vlab_kernel.magics import VlabMagics

    ipython.register_magics(VlabMagics)  # type: ignore[attr-defined]


__all__ = [
    "AuthenticationError", "BadRequest", "Benchmark", "BenchmarkFailed", "Conflict",
    "ConnectionFailed", "Lab", "NotFound", "NotReady", "PermissionDenied", "RateLimited",
    "ServerError", "TooLarge", "VlabClient", "VlabError", "connect",
]
