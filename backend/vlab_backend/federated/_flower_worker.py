"""Runs inside Flower's own environment (flwr + numpy only): one FedAvg aggregation.

Usage: python _flower_worker.py IN.npz OUT.npz. IN holds `meta` (JSON as uint8: round, strategy
parameters, per-client sample counts and metrics, evaluations) and `fit<i>_<k>` arrays; OUT
holds `meta` (fit and evaluation metrics, aggregated loss) and `agg_<k>`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg


class LabClient(ClientProxy):
    """A lab device: the server ran its training as a TYPE3 job; never called over a network."""

    def get_properties(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        raise NotImplementedError

    def get_parameters(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        raise NotImplementedError

    def fit(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        raise NotImplementedError

    def evaluate(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        raise NotImplementedError

    def reconnect(self, ins: Any, timeout: Any, group_id: Any) -> Any:
        raise NotImplementedError


def weighted(metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Sample-weighted mean of every numeric metric the clients reported."""
    total = sum(n for n, _ in metrics)
    keys = {k for _, m in metrics for k, v in m.items() if isinstance(v, int | float)}
    out: dict[str, Any] = {}
    for key in sorted(keys):
        pairs = [(n, m[key]) for n, m in metrics if isinstance(m.get(key), int | float)]
        weight = sum(n for n, _ in pairs)
        if weight:
            out[key] = float(sum(n * v for n, v in pairs) / weight)
    out["num_examples"] = total
    return out


def main(source: str, target: str) -> None:
    with np.load(source) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        fits = []
        for index, fit in enumerate(meta["fits"]):
            arrays = [data[f"fit{index}_{k}"] for k in range(fit["count"])]
            fits.append((fit, arrays))
    params = meta["params"]
    strategy = FedAvg(min_fit_clients=params["min_fit_clients"],
                      min_evaluate_clients=params["min_evaluate_clients"],
                      min_available_clients=params["min_available_clients"],
                      fit_metrics_aggregation_fn=weighted,
                      evaluate_metrics_aggregation_fn=weighted)
    ok = Status(code=Code.OK, message="ok")
    rnd = int(meta["round"])
    results = [(LabClient(fit["client_id"]),
                FitRes(status=ok, parameters=ndarrays_to_parameters(arrays),
                       num_examples=int(fit["num_examples"]), metrics=fit["metrics"]))
               for fit, arrays in fits]
    failures: list[BaseException] = [RuntimeError("client dropped")] * int(meta["failures"])
    out: dict[str, Any] = {"has_arrays": False, "count": 0, "fit_metrics": {},
                           "eval_loss": None, "eval_metrics": {}}
    arrays_out: dict[str, np.ndarray] = {}
    if results:
        parameters, fit_metrics = strategy.aggregate_fit(rnd, results, failures)
        if parameters is not None:
            merged = parameters_to_ndarrays(parameters)
            out.update(has_arrays=True, count=len(merged), fit_metrics=fit_metrics)
            arrays_out = {f"agg_{k}": a for k, a in enumerate(merged)}
    evaluations = [(LabClient(e["client_id"]),
                    EvaluateRes(status=ok, loss=float(e["loss"]),
                                num_examples=int(e["num_examples"]), metrics=e["metrics"]))
                   for e in meta["evaluations"]]
    if evaluations:
        loss, metrics = strategy.aggregate_evaluate(rnd, evaluations, [])
        out.update(eval_loss=loss, eval_metrics=metrics)
    out["flwr"] = __import__("flwr").__version__
    arrays_out["meta"] = np.frombuffer(json.dumps(out).encode(), dtype=np.uint8)
    np.savez(target, **arrays_out)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
