"""The trainer: runs in the training environment (onnxruntime-training-cpu 1.19.2, onnx 1.17,
numpy), never in the lab's, so it imports nothing of `vlab_backend` and only those packages
and the standard library. `prepare` copies it next to the prepared model; the target runs it
by path with that environment's Python (`python -I ort_train.py ...`).

    ort_train.py artifacts PREPARED ARTIFACTS   # build step: the training graphs
    ort_train.py train PREPARED ARTIFACTS WORK  # manager step: the epochs, then the export

PREPARED holds `model.onnx` and `plan.json` (written by `vlab_backend.training.prepare`).
`train` writes WORK/trained.onnx (the inference graph with the trained weights, as trained:
a cut Softmax is put back by `vlab_backend.training.report`) and WORK/history.json; it prints
one line per epoch (the job's user.log) and writes `train <epoch> <epochs>` to the job's
progress file ($VLAB_PROGRESS_FILE). A failure is one line on stderr, `error: ...`, exit 2.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import resource
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT_FILES = ("checkpoint", "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx")


class TrainingError(Exception):
    """A failure in words, printed as one line."""


def _training_modules() -> tuple[Any, Any]:
    """`onnxruntime.training.artifacts` and `.api` without torch: the package's `__init__`
    imports its torch-based parts (`optim`, `amp`), which these two do not use; a bare package
    module stands in for it unless torch is installed."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # warnings would fill the job's error.log
    name = "onnxruntime.training"
    if name not in sys.modules and importlib.util.find_spec("torch") is None:
        directory = os.path.join(os.path.dirname(onnxruntime.__file__), "training")
        package = types.ModuleType(name)
        package.__path__ = [directory]
        package.__spec__ = importlib.util.spec_from_file_location(
            name, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])
        sys.modules[name] = package
        onnxruntime.training = package
    return (importlib.import_module(f"{name}.artifacts"), importlib.import_module(f"{name}.api"))


def engine_version() -> str:
    from importlib.metadata import version

    return f"onnxruntime-training {version('onnxruntime-training-cpu')}"


def _node_named(model_path: Path, op_type: str, name: str) -> str:
    """`name`, or the first node of that type (ORT names unnamed nodes with an empty string)."""
    if name:
        return name
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for index, node in enumerate(model.graph.node):
        if node.op_type == op_type:
            return node.name or f"#{index}"
    return "?"


def explain(exc: Exception, model_path: Path) -> str:
    """ORT's error in words that name the operator the engine cannot differentiate."""
    text = str(exc)
    found = re.search(r"gradient builder has not been registered: (\w+) for node (\S*)", text)
    if found:
        op = found.group(1)
        return (f"cannot train this model: {engine_version()} has no gradient for operator "
                f"{op} (node {_node_named(model_path, op, found.group(2))}); replace it with "
                "a trainable equivalent or train elsewhere")
    found = re.search(r"Could not find an implementation for (\w+?)Grad\(\d+\) node with "
                      r"name '([^']*)'", text)
    if found:
        op = found.group(1)
        return (f"cannot train this model: {engine_version()} has no CPU kernel for the "
                f"gradient of operator {op} (node {_node_named(model_path, op, '')})")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else 'no message'}"[:500]


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 (where native code writes) sent to `path` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def build_artifacts(prepared: Path, out: Path) -> None:
    """The training, evaluation and optimizer graphs and the checkpoint, in `out`."""
    import onnx

    artifacts, _api = _training_modules()
    plan = json.loads((prepared / "plan.json").read_text())
    model_path = prepared / "model.onnx"
    model = onnx.load(str(model_path))
    loss = (artifacts.LossType.CrossEntropyLoss if plan["loss"] == "cross_entropy"
            else artifacts.LossType.MSELoss)
    optimizer = (artifacts.OptimType.AdamW if plan["optimizer"] == "adamw"
                 else artifacts.OptimType.SGD)
    out.mkdir(parents=True, exist_ok=True)
    try:
        # The graph builder logs every transformer it applies on fd 2 (the job's error.log)
        # whatever the logger's severity: kept aside in generate.log.
        with _stderr_to(out / "generate.log"):
            artifacts.generate_artifacts(
                model, requires_grad=plan["trainable"], frozen_params=plan["frozen"],
                loss=loss, optimizer=optimizer, artifact_directory=str(out),
                additional_output_names=[plan["trained_output"]])
    except Exception as exc:  # onnxruntime raises RuntimeError, onnx ValidationError, ...
        raise TrainingError(explain(exc, model_path)) from exc
    missing = [name for name in ARTIFACT_FILES if not (out / name).is_file()]
    if missing:
        raise TrainingError(f"the training engine wrote no {', '.join(missing)}")


