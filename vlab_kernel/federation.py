"""Federated learning (TYPE4) from a notebook: `lab.federate(...)` builds the FL config the
server accepts from NumPy arrays and returns a `Federation` handle.

    fl = lab.federate("digits.onnx", clients=[(train_0, test_0), (train_1, test_1)],
                      rounds=3, server_dataset=(x_test, y_test),
                      events={1: [failure(round=2)]})
    fl.wait()                    # a progress bar per round (server-sent events, no polling)
    fl.rounds                    # one row per round: participants, dropped, accuracy, loss
    fl.clients                   # one row per round and client
    fl.model("out/")             # the final global model

The arrays are uploaded as raw datasets once (by content), named as the dAIEdge client names
them, so the server deletes them again when it refuses the experiment.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vlab_kernel.client import TERMINAL
from vlab_kernel.errors import BenchmarkFailed, NotReady, VlabError

if TYPE_CHECKING:
    from vlab_kernel.lab import Lab, ModelLike

# What a round record holds about the round as a whole, in the order `Federation.rounds` shows.
ROUND_COLUMNS = ["round", "participants", "aggregated_clients", "dropped", "dropped_reasons",
                 "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "server_loss",
                 "server_accuracy", "global_loss", "global_accuracy", "time_s", "elapsed_s",
                 "wall_time_s", "note"]
# One row per round and client in `Federation.clients`.
CLIENT_COLUMNS = ["round", "client", "status", "reason", "num_examples", "epochs",
                  "train_loss", "train_accuracy", "test_loss_on_device",
                  "test_accuracy_on_device", "eval_loss", "eval_accuracy", "train_run_s",
                  "response_time_s", "events", "battery_pct", "battery_after_pct",
                  "train_benchmark", "eval_benchmark"]
EXPERIMENT_COLUMNS = ["id", "status", "model", "clients", "rounds", "rounds_done",
                      "current_round", "global_accuracy", "global_loss", "message",
                      "created_at", "started_at", "finished_at"]


# -- events and objectives ---------------------------------------------------------------------
def failure(round: int, description: str = "") -> dict[str, Any]:
    """The client is absent in `round`."""
    return {"round": round, "type": "failure", "description": description}


def network_issue(round: int, fail_fast: bool = False,
                  timeout_s: float | None = None) -> dict[str, Any]:
    """`fail_fast`: unreachable from the start of `round`; otherwise it trains but its update
    is lost, the server having waited `timeout_s` (experiment time)."""
    event: dict[str, Any] = {"round": round, "type": "network_issue", "fail_fast": fail_fast}
    if timeout_s is not None:
        event["roud_timeout_s"] = timeout_s  # the dAIEdge schema's spelling
    return event


def delayed_response(round: int, seconds: float) -> dict[str, Any]:
    """The client's answer comes `seconds` later (experiment time, not slept)."""
    return {"round": round, "type": "delayed_response", "delay_seconds": seconds}


def slow_response(round: int, factor: float) -> dict[str, Any]:
    """The client's training takes `factor` times as long."""
    return {"round": round, "type": "slow_response", "slow_factor": factor}


def reduced_dataset(round: int, size: int, shuffle: bool = True,
                    seed: int | None = None) -> dict[str, Any]:
    """The client trains on `size` of its samples in `round`."""
    return {"round": round, "type": "reduced_dataset", "new_size": size, "suffule": shuffle,
            "seed": seed}


def epoch_completion(round: int, epochs: int) -> dict[str, Any]:
    """The client completes only `epochs` epochs in `round`."""
    return {"round": round, "type": "epoch_completion", "epoch_number": epochs}


