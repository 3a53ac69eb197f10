"""The federated-learning orchestrator: one asyncio task per experiment, driving its rounds.

A round: each available client trains the current global model as a TYPE3 benchmark on its
own target (through the scheduler, like any benchmark); the trained models' weights are
averaged by Flower's FedAvg, weighted by the clients' sample counts; each client that
answered evaluates the new global model as a TYPE2 benchmark on its test data (accuracy
and loss computed here from `raw_output.bin` against the test targets), and the server
evaluates it on the server dataset with onnxruntime. After each round, the results and the
global model are stored, so a restart resumes at the next round (the round in progress is
run again; its client jobs are canceled). Objectives end the experiment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from vlab_backend.blobstore import BlobStore
from vlab_backend.events import ALL
from vlab_backend.federated import flower, objectives
from vlab_backend.federated.config import (
    ClientSpec,
    ExperimentSpec,
    parse_experiment,
    with_model_names,
)
from vlab_backend.federated.events import ClientState, RoundPlan, after_round, plan_round
from vlab_backend.federated.weights import (
    global_weights,
    load_samples,
    read_weights,
    run_model,
    score,
    with_weights,
)
from vlab_backend.intake import ModelInfo
from vlab_backend.odt import sample_bytes
from vlab_backend.scheduler import Scheduler, benchmark_event
from vlab_backend.store.database import Database
from vlab_backend.store.schema import (
    TERMINAL_STATUSES,
    UNFINISHED_STATUSES,
    Benchmark,
    Dataset,
    FLExperimentRow,
    Status,
    StoredModel,
    User,
)
from vlab_backend.submission import (
    RunRequest,
    SubmissionError,
    check_request,
    create_benchmark,
    delete_stored,
    store_model,
)

log = logging.getLogger("vlab.federated")
RUNNING_STATUSES = (Status.PENDING, Status.QUEUED, Status.RUNNING)
# How often a wait re-reads its benchmarks when no event says they changed.
POLL_S = 1.0
# How long a cancel waits for the experiment's task to wind down before it answers.
CANCEL_WAIT_S = 10.0


def job_name(experiment_id: str) -> str:
    """The name prefix of every benchmark an experiment submits (its history shows them)."""
    return f"FL {experiment_id} "


def job_tag(experiment_id: str) -> str:
    """The tag every benchmark an experiment submits carries (names are user-editable)."""
    return f"fl-{experiment_id}"


class ClaimLost(Exception):
    """This replica no longer holds the experiment's claim: stop driving it, write nothing."""


def experiment_event(row: FLExperimentRow, **extra: Any) -> dict[str, Any]:
    """What the hub carries about an experiment (live views)."""
    return {"event": "fl", "status": row.status, "round": row.current_round,
            "message": row.message, **extra}


@dataclass
class Job:
    benchmark_id: str
    client: ClientSpec
    plan: RoundPlan
    num_examples: int