def _read(path: Path, section: dict[str, Any], what: str) -> np.ndarray:
    shape = [int(d) for d in section["shape"]]
    dtype = np.dtype(section["dtype"])
    sample = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    size = path.stat().st_size if path.is_file() else -1
    if size < 0:
        raise TrainingError(f"{what} file {path.name} is missing")
    if sample == 0 or size == 0 or size % sample:
        raise TrainingError(f"{what} file {path.name} has {size} bytes, not a multiple of one "
                            f"sample ({sample} bytes: {shape} {dtype})")
    return np.fromfile(path, dtype=dtype).reshape(-1, *shape)


def _targets(raw: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
    """The loss's target tensor: int64 class indices for cross-entropy, float for MSE."""
    kind, classes = plan["targets"], plan["classes"]
    if kind == "indices":
        labels = raw.reshape(len(raw)).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise TrainingError(f"class indices must be from 0 to {classes - 1}; the targets "
                                f"hold {int(labels.min())} to {int(labels.max())}")
    elif plan["loss"] == "cross_entropy":  # one-hot (or scores): the class is the largest
        labels = raw.reshape(len(raw), -1).argmax(axis=1).astype(np.int64)
    else:
        return raw.astype(np.dtype(plan["output_dtype"]), copy=False)
    if plan["loss"] == "cross_entropy":
        return labels
    one_hot = np.eye(classes, dtype=np.dtype(plan["output_dtype"]))[labels]
    return one_hot.reshape(len(raw), *plan["output_shape"])


def _classes_of(raw: np.ndarray, plan: dict[str, Any]) -> np.ndarray | None:
    """The true class of each sample where the targets say one (indices, one-hot), else
    None (regression targets: no accuracy)."""
    if plan["targets"] == "indices":
        return raw.reshape(len(raw)).astype(np.int64)
    if plan["targets"] == "one_hot":
        return raw.reshape(len(raw), -1).argmax(axis=1)
    return None


# The progress line carries the curves of the last this many epochs (the report has them all;
# the server's jobdir.MAX_CURVE_EPOCHS).
PROGRESS_EPOCHS = 200


def _write_progress(done: int, total: int, history: dict[str, list[Any]] | None = None) -> None:
    """`train <epochs done> <epochs>` and, once an epoch has ended, the curves so far as JSON:
    the job directory's progress line, which the live views plot from."""
    path = os.environ.get("VLAB_PROGRESS_FILE")
    if not path:
        return
    line = f"train {done} {total}"
    if history and done:
        first = max(done - PROGRESS_EPOCHS, 0)
        curves: dict[str, list[Any]] = {"epoch": list(range(first + 1, done + 1))}
        curves |= {key: [_finite(v) for v in values[first:done]]
                   for key, values in history.items()}
        line += " " + json.dumps(curves, separators=(",", ":"), allow_nan=False)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(line + "\n")
    os.replace(tmp, path)


def _finite(value: Any) -> float | None:
    """A number JSON can carry: NaN and infinities (a diverged loss) become null."""
    return float(value) if value is not None and np.isfinite(value) else None


def _statistics(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    return {"min": min(known) if known else None, "max": max(known) if known else None,
            "values": values}


def train(prepared: Path, artifact_dir: Path, work: Path, root: Path) -> dict[str, Any]:
    """The epochs: a training pass over the training files (its mean loss and running
    accuracy), then an evaluation of the test files; the trained inference graph exported."""
    import onnxruntime

    _artifacts, api = _training_modules()
    plan = json.loads((prepared / "plan.json").read_text())
    x_train = _read(root / plan["input"]["train_file"], plan["input"], "input.train_file")
    x_test = _read(root / plan["input"]["test_file"], plan["input"], "input.test_file")
    raw_train = _read(root / plan["output"]["train_file"], plan["output"], "output.train_file")
    raw_test = _read(root / plan["output"]["test_file"], plan["output"], "output.test_file")
    for x, y, split in ((x_train, raw_train, "train"), (x_test, raw_test, "test")):
        if len(x) != len(y):
            raise TrainingError(f"the {split} files disagree: input.{split}_file holds {len(x)} "
                                f"samples, output.{split}_file {len(y)}")
    y_train, y_test = _targets(raw_train, plan), _targets(raw_test, plan)
    classes_train, classes_test = _classes_of(raw_train, plan), _classes_of(raw_test, plan)

    seed = int(plan["seed"])
    if hasattr(onnxruntime, "set_seed"):
        onnxruntime.set_seed(seed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    try:
        state = api.CheckpointState.load_checkpoint(str(artifact_dir / "checkpoint"))
        module = api.Module(str(artifact_dir / "training_model.onnx"), state,
                            str(artifact_dir / "eval_model.onnx"), device="cpu",
                            session_options=options)
        optimizer = api.Optimizer(str(artifact_dir / "optimizer_model.onnx"), module)
    except Exception as exc:  # onnxruntime raises RuntimeError and its own types
        raise TrainingError(explain(exc, prepared / "model.onnx")) from exc
    optimizer.set_learning_rate(float(plan["learning_rate"]))
    rng = np.random.default_rng(seed)
    batch = int(plan["batch_size"])

    def run(x: np.ndarray, y: np.ndarray, classes: np.ndarray | None,
            training: bool) -> tuple[float, float | None]:
        """Mean loss over the samples and accuracy (None without classes)."""
        (module.train if training else module.eval)()
        order = rng.permutation(len(x)) if training and plan["shuffle"] else np.arange(len(x))
        total, correct = 0.0, 0
        for start in range(0, len(x), batch):
            index = order[start:start + batch]
            outputs = module(x[index], y[index])
            loss, predicted = (outputs[0], outputs[1]) if isinstance(outputs, list | tuple) \
                else (outputs, None)
            if training:
                optimizer.step()
                module.lazy_reset_grad()
            total += float(loss) * len(index)
            if classes is not None and predicted is not None:
                scores = np.asarray(predicted).reshape(len(index), -1)
                correct += int((scores.argmax(axis=1) == classes[index]).sum())
        if not len(x):
            return float("nan"), None
        return total / len(x), (correct / len(x) if classes is not None else None)

    epochs = int(plan["epochs"])
    history: dict[str, list[Any]] = {"loss_train": [], "loss_test": [], "accuracy_train": [],
                                     "accuracy_test": [], "epoch_time_s": []}
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    _write_progress(0, epochs)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        try:
            loss_train, accuracy_train = run(x_train, y_train, classes_train, True)
            loss_test, accuracy_test = run(x_test, y_test, classes_test, False)
        except Exception as exc:  # a kernel's error at run time
            raise TrainingError(explain(exc, prepared / "model.onnx")) from exc
        elapsed = time.perf_counter() - started
        for key, value in (("loss_train", loss_train), ("loss_test", loss_test),
                           ("accuracy_train", accuracy_train), ("accuracy_test", accuracy_test),
                           ("epoch_time_s", elapsed)):
            history[key].append(value)
        shown = (f", accuracy train {accuracy_train:.4f} test {accuracy_test:.4f}"
                 if accuracy_test is not None and accuracy_train is not None else "")
        print(f"epoch {epoch}/{epochs}: loss train {loss_train:.4f} test {loss_test:.4f}"
              f"{shown} ({elapsed:.3f} s)", flush=True)
        _write_progress(epoch, epochs, history)
    training_time = time.perf_counter() - wall_start
    cpu_time = time.process_time() - cpu_start

    work.mkdir(parents=True, exist_ok=True)
    try:
        module.export_model_for_inferencing(str(work / "trained.onnx"), [plan["trained_output"]])
    except Exception as exc:  # onnxruntime's own error types
        raise TrainingError(f"could not export the trained model: {explain(exc, prepared)}") \
            from exc
    result = {
        **{key: _statistics(values) for key, values in history.items()
           if key != "epoch_time_s"},
        "epoch_time_s": history["epoch_time_s"],
        "training_time": training_time,
        "cpu_time_s": cpu_time,
        "load_cpu": round(100.0 * cpu_time / training_time, 3) if training_time > 0 else None,
        "peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "train_samples": len(x_train),
        "test_samples": len(x_test),
        "threads": options.intra_op_num_threads,
        "engine_version": engine_version(),
    }
    (work / "history.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 3 and args[0] == "artifacts":
            build_artifacts(Path(args[1]), Path(args[2]))
        elif len(args) == 4 and args[0] == "train":
            train(Path(args[1]), Path(args[2]), Path(args[3]), Path.cwd())
        else:
            print("usage: ort_train.py artifacts PREPARED OUT | train PREPARED ARTIFACTS WORK",
                  file=sys.stderr)
            return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