def battery(rounds: Iterable[int], initial_pct: float = 100.0,
            discharge_pct_per_round: float | None = None,
            discharge_pct_per_second: float | None = None, min_pct: float = 0.0,
            max_pct: float = 100.0, charging: bool = False) -> list[dict[str, Any]]:
    """A battery profile over `rounds` (the level starts at `initial_pct` in the first): below
    `min_pct` the client is unavailable. One event per round."""
    events = []
    for index, number in enumerate(sorted(rounds)):
        status: dict[str, Any] = {
            "status_type": "power_status", "power_source": "Battery",
            "mode": "charging" if charging else "discharging",
            "bounds": {"min_level_pct": min_pct, "max_level_pct": max_pct}}
        if index == 0:
            status["initial_level_pct"] = initial_pct
        if discharge_pct_per_round is not None:
            status["discharge_pct_per_round"] = discharge_pct_per_round
        if discharge_pct_per_second is not None:
            status["discharge_pct_per_second"] = discharge_pct_per_second
        events.append({"round": number, "type": "updated_status", "status_update": status})
    return events


def temperature(round: int, celsius: float, max_c: float | None = None) -> dict[str, Any]:
    """The client's temperature in `round`; above `max_c` (85 °C by default) it is
    unavailable."""
    status: dict[str, Any] = {"status_type": "temperature_status", "temperature_c": celsius}
    if max_c is not None:
        status["max_temperature_c"] = max_c
    return {"round": round, "type": "updated_status", "status_update": status}


def target_accuracy(value: float) -> dict[str, Any]:
    """Stop once the global accuracy reaches `value` (0–1)."""
    return {"type": "time_to_acc", "target_accuracy": value}


def target_loss(value: float) -> dict[str, Any]:
    """Stop once the global loss is down to `value`."""
    return {"type": "time_to_loss", "target_loss": value}


def accuracy_at_time(seconds: float) -> dict[str, Any]:
    """Stop once the experiment clock reaches `seconds`: the accuracy then."""
    return {"type": "acc_at_time", "time_seconds": seconds}


def loss_at_time(seconds: float) -> dict[str, Any]:
    """Stop once the experiment clock reaches `seconds`: the loss then."""
    return {"type": "loss_at_time", "time_seconds": seconds}


# Events as {round: [event, ...]}, or events carrying their round (lists of them too).
Event = dict[str, Any]
EventsLike = Mapping[Any, Sequence[Event]] | Iterable[Event | list[Event]]


def events_by_round(events: EventsLike | None) -> dict[str, list[dict[str, Any]]]:
    """Events keyed by round (as the schema wants them, round numbers as strings): from a
    mapping round -> events, or from events that carry their `round` (what `failure(...)` and
    the other helpers give; `battery(...)` gives a list, taken as its events)."""
    keyed: dict[str, list[dict[str, Any]]] = {}
    if events is None:
        return keyed
    if isinstance(events, Mapping):
        for number, listed in events.items():
            for event in listed:
                keyed.setdefault(str(int(number)), []).append(
                    {k: v for k, v in event.items() if k != "round"})
        return keyed
    flat: list[dict[str, Any]] = []
    for item in events:
        flat.extend(item if isinstance(item, list) else [item])
    for event in flat:
        if "round" not in event:
            raise ValueError(f"event {event!r} has no round: give it `round=`, or pass "
                             "events as {round: [event, ...]}")
        keyed.setdefault(str(int(event["round"])), []).append(
            {k: v for k, v in event.items() if k != "round"})
    return keyed


# -- clients -----------------------------------------------------------------------------------
@dataclass
class FLClient:
    """One client of an experiment: its data (`train`, `test`: `(x, y)` NumPy arrays, one
    sample per row; `y` class indices, one-hot rows or values), where it trains (`target`,
    `engine`), how (`epochs`, `batch_size`, `learning_rate`, ...; None: the experiment's), when
    it joins and its scripted events (`failure(round=2)`, ..., or {round: [event, ...]})."""

    train: tuple[Any, Any]
    test: tuple[Any, Any]
    target: str | None = None
    engine: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    loss: str | None = None
    shuffle: bool | None = None
    seed: int | None = None
    join_at_round: int = 0
    events: Any = field(default_factory=list)
    client_id: str | None = None


ClientLike = FLClient | Mapping[str, Any] | tuple[Any, Any]


