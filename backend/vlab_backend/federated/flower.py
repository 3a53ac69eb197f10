"""Flower's strategy, run in its own cached environment.

Flower (`flwr`) pins fastapi, starlette, protobuf and rich to versions older than the server's,
so it never enters the server's environment. It lives in a cached environment of its own
(`vlab_backend.toolenv.FLOWER`, created on first use under a file lock), and each aggregation is one
subprocess there (`_flower_worker.py`) that reads the clients' updates from an `.npz` file and
writes the aggregate to another: `flwr.server.strategy.FedAvg.aggregate_fit` weights the
updates by their sample counts, `aggregate_evaluate` the evaluations.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend import toolenv
from vlab_backend.pipeline.job import job_environment
from vlab_backend.toolenv import FLOWER

FLWR_VERSION = FLOWER.version
WORKER = Path(__file__).with_name("_flower_worker.py")
READY_MARK = toolenv.READY_MARK
AGGREGATE_TIMEOUT_S = 300  # one aggregation takes about a second
cache_dir = toolenv.cache_dir


class FlowerError(RuntimeError):
    """Flower's environment could not be made, or its strategy failed."""


def env_dir() -> Path:
    return FLOWER.directory


def ensure_env() -> Path:
    """Flower's interpreter, its environment made first if needed (`toolenv.ensure`)."""
    try:
        return toolenv.ensure(FLOWER)
    except toolenv.ToolEnvError as exc:
        raise FlowerError(str(exc)) from exc


@dataclass
class FitUpdate:
    """One client's trained weights (in the global model's order) and sample count."""

    client_id: str
    arrays: list[np.ndarray]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """One client's evaluation of the global model on its test data."""

    client_id: str
    loss: float
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Aggregate:
    arrays: list[np.ndarray] | None
    fit_metrics: dict[str, Any]
    eval_loss: float | None
    eval_metrics: dict[str, Any]
    seconds: float


@dataclass
class StrategyParams:
    min_fit_clients: int = 1
    min_evaluate_clients: int = 1
    min_available_clients: int = 1


def worker_environment() -> dict[str, str]:
    """The Flower worker's environment: the jobs' minimal one (no token, no database URL:
    `job_environment`) without the server's PYTHONPATH and virtual environment (Flower's own
    pins come first), quiet warnings."""
    env = job_environment()
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PYTHONWARNINGS"] = "ignore"
    env.setdefault("PATH", os.defpath)
    env.setdefault("HOME", str(Path.home()))
    return env


def aggregate(round_number: int, params: StrategyParams, fits: Sequence[FitUpdate],
              evaluations: Sequence[Evaluation], failures: int = 0,
              python: Path | None = None) -> Aggregate:
    """FedAvg's `aggregate_fit` over `fits` and `aggregate_evaluate` over `evaluations`, in
    Flower's environment. Blocking: call it from a thread."""
    python = python or ensure_env()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vlab-flwr-") as tmp:
        request, answer = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays: dict[str, np.ndarray] = {}
        for index, fit in enumerate(fits):
            for position, array in enumerate(fit.arrays):
                arrays[f"fit{index}_{position}"] = array
        meta = {"round": round_number, "failures": failures,
                "params": vars(params),
                "fits": [{"client_id": f.client_id, "num_examples": f.num_examples,
                          "metrics": f.metrics, "count": len(f.arrays)} for f in fits],
                "evaluations": [{"client_id": e.client_id, "loss": e.loss,
                                 "num_examples": e.num_examples, "metrics": e.metrics}
                                for e in evaluations]}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(request, **arrays)  # type: ignore[arg-type]
        done = subprocess.run([str(python), str(WORKER), str(request), str(answer)],
                              capture_output=True, text=True, timeout=AGGREGATE_TIMEOUT_S,
                              check=False, env=worker_environment())
        if done.returncode != 0 or not answer.is_file():
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            raise FlowerError(f"Flower's FedAvg failed (exit {done.returncode}): {tail}")
        with np.load(answer) as out:
            result = json.loads(bytes(out["meta"]).decode())
            count = int(result["count"])
            merged = [out[f"agg_{i}"] for i in range(count)] if result["has_arrays"] else None
    return Aggregate(arrays=merged, fit_metrics=result["fit_metrics"],
                     eval_loss=result["eval_loss"], eval_metrics=result["eval_metrics"],
                     seconds=time.monotonic() - started)