class Orchestrator:
    """Runs experiments; `start` resumes the ones a previous server left unfinished."""

    def __init__(self, db: Database, scheduler: Scheduler, max_nb_inference: int) -> None:
        self.db = db
        self.scheduler = scheduler
        self.hub = scheduler.hub
        self.settings = scheduler.settings
        self.models: BlobStore = scheduler.models
        self.datasets: BlobStore = scheduler.datasets
        self.max_nb_inference = max_nb_inference
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._canceled: set[str] = set()
        self._lost: set[str] = set()  # taken over by another replica: stop, touch nothing
        self._stopping = False
        self._maintainer: asyncio.Task[None] | None = None
        # Several API replicas on one database: each experiment is driven by the replica that
        # claims it, which renews its lease; another takes it over once the lease runs out.
        self.replica_id: str = getattr(scheduler, "replica_id", "") or "local"
        self.lease_s = float(getattr(self.settings, "replica_lease_s", 30.0))
        self.shared = bool(getattr(self.settings, "shared_store", False))

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume the experiments a previous server process left unfinished (with SQLite all
        of them; on a shared store those no live replica drives), then keep leases fresh."""
        await self._take_over(at_start=True)
        self._maintainer = asyncio.create_task(self._maintain(), name="fl-leases")

    async def stop(self) -> None:
        """Stop driving experiments; they resume at the next start (or on another replica
        once their lease runs out)."""
        self._stopping = True
        if self._maintainer is not None:
            self._maintainer.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def lease(self) -> datetime:
        """Until when a claim made or renewed now holds."""
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    async def _take_over(self, at_start: bool = False) -> None:
        for experiment_id in await asyncio.to_thread(self._claim_orphans, at_start):
            log.info("resuming federated-learning experiment %s", experiment_id)
            await self._cancel_jobs(experiment_id)  # the round in progress runs again
            self.launch(experiment_id)

    def _claim_orphans(self, at_start: bool) -> list[str]:
        unfinished: ColumnElement[bool] = FLExperimentRow.status.in_(UNFINISHED_STATUSES)
        if self.shared:
            expired = or_(FLExperimentRow.lease_until.is_(None),
                          FLExperimentRow.lease_until < datetime.now(UTC))
            if at_start:
                expired = or_(expired, FLExperimentRow.claimed_by == self.replica_id)
            unfinished = and_(unfinished, expired)
        taken = []
        with self.db.session() as session:
            for experiment_id in list(session.scalars(select(FLExperimentRow.id)
                                                      .where(unfinished))):
                if experiment_id in self._tasks:
                    continue
                claimed = session.execute(
                    update(FLExperimentRow).where(FLExperimentRow.id == experiment_id,
                                                  unfinished)
                    .values(claimed_by=self.replica_id, lease_until=self.lease())
                    .execution_options(synchronize_session=False))
                if getattr(claimed, "rowcount", 0) == 1:
                    taken.append(experiment_id)
        return taken

    async def _maintain(self) -> None:
        """Renew this replica's leases; on a shared store, take over abandoned experiments."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                lost = await asyncio.to_thread(self._renew, sorted(self._tasks))
                for experiment_id in lost:
                    log.warning("experiment %s was taken over by another replica",
                                experiment_id)
                    self._lost.add(experiment_id)
                    task = self._tasks.get(experiment_id)
                    if task is not None:
                        task.cancel()
                if self.shared:
                    await self._take_over()
            except Exception:  # keep the leases going whatever one pass hit
                log.exception("federated-learning lease maintenance failed")

    def _renew(self, ids: list[str]) -> list[str]:
        """Renew the leases of the experiments this replica drives; returns those it lost."""
        lost = []
        with self.db.session() as session:
            for experiment_id in ids:
                renewed = session.execute(
                    update(FLExperimentRow).where(FLExperimentRow.id == experiment_id,
                                                  FLExperimentRow.claimed_by == self.replica_id)
                    .values(lease_until=self.lease())
                    .execution_options(synchronize_session=False))
                if getattr(renewed, "rowcount", 1) == 0:
                    lost.append(experiment_id)
        return lost

    def launch(self, experiment_id: str) -> None:
        task = asyncio.create_task(self._run(experiment_id), name=f"fl-{experiment_id}")
        self._tasks[experiment_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(experiment_id, None))

    async def cancel(self, experiment_id: str) -> str:
        """Cancel an experiment and its client jobs; returns its status afterwards."""
        status = await asyncio.to_thread(self._mark_canceled, experiment_id)
        if status != Status.CANCELED:
            return status
        self._canceled.add(experiment_id)
        await self._cancel_jobs(experiment_id)
        task = self._tasks.get(experiment_id)
        if task is not None:
            task.cancel()
            # Not forever: the task also stops by itself at its next wait (`_canceled`).
            await asyncio.wait({task}, timeout=CANCEL_WAIT_S)
        await self._cancel_jobs(experiment_id)  # any it submitted meanwhile
        await asyncio.to_thread(self._remove_subsets, experiment_id)
        return Status.CANCELED

    def _mark_canceled(self, experiment_id: str) -> str:
        """`canceled` if it was running; else the terminal state it had reached."""
        with self.db.session() as session:
            row = session.get(FLExperimentRow, experiment_id)
            assert row is not None
            if row.is_terminal:
                return row.status
            self._finish_row(session, row, Status.CANCELED, "canceled by the user")
            return Status.CANCELED

    async def _cancel_jobs(self, experiment_id: str) -> None:
        for bench_id in await asyncio.to_thread(self._unfinished_jobs, experiment_id):
            await self.scheduler.cancel(bench_id)

    def _unfinished_jobs(self, experiment_id: str) -> list[str]:
        """The experiment's client jobs still in flight: the owner's unfinished benchmarks
        tagged `fl-<id>` (or, for ones whose tags were edited, still named `FL <id> ...`)."""
        tag = job_tag(experiment_id)
        with self.db.session() as session:
            owner_id = session.scalar(select(FLExperimentRow.owner_id).where(
                FLExperimentRow.id == experiment_id))
            if owner_id is None:
                return []
            rows = session.execute(select(Benchmark.id, Benchmark.name, Benchmark.tags).where(
                Benchmark.owner_id == owner_id,
                Benchmark.status.in_(UNFINISHED_STATUSES))).all()
        return [bench_id for bench_id, name, tags in rows
                if (isinstance(tags, list) and tag in tags)
                or (name or "").startswith(job_name(experiment_id))]

    # -- the experiment --------------------------------------------------------------------
    async def _run(self, experiment_id: str) -> None:
        try:
            await self._rounds(experiment_id)
        except asyncio.CancelledError:
            if not self._stopping and experiment_id not in self._lost:
                await self._cancel_jobs(experiment_id)
                await self._clean_if_ended(experiment_id)
            raise
        except ClaimLost:
            self._claim_lost(experiment_id)
        except Exception as exc:  # the experiment fails with the reason; the server goes on
            log.exception("federated-learning experiment %s failed", experiment_id)
            try:
                await self._cancel_jobs(experiment_id)  # no client job outlives it
            except Exception:
                log.exception("could not cancel the client jobs of experiment %s",
                              experiment_id)
            try:
                await asyncio.to_thread(self._finish, experiment_id, Status.FAILED, str(exc))
            except ClaimLost:
                self._claim_lost(experiment_id)
        else:  # ended, or found ended (canceled, finished elsewhere): no subset outlives it
            await self._clean_if_ended(experiment_id)

    def _claim_lost(self, experiment_id: str) -> None:
        log.warning("experiment %s is no longer claimed by this replica (%s): it stops "
                    "driving it", experiment_id, self.replica_id)
        self._lost.add(experiment_id)

    async def _clean_if_ended(self, experiment_id: str) -> None:
        """Remove the experiment's per-round subsets once it is terminal."""
        if await asyncio.to_thread(self._ended, experiment_id):
            await asyncio.to_thread(self._remove_subsets, experiment_id)

    async def _rounds(self, experiment_id: str) -> None:
        row = await asyncio.to_thread(self._snapshot, experiment_id)
        if row is None or row.is_terminal:
            return
        spec = parse_experiment(row.config)
        results = dict(row.results or {})
        rounds: list[dict[str, Any]] = list(results.get("rounds", []))
        state = dict(results.get("state", {}))
        clients = {c.client_id: ClientState.from_dict(state.get("clients", {}).get(c.client_id,
                                                                                 {}))
                   for c in spec.clients}
        elapsed = float(state.get("elapsed_s", 0.0))
        global_id = row.global_model_id or row.model_id
        model_bytes = await asyncio.to_thread(self._model_bytes, global_id)
        global_sha: str = row.global_model_sha256 or hashlib.sha256(model_bytes).hexdigest()
        await asyncio.to_thread(self._mark_running, experiment_id)
        if "initial" not in results and spec.server_dataset:
            initial = await asyncio.to_thread(self._server_eval, row.owner_id, spec,
                                              model_bytes)
            results["initial"] = initial
        for round_number in range(len(rounds) + 1, spec.rounds + 1):
            if experiment_id in self._canceled:
                return
            started = time.monotonic()
            await asyncio.to_thread(self._set_round, experiment_id, round_number)
            record, new_bytes = await self._round(row, spec, round_number, clients, global_id,
                                                  model_bytes)
            if new_bytes is not None:
                global_id, global_sha = await asyncio.to_thread(
                    self._store_global, row, new_bytes, round_number)
                model_bytes = new_bytes
            record["wall_time_s"] = round(time.monotonic() - started, 3)
            record["time_s"] = round(record["time_s"], 3)
            elapsed += record["time_s"]
            record["elapsed_s"] = round(elapsed, 3)
            record["global_model_sha256"] = global_sha
            rounds.append(record)
            state = {"clients": {k: v.as_dict() for k, v in clients.items()},
                     "elapsed_s": elapsed}
            results.update(rounds=rounds, state=state)
            reached = objectives.check(spec.objectives, round_number, elapsed,
                                       record["global_accuracy"], record["global_loss"])
            if reached is not None:
                results["stop"] = reached.as_dict()
            await asyncio.to_thread(self._save_round, experiment_id, results, global_id,
                                    global_sha, record)
            if reached is not None:
                break
        if "stop" not in results:
            results["stop"] = {"id": None, "type": "rounds", "round": len(rounds),
                               "elapsed_s": round(elapsed, 3), "value": None,
                               "message": f"all {spec.rounds} round(s) done"}
        aggregated = [r for r in rounds if r.get("aggregated_clients")]
        if not aggregated:
            reasons = "; ".join(f"round {r['round']}: {r.get('note') or 'no update'}"
                                for r in rounds)
            await asyncio.to_thread(self._finish, experiment_id, Status.FAILED,
                                    f"no round produced a global model ({reasons})"[:2000],
                                    results)
            return
        await asyncio.to_thread(self._finish, experiment_id, Status.SUCCESS,
                                results["stop"]["message"], results)

    async def _round(self, row: FLExperimentRow, spec: ExperimentSpec, round_number: int,
                     states: dict[str, ClientState], global_id: int,
                     model_bytes: bytes) -> tuple[dict[str, Any], bytes | None]:
        """One round; returns its record and the new global model (None: unchanged)."""
        plans = {c.client_id: plan_round(c, round_number, states[c.client_id])
                 for c in spec.clients}
        record: dict[str, Any] = {
            "round": round_number, "participants": [], "dropped": [], "clients": {},
            "aggregated_clients": [], "fit_metrics": {}, "eval_loss": None,
            "eval_accuracy": None, "eval_metrics": {}, "server_loss": None,
            "server_accuracy": None, "global_loss": None, "global_accuracy": None,
            "time_s": 0.0, "note": ""}
        for client in spec.clients:
            plan = plans[client.client_id]
            record["clients"][client.client_id] = {
                "status": "absent" if plan.absent else "selected", "events": plan.events,
                "device_status": plan.status}
            if plan.absent:
                record["dropped"].append({"client_id": client.client_id, "reason": plan.absent,
                                          "stage": "selection"})
        available = [c for c in spec.clients if not plans[c.client_id].absent]
        record["participants"] = [c.client_id for c in available]
        self._publish(row.id, round_number, "train", participants=record["participants"])
        fits: list[flower.FitUpdate] = []
        answered: list[ClientSpec] = []
        busy: dict[str, float] = {}
        new_bytes: bytes | None = None
        if len(available) < max(1, spec.min_available_clients):
            record["note"] = (f"{len(available)} client(s) available, fewer than "
                              f"min_available_clients ({spec.min_available_clients}): "
                              "no training this round")
        else:
            model = onnx.load_from_string(model_bytes)
            names, arrays = global_weights(model)
            shapes = [tuple(a.shape) for a in arrays]
            jobs, refused = await asyncio.to_thread(self._submit_training, row, spec,
                                                    round_number, available, plans, global_id)
            for client_id, why in refused.items():
                record["clients"][client_id]["status"] = "dropped"
                record["dropped"].append({"client_id": client_id, "reason": why,
                                          "stage": "training"})
            done = await self._wait(row.id, [j.benchmark_id for j in jobs], spec.round_timeout_s)
            for job in jobs:
                info = record["clients"][job.client.client_id]
                outcome = done[job.benchmark_id]
                info.update(train_benchmark=job.benchmark_id, num_examples=job.num_examples,
                            epochs=job.plan.epochs)
                run_s = outcome["run_s"]
                response = run_s * job.plan.slow_factor + job.plan.delay_s
                busy[job.client.client_id] = response
                info["train_run_s"] = round(run_s, 3)
                reason: str | None = None
                if outcome["status"] != Status.SUCCESS:
                    reason = f"training {outcome['status']}: {outcome['message'] or 'no reason'}"
                elif job.plan.network_timeout_s is not None:
                    response = max(response, job.plan.network_timeout_s)
                    reason = (f"network issue: its update never arrived (waited "
                              f"{job.plan.network_timeout_s:g} s)")
                elif spec.round_timeout_s is not None and response > spec.round_timeout_s:
                    reason = (f"no update within round_timeout_s ({spec.round_timeout_s:g} s): "
                              f"it needed {response:.1f} s")
                    response = spec.round_timeout_s
                info["response_time_s"] = round(response, 3)
                record["time_s"] = max(record["time_s"], response)
                train = outcome["report"]
                info.update(train_loss=_last(train.get("loss_train")),
                            train_accuracy=_last(train.get("accuracy_train")),
                            test_loss_on_device=_last(train.get("loss_test")),
                            test_accuracy_on_device=_last(train.get("accuracy_test")))
                if reason is None:
                    try:
                        weights = await asyncio.to_thread(read_weights, outcome["trained"],
                                                          names, shapes)
                    except (OSError, ValueError, TypeError, DecodeError) as exc:
                        reason = f"its trained model is unusable: {exc}"
                if reason is not None:
                    info["status"] = "dropped"
                    record["dropped"].append({"client_id": job.client.client_id,
                                              "reason": reason, "stage": "training"})
                    continue
                info["status"] = "trained"
                metrics = {k: float(v) for k, v in (("train_loss", info["train_loss"]),
                                                      ("train_accuracy", info["train_accuracy"]))
                           if v is not None}
                fits.append(flower.FitUpdate(job.client.client_id, weights, job.num_examples,
                                             metrics))
                answered.append(job.client)
            if len(fits) < max(1, spec.min_fit_clients):
                record["note"] = (f"{len(fits)} update(s), fewer than min_fit_clients "
                                  f"({spec.min_fit_clients}): the global model is unchanged")
            else:
                self._publish(row.id, round_number, "aggregate")
                params = flower.StrategyParams(spec.min_fit_clients, spec.min_eval_clients,
                                               spec.min_available_clients)
                failures = len([d for d in record["dropped"] if d["stage"] == "training"])
                result = await asyncio.to_thread(flower.aggregate, round_number, params, fits,
                                                 [], failures)
                if result.arrays is None:
                    record["note"] = "FedAvg returned no parameters: the global model is unchanged"
                else:
                    new_bytes = with_weights(model, names, result.arrays)
                    record["aggregated_clients"] = [f.client_id for f in fits]
                    record["fit_metrics"] = result.fit_metrics
                    record["aggregation_s"] = round(result.seconds, 3)
        for client in spec.clients:
            after_round(plans[client.client_id], states[client.client_id],
                        busy.get(client.client_id, 0.0))
            record["clients"][client.client_id]["battery_after_pct"] = \
                states[client.client_id].battery_pct
        current = new_bytes if new_bytes is not None else model_bytes
        if answered and new_bytes is not None:
            await self._evaluate(row, spec, round_number, answered, plans, current, record)
        if spec.server_dataset:
            server = await asyncio.to_thread(self._server_eval, row.owner_id, spec, current)
            record.update(server_loss=server["loss"], server_accuracy=server["accuracy"])
        if spec.server_dataset:
            record["global_loss"], record["global_accuracy"] = (record["server_loss"],
                                                                record["server_accuracy"])
        else:
            record["global_loss"], record["global_accuracy"] = (record["eval_loss"],
                                                                record["eval_accuracy"])
        return record, new_bytes

    async def _evaluate(self, row: FLExperimentRow, spec: ExperimentSpec, round_number: int,
                        clients: list[ClientSpec], plans: dict[str, RoundPlan],
                        model_bytes: bytes, record: dict[str, Any]) -> None:
        """TYPE2 jobs of the new global model on the clients' test data, scored here."""
        self._publish(row.id, round_number, "evaluate")
        model_id, _sha = await asyncio.to_thread(self._store_global, row, model_bytes,
                                                 round_number)
        jobs, refused = await asyncio.to_thread(self._submit_evaluation, row, round_number,
                                                clients, plans, model_id)
        for client_id, reason in refused.items():
            record["clients"][client_id]["eval_error"] = reason
        done = await self._wait(row.id, [j.benchmark_id for j in jobs], spec.round_timeout_s)
        evaluations = []
        eval_time = 0.0
        for job in jobs:
            info = record["clients"][job.client.client_id]
            outcome = done[job.benchmark_id]
            info["eval_benchmark"] = job.benchmark_id
            eval_time = max(eval_time, outcome["run_s"] * job.plan.slow_factor)
            if outcome["status"] != Status.SUCCESS or outcome["binary"] is None:
                info["eval_error"] = f"evaluation {outcome['status']}: {outcome['message']}"
                continue
            try:
                loss, accuracy = await asyncio.to_thread(self._score_client, row.owner_id,
                                                         job.client, outcome["binary"])
            except (OSError, ValueError) as exc:
                info["eval_error"] = f"its outputs could not be scored: {exc}"
                continue
            info.update(eval_loss=loss, eval_accuracy=accuracy)
            metrics = {"accuracy": accuracy} if accuracy is not None else {}
            evaluations.append(flower.Evaluation(job.client.client_id, loss, job.num_examples,
                                                 metrics))
        record["time_s"] += eval_time
        if len(evaluations) < max(1, spec.min_eval_clients):
            record["eval_note"] = (f"{len(evaluations)} evaluation(s), fewer than "
                                   f"min_eval_clients ({spec.min_eval_clients})")
            return
        params = flower.StrategyParams(spec.min_fit_clients, spec.min_eval_clients,
                                       spec.min_available_clients)
        result = await asyncio.to_thread(flower.aggregate, round_number, params, [],
                                         evaluations)
        record["eval_loss"] = result.eval_loss
        record["eval_metrics"] = result.eval_metrics
        record["eval_accuracy"] = result.eval_metrics.get("accuracy")

    async def _wait(self, experiment_id: str, ids: list[str],
                    timeout_s: float | None) -> dict[str, dict[str, Any]]:
        """Until every benchmark ends; one running longer than `timeout_s` is canceled."""
        pending = set(ids)
        outcomes: dict[str, dict[str, Any]] = {}
        async with self.hub.subscribe(ALL) as queue:
            while pending:
                if experiment_id in self._canceled or experiment_id in self._lost or \
                        await asyncio.to_thread(self._ended, experiment_id):
                    raise asyncio.CancelledError
                rows = await asyncio.to_thread(self._read_benchmarks, sorted(pending))
                now = datetime.now(UTC)
                for bench_id, bench in rows.items():
                    if bench["status"] in TERMINAL_STATUSES:
                        pending.discard(bench_id)
                        outcomes[bench_id] = await asyncio.to_thread(self._outcome, bench)
                    elif timeout_s is not None and bench["started_at"] is not None and \
                            (now - bench["started_at"]).total_seconds() > timeout_s:
                        await self.scheduler.cancel(bench_id)
                if not pending:
                    break
                await _next_change(queue, pending)
        return outcomes

    # -- database and files (run in threads) -----------------------------------------------
    def _snapshot(self, experiment_id: str) -> FLExperimentRow | None:
        with self.db.session() as session:
            row = session.get(FLExperimentRow, experiment_id)
            if row is not None:
                session.expunge(row)
            return row

    def _ended(self, experiment_id: str) -> bool:
        """Whether the experiment ended meanwhile (a cancel through another replica)."""
        with self.db.session() as session:
            status = session.scalar(select(FLExperimentRow.status).where(
                FLExperimentRow.id == experiment_id))
            return status is None or status in TERMINAL_STATUSES

    def _model_bytes(self, model_id: int) -> bytes:
        with self.db.session() as session:
            model = session.get(StoredModel, model_id)
            if model is None:
                raise RuntimeError(f"the experiment's model {model_id} is gone")
            return self.models.path(model.sha256).read_bytes()

    def _claimed_row(self, session: Any, experiment_id: str) -> FLExperimentRow:
        """The experiment's row, locked, if this replica still holds its claim; else
        ClaimLost (nothing may be written)."""
        row = session.get(FLExperimentRow, experiment_id, with_for_update=True)
        if row is None or row.claimed_by != self.replica_id:
            raise ClaimLost(experiment_id)
        return row

    def _mark_running(self, experiment_id: str) -> None:
        with self.db.session() as session:
            row = self._claimed_row(session, experiment_id)
            if row.status == Status.PENDING:
                row.status = Status.RUNNING
                row.started_at = datetime.now(UTC)
            self.hub.publish_on_commit(session, row.id, experiment_event(row))

    def _set_round(self, experiment_id: str, round_number: int) -> None:
        with self.db.session() as session:
            done = session.execute(
                update(FLExperimentRow).where(FLExperimentRow.id == experiment_id,
                                              FLExperimentRow.claimed_by == self.replica_id)
                .values(current_round=round_number)
                .execution_options(synchronize_session=False))
            if getattr(done, "rowcount", 1) == 0:
                raise ClaimLost(experiment_id)

    def _publish(self, experiment_id: str, round_number: int, phase: str,
                 **extra: Any) -> None:
        self.hub.publish(experiment_id, {"event": "fl", "status": Status.RUNNING,
                                         "round": round_number, "phase": phase, **extra})

    def _save_round(self, experiment_id: str, results: dict[str, Any], global_id: int,
                    global_sha: str, record: dict[str, Any]) -> None:
        with self.db.session() as session:
            row = self._claimed_row(session, experiment_id)
            row.results = json.loads(json.dumps(results))  # a new object: the JSON is saved
            row.global_model_id, row.global_model_sha256 = global_id, global_sha
            self.hub.publish_on_commit(session, row.id, experiment_event(
                row, phase="round", round_record={k: record[k] for k in (
                    "round", "participants", "dropped", "global_accuracy", "global_loss",
                    "elapsed_s")}))

    def _finish_row(self, session: Any, row: FLExperimentRow, status: Status,
                    message: str) -> None:
        row.status = status
        row.message = message[:2000]
        row.finished_at = datetime.now(UTC)
        self.hub.publish_on_commit(session, row.id, experiment_event(row, phase="end"))

    def _finish(self, experiment_id: str, status: Status, message: str,
                results: dict[str, Any] | None = None) -> None:
        with self.db.session() as session:
            row = session.get(FLExperimentRow, experiment_id, with_for_update=True)
            if row is None or row.is_terminal:
                return
            if row.claimed_by != self.replica_id:
                raise ClaimLost(experiment_id)
            if results is not None:
                row.results = json.loads(json.dumps(results))
            self._finish_row(session, row, status, message)
        self._remove_subsets(experiment_id)

    def _remove_subsets(self, experiment_id: str) -> None:
        """The reduced datasets made for this experiment's rounds (datasets of its owner)."""
        with self.db.session() as session:
            owner_id = session.scalar(select(FLExperimentRow.owner_id).where(
                FLExperimentRow.id == experiment_id))
            query = select(Dataset).where(Dataset.name.startswith(f"fl-{experiment_id}-",
                                                                  autoescape=True))
            if owner_id is not None:
                query = query.where(Dataset.owner_id == owner_id)
            rows = session.scalars(query).all()
            for dataset in rows:
                delete_stored(session, dataset, self.datasets)

    def _store_global(self, row: FLExperimentRow, data: bytes,
                      round_number: int) -> tuple[int, str]:
        """The global model after a round, as a stored model of the owner."""
        sha = hashlib.sha256(data).hexdigest()
        with self.db.session() as session:
            owner = session.get(User, row.owner_id)
            first = session.get(StoredModel, row.model_id)
            assert owner is not None and first is not None
            upload = self.settings.tmp_dir / f"fl-{row.id}-{secrets.token_hex(4)}.onnx"
            upload.write_bytes(data)
            stored = store_model(session, self.models, owner, upload, first.filename,
                                 ModelInfo.from_dict(first.info), sha)
            upload.unlink(missing_ok=True)
            if not stored.info.get("fl_experiment"):
                stored.info = {**stored.info, "fl_experiment": row.id, "round": round_number}
            return stored.id, sha

    def _submit_training(self, row: FLExperimentRow, spec: ExperimentSpec, round_number: int,
                         clients: list[ClientSpec], plans: dict[str, RoundPlan],
                         model_id: int) -> tuple[list[Job], dict[str, str]]:
        """The clients' training jobs, and why a client's could not be submitted (its
        target gone from the lab, its data deleted): that client drops out of the round."""
        jobs, refused = [], {}
        with self.db.session() as session:
            owner = session.get(User, row.owner_id)
            model = session.get(StoredModel, model_id)
            assert owner is not None and model is not None
            for client in clients:
                try:
                    jobs.append(self._submit_one_training(session, row, owner, model, client,
                                                          plans[client.client_id],
                                                          round_number))
                except (SubmissionError, RuntimeError) as exc:
                    refused[client.client_id] = f"its training job was refused: {exc}"
        self.scheduler.wake()
        return jobs, refused

    def _submit_one_training(self, session: Any, row: FLExperimentRow, owner: User,
                             model: StoredModel, client: ClientSpec, plan: RoundPlan,
                             round_number: int) -> Job:
        """Checks first (target, engine, data), then writes: a refused client leaves nothing
        behind."""
        request = RunRequest(target_type=client.target, engine=client.runtime,
                             benchmark_type="TYPE3", nb_inference=1, odt=True,
                             name=f"{job_name(row.id)}round {round_number} "
                                  f"{client.client_id} train",
                             tags=["fl", job_tag(row.id)])
        check_request(session, request, self.max_nb_inference)
        for section in ("input", "output"):
            for key in ("train_file", "test_file"):
                self._dataset(session, owner, client.odt[section][key])
        odt = with_model_names(client.odt, model.info)
        learning = dict(client.learning)
        if plan.epochs is not None:
            learning["epochs"] = min(int(learning["epochs"]), plan.epochs)
        odt["learning_parameters"] = learning
        samples = self._train_samples(session, owner, client)
        if plan.reduced is not None:
            samples = self._reduce(session, row.id, owner, client, plan, round_number, odt,
                                   samples)
        bench = create_benchmark(session, owner, request, model)
        bench.odt_config = odt
        self.hub.publish_on_commit(session, bench.id, benchmark_event(bench))
        return Job(bench.id, client, plan, samples)

    def _submit_evaluation(self, row: FLExperimentRow, round_number: int,
                           clients: list[ClientSpec], plans: dict[str, RoundPlan],
                           model_id: int) -> tuple[list[Job], dict[str, str]]:
        jobs, refused = [], {}
        with self.db.session() as session:
            owner = session.get(User, row.owner_id)
            model = session.get(StoredModel, model_id)
            assert owner is not None and model is not None
            for client in clients:
                tensor = client.odt["input"]
                try:  # checks first: a refused client leaves nothing behind
                    dataset = self._dataset(session, owner, tensor["test_file"])
                    request = RunRequest(target_type=client.target, engine=client.runtime,
                                         benchmark_type="TYPE2", nb_inference=1,
                                         dataset_name=dataset.name,
                                         name=f"{job_name(row.id)}round {round_number} "
                                              f"{client.client_id} evaluate",
                                         tags=["fl", job_tag(row.id)])
                    check_request(session, request, self.max_nb_inference)
                except (SubmissionError, RuntimeError) as exc:
                    refused[client.client_id] = f"its evaluation job was refused: {exc}"
                    continue
                bench = create_benchmark(session, owner, request, model)
                self.hub.publish_on_commit(session, bench.id, benchmark_event(bench))
                jobs.append(Job(bench.id, client, plans[client.client_id],
                                dataset.size // sample_bytes(tensor)))
        self.scheduler.wake()
        return jobs, refused

    def _dataset(self, session: Any, owner: User, ref: str) -> Dataset:
        dataset = session.scalar(select(Dataset).where(Dataset.name == ref,
                                                       Dataset.owner_id == owner.id))
        if dataset is None:
            dataset = session.scalar(select(Dataset).where(Dataset.name == ref,
                                                           Dataset.public.is_(True)))
        if dataset is None:
            raise RuntimeError(f"the dataset {ref} is gone")
        return dataset

    def _train_samples(self, session: Any, owner: User, client: ClientSpec) -> int:
        tensor = client.odt["input"]
        return int(self._dataset(session, owner, tensor["train_file"]).size
                   // sample_bytes(tensor))

    def _reduce(self, session: Any, experiment_id: str, owner: User, client: ClientSpec,
                plan: RoundPlan, round_number: int, odt: dict[str, Any], total: int) -> int:
        """Subsets of the client's training input and targets for this round, stored as
        datasets of the owner (removed when the experiment ends); returns their size."""
        assert plan.reduced is not None
        size = min(int(plan.reduced["new_size"]), total)
        if plan.reduced["suffule"]:
            order = np.random.default_rng(plan.reduced["seed"]).permutation(total)[:size]
        else:
            order = np.arange(size)
        for section in ("input", "output"):
            tensor = client.odt[section]
            source = self._dataset(session, owner, tensor["train_file"])
            width = sample_bytes(tensor)
            data = np.frombuffer(self.datasets.path(source.sha256).read_bytes(), dtype=np.uint8)
            subset = data.reshape(-1, width)[order].tobytes()
            sha = hashlib.sha256(subset).hexdigest()
            name = (f"fl-{experiment_id}-{client.client_id}-r{round_number}-train-{section}"
                    f".bin_{sha}")
            existing = session.scalar(select(Dataset).where(Dataset.owner_id == owner.id,
                                                            Dataset.name == name))
            if existing is None:
                path = self.settings.tmp_dir / f"{name[:60]}-{secrets.token_hex(4)}"
                path.write_bytes(subset)
                self.datasets.put(path, sha)
                path.unlink(missing_ok=True)
                session.add(Dataset(owner_id=owner.id, name=name, sha256=sha, size=len(subset)))
                session.flush()
            odt[section]["train_file"] = name
        plan.events.append({"type": "reduced_dataset", "description": "",
                            "effect": f"{size} of {total} training samples"})
        return size

    def _read_benchmarks(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with self.db.session() as session:
            rows = session.scalars(select(Benchmark).where(Benchmark.id.in_(ids))).all()
            found = {b.id: {"id": b.id, "status": b.status, "message": b.message,
                            "started_at": _aware(b.started_at),
                            "finished_at": _aware(b.finished_at),
                            "artifacts": list(b.artifacts or [])} for b in rows}
        for missing in set(ids) - set(found):  # deleted by its owner meanwhile
            found[missing] = {"id": missing, "status": Status.CANCELED,
                              "message": "the job was deleted", "started_at": None,
                              "finished_at": None, "artifacts": []}
        return found

    def _outcome(self, bench: dict[str, Any]) -> dict[str, Any]:
        """A finished job: run time, TYPE3 report and trained model, TYPE2 outputs."""
        folder = self.scheduler.artifact_dir(bench["id"])
        run_s = 0.0
        if bench["started_at"] is not None and bench["finished_at"] is not None:
            run_s = max(0.0, (bench["finished_at"] - bench["started_at"]).total_seconds())
        report: dict[str, Any] = {}
        odt_report = folder / "report_odt.json"
        if odt_report.is_file():
            try:
                loaded = json.loads(odt_report.read_text())
                report = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                report = {}
        trained = next(iter(sorted(folder.glob("model.*"))), None) if folder.is_dir() else None
        binary = folder / "raw_output.bin"
        return {"status": bench["status"], "message": bench["message"], "run_s": run_s,
                "report": report, "trained": trained,
                "binary": binary if binary.is_file() else None}

    def _score_client(self, owner_id: int, client: ClientSpec,
                      binary: Path) -> tuple[float, float | None]:
        with self.db.session() as session:
            owner = session.get(User, owner_id)
            assert owner is not None
            source = self._dataset(session, owner, client.odt["output"]["test_file"])
            path = self.datasets.path(source.sha256)
        targets = load_samples(path, client.odt["output"])
        outputs = np.fromfile(binary, dtype=np.float32)
        if len(targets) == 0 or outputs.size % len(targets):
            raise ValueError(f"{outputs.size} output values for {len(targets)} test samples")
        return score(outputs.reshape(len(targets), -1), targets)

    def _server_eval(self, owner_id: int, spec: ExperimentSpec,
                     model_bytes: bytes) -> dict[str, Any]:
        """The model on the server dataset, with onnxruntime here."""
        assert spec.server_dataset is not None
        started = time.monotonic()
        with self.db.session() as session:
            owner = session.get(User, owner_id)
            assert owner is not None
            paths = {section: self.datasets.path(self._dataset(
                session, owner, spec.server_dataset[section]["file"]).sha256)
                for section in ("input", "output")}
        inputs = load_samples(paths["input"], spec.server_dataset["input"])
        targets = load_samples(paths["output"], spec.server_dataset["output"])
        outputs = run_model(model_bytes, inputs)
        loss, accuracy = score(outputs.reshape(len(targets), -1), targets)
        return {"loss": loss, "accuracy": accuracy, "samples": len(targets),
                "seconds": round(time.monotonic() - started, 3)}


async def _next_change(queue: asyncio.Queue[dict[str, Any]], ids: set[str]) -> None:
    """Until a status event of one of `ids` arrives, or POLL_S passes. (No `wait_for` on
    the queue: in Python 3.11 it can swallow a cancel that coincides with an event.)"""
    deadline = asyncio.get_running_loop().time() + POLL_S
    while True:
        while not queue.empty():
            event = queue.get_nowait()
            if event.get("id") in ids and event.get("event") == "status":
                return
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.1))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _last(section: Any) -> float | None:
    """The last epoch's value of a `{min, max, values}` report section."""
    if isinstance(section, dict):
        values = section.get("values")
        if isinstance(values, list) and values and isinstance(values[-1], int | float):
            return float(values[-1])
    if isinstance(section, list) and section and isinstance(section[-1], int | float):
        return float(section[-1])
    return None