def as_client(client: ClientLike) -> FLClient:
    """An `FLClient` from one, a dict of its fields, or a `(train, test)` pair."""
    if isinstance(client, FLClient):
        return client
    if isinstance(client, Mapping):
        return FLClient(**dict(client))
    if isinstance(client, tuple) and len(client) == 2:
        return FLClient(train=client[0], test=client[1])
    raise TypeError("a client is an FLClient, a dict of its fields or a (train, test) pair "
                    f"of (x, y) arrays, not {type(client).__name__}")


def _model_output_shape(model: ModelLike) -> list[int] | None:
    """The model's first output shape without the batch dimension, where onnx can read it."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        if hasattr(model, "graph"):
            proto = model
        elif isinstance(model, bytes | bytearray):
            proto = onnx.load_from_string(bytes(model))
        elif isinstance(model, str | Path) and Path(model).is_file():
            proto = onnx.load(str(model), load_external_data=False)
        else:
            return None
        dims = proto.graph.output[0].type.tensor_type.shape.dim[1:]
        return [int(d.dim_value) if d.dim_value > 0 else 1 for d in dims]
    except Exception:  # not ONNX: the server says what is wrong
        return None


def build_config(lab: Lab, model: ModelLike, clients: Sequence[ClientLike], *, rounds: int,
                 directory: Path, target: str = "host-cpu", engine: str = "onnxruntime",
                 epochs: int = 1, batch_size: int = 32, learning_rate: float | None = None,
                 min_fit_clients: int | None = None, min_available_clients: int | None = None,
                 min_eval_clients: int | None = None, round_timeout_s: float | None = None,
                 server_dataset: tuple[Any, Any] | None = None,
                 objectives: Sequence[dict[str, Any]] | None = None,
                 events: Mapping[Any, EventsLike] | None = None,
                 input_name: str | None = None,
                 output_name: str | None = None) -> dict[str, Any]:
    """The FL config (dAIEdge §7.6) of an experiment; its datasets are written to `directory`
    and uploaded (once each: by content)."""
    from vlab_kernel.lab import _tensor_names, _tensor_section

    if not clients:
        raise ValueError("an experiment needs at least one client")
    found_input, found_output = _tensor_names(model)
    input_name, output_name = input_name or found_input or "input", \
        output_name or found_output or "output"
    built = [as_client(c) for c in clients]
    extra_events = dict(events or {})
    listed: list[dict[str, Any]] = []
    input_shape: list[int] | None = None
    output_spec: dict[str, Any] | None = None

    def upload(array: Any, name: str, what: str) -> tuple[str, dict[str, Any]]:
        data, spec = _tensor_section(array, what)
        path = directory / name
        data.tofile(path)
        return lab.client.ensure_dataset(path), spec

    for index, client in enumerate(built):
        client_id = client.client_id or f"client_{index}"
        odt: dict[str, Any] = {"input": {"name": input_name}, "output": {"name": output_name}}
        for split, (x, y) in (("train", client.train), ("test", client.test)):
            for section, kind, array in (("input", "input", x), ("output", "target", y)):
                ref, spec = upload(array, f"client_{index}_{split}_{kind}_dvlab.bin",
                                   f"{client_id} {split} {section}")
                if split == "train":
                    odt[section].update(spec)
                elif spec != {k: odt[section][k] for k in ("shape", "dtype")}:
                    raise ValueError(f"{client_id}: the test {section} ({spec}) differs from "
                                     f"the train {section} in shape or dtype")
                odt[section][f"{split}_file"] = ref
        input_shape = input_shape or list(odt["input"]["shape"])
        output_spec = output_spec or dict(odt["output"])
        learning: dict[str, Any] = {"epochs": client.epochs or epochs,
                                    "batch_size": client.batch_size or batch_size}
        for key, value in (("optimizer", client.optimizer), ("loss", client.loss),
                           ("shuffle", client.shuffle), ("seed", client.seed)):
            if value is not None:
                learning[key] = value
        odt["learning_parameters"] = dict(learning)
        rate = client.learning_rate if client.learning_rate is not None else learning_rate
        training = {"epochs": learning["epochs"], "batch_size": learning["batch_size"]}
        if rate is not None:
            training["learning_rate"] = rate
        keyed = events_by_round(client.events)
        for ident in (index, client_id, str(index)):
            more_events: Any = extra_events.get(ident)
            for number, more in events_by_round(more_events).items():
                keyed.setdefault(number, []).extend(more)
        listed.append({"client_id": client_id, "target": client.target or target,
                       "runtime": client.engine or engine, "odt_config": odt,
                       "join_at_round": client.join_at_round,
                       "training_parameters": training, "events": keyed})
    # By default a round needs one available client, one update and one evaluation.
    config: dict[str, Any] = {"rounds": rounds, "aggregator": "FedAvg", "server_dataset": {}}
    for key, value in (("min_fit_clients", min_fit_clients),
                       ("min_available_clients", min_available_clients),
                       ("min_eval_clients", min_eval_clients)):
        config[key] = 1 if value is None else value
    if round_timeout_s is not None:
        config["round_timeout_s"] = round_timeout_s
    if objectives:
        config["objectives"] = [{"id": f"O{i + 2}", **o} for i, o in enumerate(objectives)]
        config["objectives"].insert(0, {"id": "O1", "type": "max_rounds", "max_rounds": rounds})
    if server_dataset is not None:
        x, y = server_dataset
        ref_x, spec_x = upload(x, "server_eval_input_dvlab.bin", "server_dataset input")
        ref_y, spec_y = upload(y, "server_eval_target_dvlab.bin", "server_dataset output")
        config["server_dataset"] = {"input": {**spec_x, "file": ref_x},
                                    "output": {**spec_y, "file": ref_y}}
    assert input_shape is not None and output_spec is not None
    return {"experiment_path": "vlab_kernel",
            "model": {"path": "model.onnx", "runtime": listed[0]["runtime"],
                      "input_shape": input_shape,
                      "output_shape": _model_output_shape(model) or list(output_spec["shape"]),
                      "model_filename": "model.onnx"},
            "config": config, "clients": listed, "counters": {"total_clients": len(listed)}}


def federate(lab: Lab, model: ModelLike, clients: Sequence[ClientLike], *, rounds: int = 3,
             wait: bool = False, **options: Any) -> Federation:
    """Start an experiment (see `Lab.federate`); returns its handle."""
    from vlab_kernel.lab import _name_of, model_file

    if isinstance(model, str) and model.startswith("model-"):
        raise TypeError("federated learning takes a model file, bytes or an onnx.ModelProto, "
                        "not a stored model reference")
    directory = Path(tempfile.mkdtemp(prefix="vlab-fl-"))
    try:
        config = build_config(lab, model, clients, rounds=rounds, directory=directory,
                              **options)
        with model_file(model) as path:
            if isinstance(path, str):
                raise TypeError("federated learning takes a model file, bytes or an "
                                "onnx.ModelProto, not a stored model reference")
            config["model"]["model_filename"] = config["model"]["path"] = _name_of(model) \
                if not isinstance(model, bytes | bytearray) else path.name
            experiment_id = lab.client.submit_fl(path, config)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    federation = Federation(lab, experiment_id)
    return federation.wait() if wait else federation


# -- the handle --------------------------------------------------------------------------------
class RoundProgress:
    """A bar over the experiment's rounds, fed by its events: the round and phase (train,
    aggregate, evaluate) in the description, one step per finished round, the last global
    accuracy as the postfix. Drawn only once the experiment is seen unfinished."""

    def __init__(self, experiment_id: str, rounds: int, bar: Any = None,
                 leave: bool = True) -> None:
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm
        self._id, self._rounds, self._tqdm, self._leave = experiment_id, rounds, bar, leave
        self._bar: Any = None

    def update(self, event: dict[str, Any]) -> None:
        status = str(event.get("status") or "")
        if self._bar is None:
            if status in TERMINAL:
                return
            self._bar = self._tqdm(total=max(self._rounds, 1), desc=f"FL {self._id} {status}",
                                   unit="round", leave=self._leave, dynamic_ncols=True)
        bar = self._bar
        record = event.get("round_record")
        if isinstance(record, dict):
            done = int(record.get("round") or 0)
            if done > bar.n:
                bar.update(done - bar.n)
            accuracy = record.get("global_accuracy")
            if accuracy is not None:
                bar.set_postfix_str(f"global accuracy {float(accuracy):.3g}", refresh=False)
        phase = event.get("phase")
        number = event.get("round")
        if status in TERMINAL:
            text = status
            if status == "success":
                bar.total = max(bar.n, 1)
        elif phase and phase not in ("round", "end"):
            text = f"round {number} {phase}"
        else:
            text = status
        bar.set_description_str(f"FL {self._id} {text}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _reasons(dropped: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d.get('client_id')}: {d.get('reason')}" for d in dropped)


def rounds_table(results: dict[str, Any]) -> pd.DataFrame:
    """One row per round of an experiment's results: participants, the clients aggregated,
    the dropped ones and why, the aggregated training metrics, the clients' evaluation, the
    server dataset's, the global loss and accuracy, experiment time and wall time."""
    rows = []
    for record in results.get("rounds_results") or []:
        dropped = list(record.get("dropped") or [])
        fit = record.get("fit_metrics") or {}
        rows.append({
            "round": record.get("round"), "participants": list(record.get("participants") or []),
            "aggregated_clients": list(record.get("aggregated_clients") or []),
            "dropped": [d.get("client_id") for d in dropped], "dropped_reasons": _reasons(dropped),
            "train_loss": fit.get("train_loss"), "train_accuracy": fit.get("train_accuracy"),
            **{key: record.get(key) for key in ROUND_COLUMNS[7:]}})
    frame = pd.DataFrame(rows, columns=ROUND_COLUMNS)
    for column in ROUND_COLUMNS[5:16]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["note"] = frame["note"].fillna("")
    return frame


