"""Cached tool environments: heavy runtimes and converters that never enter the server's own
Python environment (TensorFlow Lite Micro for the MCU targets, onnx2tf and tf2onnx for the
conversions to and from TFLite, Flower for federated learning's strategy).

Each lives in a virtual environment of its own,
`${VLAB_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/vlab}/envs/<name>-<version>`, created once per
machine under a file lock (`<name>-<version>.lock` beside it) and marked ready
(`.vlab-ready`) only when every install step succeeded; a half-made one is made again. The
onnx2tf environment is about 2.6 GB (TensorFlow) and takes about a minute to install; the
TensorFlow Lite Micro one about 100 MB and a few seconds; Flower's about 300 MB and half a
minute.

`python -m vlab_backend.toolenv NAME` creates one of the known environments (if needed)
and prints its interpreter's path: what the MCU target's build step runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_MARK = ".vlab-ready"
# pip may take minutes on a slow mirror (TensorFlow is a 600 MB wheel).
INSTALL_TIMEOUT_S = 1800


class ToolEnvError(RuntimeError):
    """A tool environment could not be created; the message says which and why."""


@dataclass(frozen=True)
class ToolEnv:
    """A cached environment: its name, version and pip install steps (each one `pip install`
    command line after `pip install`, run in order)."""

    name: str
    version: str
    installs: tuple[tuple[str, ...], ...]

    @property
    def directory(self) -> Path:
        return cache_dir() / "envs" / f"{self.name}-{self.version}"

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def ready(self) -> bool:
        return (self.directory / READY_MARK).is_file()


TFLM_VERSION = "0.dev20261023182759"
ONNX2TF_VERSION = "1.29.24"
TF2ONNX_VERSION = "1.17.0"

TFLITE_MICRO = ToolEnv("tflite-micro", TFLM_VERSION,
                       (("--pre", f"tflite-micro=={TFLM_VERSION}"),))
# onnx2tf pins tensorflow 2.19, numpy 1.26, onnx 1.19.1 and protobuf 4: an environment of
# its own; tf2onnx (TFLite -> ONNX) installs beside it without conflicts.
ONNX2TF = ToolEnv("onnx2tf", ONNX2TF_VERSION,
                  ((f"onnx2tf=={ONNX2TF_VERSION}",), (f"tf2onnx=={TF2ONNX_VERSION}",)))
# Flower pins fastapi, starlette, protobuf and rich below the server's versions.
FLWR_VERSION = "1.42.0"
FLOWER = ToolEnv("flwr", FLWR_VERSION, ((f"flwr=={FLWR_VERSION}", "numpy"),))
KNOWN = {env.name: env for env in (TFLITE_MICRO, ONNX2TF, FLOWER)}


def cache_dir() -> Path:
    """`VLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/vlab`, else `~/.cache/vlab`."""
    explicit = os.environ.get("VLAB_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "vlab"


def ensure(env: ToolEnv) -> Path:
    """The environment's interpreter, creating the environment first if needed. Several
    processes may ask at once: one creates it under an exclusive lock, the others wait."""
    if env.ready():
        return env.python
    directory = env.directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if env.ready():
            return env.python
        shutil.rmtree(directory, ignore_errors=True)
        started = time.monotonic()
        base = shutil.which("python3.11") or sys.executable
        steps = [[base, "-m", "venv", str(directory)]]
        steps += [[str(env.python), "-m", "pip", "install", "--quiet",
                   "--disable-pip-version-check", *install] for install in env.installs]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, check=False,
                                      timeout=INSTALL_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(directory, ignore_errors=True)
                raise ToolEnvError(f"could not create the {env.name} environment in "
                                   f"{directory}: {exc}") from exc
            if done.returncode != 0:
                shutil.rmtree(directory, ignore_errors=True)
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise ToolEnvError(f"could not create the {env.name} environment in "
                                   f"{directory}: " + " ".join(tail))
        (directory / READY_MARK).write_text(json.dumps({
            "name": env.name, "version": env.version,
            "installs": [list(i) for i in env.installs],
            "created_s": round(time.monotonic() - started, 1)}))
    return env.python


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in KNOWN:
        print(f"usage: python -m vlab_backend.toolenv {{{','.join(KNOWN)}}}",
              file=sys.stderr)
        return 2
    try:
        print(ensure(KNOWN[argv[0]]))
    except ToolEnvError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