def event_text(events: list[dict[str, Any]]) -> str:
    """A client's applied events in words: "failure: absent this round; ..."."""
    return "; ".join(f"{e.get('type')}: {e.get('effect')}" for e in events or [])


def clients_table(results: dict[str, Any]) -> pd.DataFrame:
    """One row per round and client: its status (trained, dropped, absent, ...), why it was
    dropped, samples and epochs, training and evaluation losses and accuracies, run and
    response time, the events applied and its battery."""
    rows = []
    for record in results.get("rounds_results") or []:
        reasons = {d.get("client_id"): d.get("reason") for d in record.get("dropped") or []}
        for client, info in (record.get("clients") or {}).items():
            rows.append({
                "round": record.get("round"), "client": client, "status": info.get("status"),
                "reason": reasons.get(client) or info.get("eval_error") or "",
                **{key: info.get(key) for key in CLIENT_COLUMNS[4:14]},
                "events": event_text(info.get("events") or []),
                "battery_pct": (info.get("device_status") or {}).get("battery_pct"),
                **{key: info.get(key) for key in CLIENT_COLUMNS[16:]}})
    frame = pd.DataFrame(rows, columns=CLIENT_COLUMNS)
    for column in [*CLIENT_COLUMNS[4:14], "battery_pct", "battery_after_pct"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def experiments_table(history: list[dict[str, Any]]) -> pd.DataFrame:
    """The history of experiments, newest first."""
    frame = pd.DataFrame(history)
    for column in EXPERIMENT_COLUMNS:
        if column not in frame:
            frame[column] = None
    for column in ("created_at", "started_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], format="ISO8601", errors="coerce")
    return frame[EXPERIMENT_COLUMNS + [c for c in frame.columns if c not in EXPERIMENT_COLUMNS]]


class Federation:
    """A federated-learning experiment. Its properties ask the server; the results of an
    ended experiment are cached."""

    def __init__(self, lab: Lab, experiment_id: str) -> None:
        self.lab = lab
        self.id = experiment_id
        self._results: dict[str, Any] | None = None
        self._definition: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Federation {self.id} {self.status}>"

    def info(self) -> dict[str, Any]:
        """Status, rounds done, the last global accuracy and loss, ..."""
        if self._results is not None:
            return self._results
        return self.lab.client.fl_status(self.id)

    @property
    def status(self) -> str:
        """`pending`, `running`, `success`, `failed` or `canceled`, asked of the server."""
        return str(self.info()["status"])

    @property
    def done(self) -> bool:
        """True once the experiment has ended, whatever the outcome."""
        return self.status in TERMINAL

    def definition(self) -> dict[str, Any]:
        """The experiment's config as the server stored it."""
        if self._definition is None:
            self._definition = self.lab.client.fl_definition(self.id)
        return self._definition

    def wait(self, progress: bool = True, raise_on_failure: bool = True,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> Federation:
        """Follow the experiment's events until it ends (no polling): a progress bar per
        round when `progress`. A failed or canceled experiment raises `BenchmarkFailed`
        unless `raise_on_failure=False`."""
        bar = RoundProgress(self.id, int(self.definition().get("config", {}).get("rounds") or 1)) \
            if progress else None
        try:
            for event in self.lab.client.fl_events(self.id):
                if bar is not None:
                    bar.update(event)
                if on_event is not None:
                    on_event(event)
                if event.get("status") in TERMINAL:
                    break
        finally:
            if bar is not None:
                bar.close()
        final = self.results()
        if raise_on_failure and final.get("status") != "success":
            error = BenchmarkFailed(f"experiment {self.id} {final.get('status')}: "
                                    f"{final.get('message') or 'no reason given'}")
            error.benchmark = final  # type: ignore[attr-defined]
            raise error
        return self

    def results(self) -> dict[str, Any]:
        """The results as the server gives them: per round (`rounds_results`) the
        participants, the dropped clients and why, each client's figures, the aggregated and
        global metrics and time; `initial` and `stop`. Live while it runs."""
        if self._results is not None:
            return self._results
        results = self.lab.client.fl_results(self.id)
        if results.get("status") in TERMINAL:
            self._results = results
        return results

    @property
    def rounds(self) -> pd.DataFrame:
        """One row per round done (see `rounds_table`)."""
        return rounds_table(self.results())

    @property
    def clients(self) -> pd.DataFrame:
        """One row per round and client (see `clients_table`)."""
        return clients_table(self.results())

    def model(self, path: str | Path | None = None) -> Path:
        """Download the final global model: to `path` (a file, or a directory that gets the
        server's name, `<model>_fl_<id>.onnx`), by default the working directory."""
        if not self.done:
            raise NotReady(f"experiment {self.id} is {self.status}; call .wait() first", 428)
        name, data = self.lab.client.fl_model(self.id)
        target = Path(path) if path is not None else Path.cwd()
        if target.is_dir():
            target = target / name
        target.write_bytes(data)
        return target

    def cancel(self) -> str:
        """Cancel the experiment and its running client jobs; its status after the request."""
        self._results = None
        return self.lab.client.fl_cancel(self.id)

    def summary(self) -> dict[str, Any]:
        """One flat row: id, status, rounds done, best and last global accuracy, the stop."""
        results = self.results()
        table = rounds_table(results)
        stop = results.get("stop") or {}
        return {"id": self.id, "status": results.get("status"),
                "rounds_done": len(table),
                "best_global_accuracy": table["global_accuracy"].max() if len(table) else None,
                "global_accuracy": results.get("global_accuracy"),
                "global_loss": results.get("global_loss"),
                "stop": stop.get("type"), "stop_message": stop.get("message"),
                "message": results.get("message")}

    def _repr_html_(self) -> str:
        try:
            return pd.DataFrame([self.summary()]).to_html(index=False)
        except VlabError as error:
            return f"<pre>{error.message}</pre>"


STOPPED_BY_OBJECTIVE = ("time_to_acc", "time_to_loss", "acc_at_time", "loss_at_time")


def objective_met(results: dict[str, Any]) -> bool | None:
    """Whether an objective of the user's (not the round limit) ended the experiment: None
    while it runs, False when it ran out of rounds or ended otherwise."""
    if results.get("status") not in TERMINAL:
        return None
    stop = results.get("stop")
    return isinstance(stop, dict) and stop.get("type") in STOPPED_BY_OBJECTIVE
