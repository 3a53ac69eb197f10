"""Health checks per target instance: a reference benchmark, run when an instance joins, on a
schedule and on demand, compared with the instance's baseline to catch a drifting board.

- **Reference model.** Per instance, from its engines: the built-in ONNX model (four
  256x256 MatMul-Relu layers on a batch of 1024, generated with `onnx.helper`, fixed weights)
  where an engine runs ONNX (onnxruntime preferred), else the built-in full-integer int8
  TFLite model (two FULLY_CONNECTED layers, 64 -> 64 -> 16, written with LiteRT's flatbuffer
  schema; about 6 KB, fits every MCU profile) where an engine runs TFLite (tflite-micro, then
  tflite preferred); a target type named in `VLAB_HEALTH_REFERENCE_MODELS` uses its declared
  model instead. Both built-in models are generated at run time, byte for byte the same each
  time, so every check of a lab runs the same stored model.
- **Run.** A TYPE1 benchmark of `VLAB_HEALTH_CHECK_RUNS` inferences (and
  `VLAB_HEALTH_CHECK_MIN_TIME_S`) pinned to the instance, owned by the system's health account
  (`health-check@localhost`, which cannot log in) and tagged `health-check`: it appears in no
  user's history or results; administrators open it by id.
- **Verdict.** The first successful check (or one asked with `rebaseline`) is the baseline.
  Each later check is compared with it by the lab's comparison test
  (`vlab_kernel.stats.compare`: difference of medians, 95 % bootstrap interval, permutation
  test): slower beyond noise *and* by more than `VLAB_HEALTH_MIN_EFFECT` (10 %) is
  `degraded`, anything else `healthy`; a check that fails leaves the instance `error`.
- **Policy.** `VLAB_DEGRADED_POLICY=warn` notes a degraded instance in the metrics and message
  of the user jobs that ran on it; `exclude` schedules no user job on it until a check finds
  it healthy again (health checks still run there).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from vlab_backend.blobstore import BlobStore
from vlab_backend.catalog import engine_profile
from vlab_backend.config import Settings
from vlab_backend.events import ALL
from vlab_backend.store.database import Database
from vlab_backend.store.schema import (
    TERMINAL_STATUSES,
    Benchmark,
    HealthCheck,
    Status,
    StoredModel,
    TargetInstance,
    User,
)

if TYPE_CHECKING:
    from vlab_backend.scheduler import Scheduler

log = logging.getLogger("vlab.health")

HEALTH_USER_EMAIL = "health-check@localhost"
HEALTH_TAG = "health-check"
# Significance level of the comparison test (as `vlab_kernel.stats.compare` uses).
ALPHA = 0.05
# How often the monitor looks for joined instances, due checks and ended checks when nothing
# wakes it (a health check's end wakes it at once).
POLL_S = 2.0
# Engines preferred for each built-in reference model, in order; `synthetic` (a calibration
# engine that busy-waits drawn latencies) never checks an instance's health.
ONNX_ENGINES = ("onnxruntime", "openvino")
TFLITE_ENGINES = ("tflite-micro", "tflite")
NEVER_ENGINES = ("synthetic",)
ONNX_FILENAME = "vlab_health_reference.onnx"
TFLITE_FILENAME = "vlab_health_reference_int8.tflite"
# Keep the samples of at most this many checks per instance (plus its baseline).
KEEP_SAMPLES = 50


class Health(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    ERROR = "error"


class Verdict(StrEnum):
    PENDING = "pending"
    BASELINE = "baseline"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


class HealthError(ValueError):
    """A check that cannot be asked for (unknown instance, no reference model for it)."""


# -- the verdict ---------------------------------------------------------------------------------


def judge(baseline: Sequence[float], current: Sequence[float],
          min_effect: float = 0.10) -> dict[str, Any]:
    """Whether `current` latencies (seconds) are a degradation of `baseline`: slower beyond
    noise (the comparison test is significant: p < 0.05 and the 95 % interval of the
    difference of medians excludes 0) and by more than `min_effect` (relative, of the median).

    Returns the evidence: both medians, `ratio` (current / baseline median), the relative
    difference with its 95 % interval, `p_value`, `significant`, `degraded` and the verdict in
    words."""
    from vlab_kernel.stats import compare

    result = compare(baseline, current)
    med_a, med_b = result["median_a_s"], result["median_b_s"]
    ratio = med_b / med_a if med_a > 0 else float("inf")
    low, high = result["ci95_difference_s"]
    degraded = bool(result["significant"] and result["difference_s"] > 0
                    and ratio > 1.0 + min_effect)
    change = f"{ratio - 1.0:+.1%}"
    if degraded:
        words = (f"degraded: median {med_b * 1e3:.3g} ms against the baseline's "
                 f"{med_a * 1e3:.3g} ms ({change}, beyond noise: p={result['p_value']:.3f}; "
                 f"more than the {min_effect:.0%} minimum effect)")
    elif result["significant"] and result["difference_s"] > 0:
        words = (f"healthy: {change} against the baseline, beyond noise (p="
                 f"{result['p_value']:.3f}) but within the {min_effect:.0%} minimum effect")
    elif result["significant"]:
        words = f"healthy: {change} against the baseline (faster; p={result['p_value']:.3f})"
    else:
        words = (f"healthy: within noise of the baseline ({change}, p="
                 f"{result['p_value']:.3f})")
    return {"baseline_median_s": med_a, "median_s": med_b, "ratio": ratio,
            "relative_difference": result["relative_difference"],
            "ci95_relative": [low / med_a, high / med_a] if med_a > 0 else [None, None],
            "p_value": result["p_value"], "significant": result["significant"],
            "min_effect": min_effect, "degraded": degraded, "verdict": words,
            "comparison": result["verdict"]}


# -- reference models ----------------------------------------------------------------------------


@cache
def reference_onnx() -> bytes:
    """The built-in ONNX reference model: x[1024,256] -> 4 x (MatMul 256x256, Relu),
    fixed weights (0.54 GFLOP, about 2 ms per inference on one core of an x86 server: longer
    than a scheduler time slice, so that a competing process on the core shows in nearly every
    inference, not only in the tail)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20261130)
    width, batch, layers = 256, 1024, 4
    nodes, weights, previous = [], [], "input"
    for layer in range(layers):
        name = f"W{layer}"
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), name))
        nodes.append(helper.make_node("MatMul", [previous, name], [f"m{layer}"]))
        out = "output" if layer == layers - 1 else f"r{layer}"
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [out]))
        previous = out
    graph = helper.make_graph(
        nodes, "vlab_health_reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, width])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=8, producer_name="vlab-health")
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@cache
def reference_tflite_int8() -> bytes:
    """The built-in int8 TFLite reference model: int8 x[1,64] -> FULLY_CONNECTED 64 (ReLU) ->
    FULLY_CONNECTED 16, int8 weights (per-tensor scales), int32 biases, written with the
    TFLite flatbuffer schema that LiteRT ships (no TensorFlow needed). It runs on TFLite Micro's
    reference kernels and fits every MCU profile (about 6 KB of flash, 1 KB of arena)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb

    rng = np.random.default_rng(20261130)
    sizes = (64, 64, 16)
    buffers = [fb.BufferT()]  # buffer 0: the empty buffer of tensors without data

    def buffer(array: Any) -> int:
        item = fb.BufferT()
        item.data = list(np.ascontiguousarray(array).tobytes())
        buffers.append(item)
        return len(buffers) - 1

    def tensor(name: str, shape: list[int], kind: int, scale: float, zero: int,
               data: int = 0) -> Any:
        item = fb.TensorT()
        item.name, item.shape, item.type, item.buffer = name, shape, kind, data
        quant = fb.QuantizationParametersT()
        quant.scale, quant.zeroPoint = [scale], [zero]
        item.quantization = quant
        return item

    in_scale = 1.0 / 64  # inputs in [-2, 2)
    tensors = [tensor("input", [1, sizes[0]], fb.TensorType.INT8, in_scale, 0)]
    operators = []
    previous, previous_scale = 0, in_scale
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w_scale = 1.0 / 128
        weights = rng.integers(-127, 128, size=(fan_out, fan_in), dtype=np.int8)
        bias = rng.integers(-256, 256, size=fan_out).astype(np.int32)
        out_scale = previous_scale * w_scale * fan_in * 16
        tensors.append(tensor(f"w{layer}", [fan_out, fan_in], fb.TensorType.INT8, w_scale, 0,
                              buffer(weights)))
        tensors.append(tensor(f"b{layer}", [fan_out], fb.TensorType.INT32,
                              previous_scale * w_scale, 0, buffer(bias)))
        last = layer == len(sizes) - 2
        tensors.append(tensor("output" if last else f"h{layer}", [1, fan_out],
                              fb.TensorType.INT8, out_scale, 0))
        options = fb.FullyConnectedOptionsT()
        options.fusedActivationFunction = (fb.ActivationFunctionType.NONE if last
                                           else fb.ActivationFunctionType.RELU)
        op = fb.OperatorT()
        op.opcodeIndex = 0
        op.inputs = [previous, len(tensors) - 3, len(tensors) - 2]
        op.outputs = [len(tensors) - 1]
        op.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = options
        operators.append(op)
        previous, previous_scale = len(tensors) - 1, out_scale
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    graph = fb.SubGraphT()
    graph.tensors, graph.operators, graph.name = tensors, operators, "main"
    graph.inputs, graph.outputs = [0], [previous]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers, model.description = buffers, "vlab health reference (int8)"
    builder = flatbuffers.Builder(8192)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@dataclass
class Reference:
    """The reference benchmark of an instance: which model, with which engine."""

    filename: str
    engine: str
    data: bytes = field(repr=False)
    source: str = "built-in"


def _engine_formats(session: Session, name: str, offer: dict[str, Any]) -> set[str]:
    declared = (offer.get("env") or {}).get("VLAB_ENGINE_FORMATS")
    if declared:
        return {fmt.lower().lstrip(".") for fmt in str(declared).split()}
    profile = engine_profile(session, name)
    return set(profile.formats) if profile is not None else set()


def _pick(engines: list[str], preferred: Sequence[str]) -> str | None:
    for name in preferred:
        if name in engines:
            return name
    return engines[0] if engines else None


def reference_for(session: Session, settings: Settings, instance: TargetInstance) -> Reference:
    """The reference benchmark for `instance` (see the module's docstring); raises HealthError
    when none of its engines runs a reference model."""
    offers = {name: offer for name, offer in instance.engines.items()
              if name not in NEVER_ENGINES and "TYPE1" in offer.get("supported_types", [])}
    formats = {name: _engine_formats(session, name, offer) for name, offer in offers.items()}
    declared = settings.health_reference_models.get(instance.target_type)
    if declared is not None:
        suffix = declared.suffix.lower().lstrip(".")
        engine = _pick(sorted(n for n, f in formats.items() if suffix in f),
                       (*ONNX_ENGINES, *TFLITE_ENGINES))
        if engine is None:
            raise HealthError(f"{instance.uid}: no engine of it runs the declared reference "
                              f"model {declared.name} ({suffix})")
        try:
            data = declared.read_bytes()
        except OSError as exc:
            raise HealthError(f"{instance.uid}: cannot read its reference model {declared}: "
                              f"{exc.strerror}") from exc
        return Reference(declared.name, engine, data, str(declared))
    onnx_engine = _pick(sorted(n for n, f in formats.items() if "onnx" in f), ONNX_ENGINES)
    if onnx_engine is not None:
        return Reference(ONNX_FILENAME, onnx_engine, reference_onnx())
    tflite_engine = _pick(sorted(n for n, f in formats.items() if "tflite" in f),
                          TFLITE_ENGINES)
    if tflite_engine is not None:
        return Reference(TFLITE_FILENAME, tflite_engine, reference_tflite_int8())
    raise HealthError(f"{instance.uid}: none of its engines ({', '.join(instance.engines)}) "
                      "runs a reference model; declare one in VLAB_HEALTH_REFERENCE_MODELS")


# -- the health account --------------------------------------------------------------------------


def health_user(session: Session) -> User:
    """The system account that owns health checks (no password, no token: it cannot log in;
    not an administrator). Lists of runs show their owner's runs only, so its checks clutter
    no one's history."""
    user = session.scalar(select(User).where(User.email == HEALTH_USER_EMAIL))
    if user is None:
        user = User(email=HEALTH_USER_EMAIL, is_admin=False, password_hash=None)
        session.add(user)
        session.flush()
    return user


def health_user_id(session: Session) -> int | None:
    return session.scalar(select(User.id).where(User.email == HEALTH_USER_EMAIL))


def degraded_note(instance: TargetInstance) -> str:
    """The note a user job on a degraded instance gets (policy `warn`)."""
    detail = instance.health_detail or {}
    ratio = detail.get("ratio")
    how = f" ({ratio - 1.0:+.0%} on its reference benchmark)" if isinstance(
        ratio, int | float) else ""
    return (f"instance {instance.uid} was degraded at its last health check{how}: "
            "latencies may be slower than this target's")


# -- the monitor ---------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _lock_instance(session: Session, uid: str) -> TargetInstance | None:
    """The instance's row, locked until the transaction ends (fresh, not the cached one)."""
    return session.scalar(select(TargetInstance).where(TargetInstance.uid == uid)
                          .with_for_update().execution_options(populate_existing=True))


def _pending(session: Session, uid: str) -> HealthCheck | None:
    return session.scalar(select(HealthCheck).where(
        HealthCheck.instance_uid == uid, HealthCheck.verdict == Verdict.PENDING).limit(1))


def _engines_key(instance: TargetInstance) -> str:
    return json.dumps(instance.engines, sort_keys=True, default=str)


def check_view(check: HealthCheck) -> dict[str, Any]:
    """A check as the API shows it (without its samples)."""
    return {"id": check.id, "target_uid": check.instance_uid,
            "benchmark_id": check.benchmark_id, "reason": check.reason,
            "rebaseline": check.rebaseline, "verdict": check.verdict,
            "median_s": check.median_s, "detail": check.detail,
            "created_at": _iso(check.created_at), "finished_at": _iso(check.finished_at)}


class HealthMonitor:
    """Asks for health checks (joined instances, due ones, on demand) and judges them when
    their benchmark ends. Runs beside the scheduler, which it feeds with ordinary benchmarks."""

    def __init__(self, settings: Settings, db: Database, scheduler: Scheduler) -> None:
        self.settings = settings
        self.db = db
        self.scheduler = scheduler
        self.models = BlobStore(settings.models_dir)
        self.user_id: int | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # Instances without a reference model (reported once, not every round): uid -> the
        # engines it had then and when. Tried again once its engines change or after the
        # check interval.
        self._no_reference: dict[str, tuple[str, datetime]] = {}
        # Serialises this process's check-then-insert (the row lock serialises replicas on
        # PostgreSQL; SQLite ignores it and pysqlite reads outside the write transaction).
        self._asking = threading.Lock()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.user_id = await asyncio.to_thread(self._ensure_user)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Thread-safe request for a round (a benchmark ended, a check was asked for)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _ensure_user(self) -> int:
        with self.db.session() as session:
            return health_user(session).id

    async def _run(self) -> None:
        while True:
            try:
                if await asyncio.to_thread(self.round):
                    self.scheduler.wake()
                    self.scheduler.hub.publish(ALL, {"event": "targets"})
            except Exception:  # keep monitoring whatever one round hit
                log.exception("health round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_S)
            self._wake.clear()

    def round(self) -> bool:
        """Judge the checks whose benchmark ended; ask for checks of joined instances and of
        those due on the schedule. True when something changed."""
        changed = self.judge_ended()
        now = datetime.now(UTC)
        with self._asking, self.db.session() as session:
            instances = session.scalars(select(TargetInstance).where(
                TargetInstance.enabled.is_(True)).order_by(TargetInstance.uid)).all()
            latest: dict[str, datetime] = {uid: last for uid, last in session.execute(
                select(HealthCheck.instance_uid, func.max(HealthCheck.created_at))
                .group_by(HealthCheck.instance_uid))}
            open_checks = set(session.scalars(select(HealthCheck.instance_uid).where(
                HealthCheck.verdict == Verdict.PENDING)))
            # One joined or scheduled check at a time per host, so that checks do not slow
            # each other down (a host's instances share its memory, caches and clock).
            busy_hosts = {i.host for i in instances if i.uid in open_checks}
            interval = timedelta(hours=self.settings.health_check_interval_h)
            for instance in instances:
                if instance.uid in open_checks or self._lacks_reference(instance, now, interval) \
                        or instance.host in busy_hosts:
                    continue
                reason = self._due(latest.get(instance.uid), now, interval)
                if reason is None:
                    continue
                # Check-then-insert under the instance's row lock: another replica's monitor
                # or an on-demand request may have asked for a check since the reads above.
                locked = _lock_instance(session, instance.uid)
                if locked is None or not locked.enabled:
                    session.commit()  # releases the lock
                    continue
                if _pending(session, instance.uid) is not None:  # asked for meanwhile
                    busy_hosts.add(instance.host)
                    session.commit()
                    continue
                reason = self._due(session.scalar(select(func.max(HealthCheck.created_at))
                                                  .where(HealthCheck.instance_uid
                                                         == instance.uid)), now, interval)
                if reason is None:
                    session.commit()
                    continue
                try:
                    self._request(session, instance, reason=reason)
                    busy_hosts.add(instance.host)
                    self._no_reference.pop(instance.uid, None)
                    changed = True
                except HealthError as exc:
                    log.warning("no health check for %s: %s", instance.uid, exc)
                    self._no_reference[instance.uid] = (_engines_key(instance), now)
                    self._mark_error(session, instance, str(exc))
                    changed = True
                session.commit()  # releases the lock (one instance at a time)
        return changed

    def _due(self, last: datetime | None, now: datetime, interval: timedelta) -> str | None:
        """Why an instance whose latest check was created at `last` needs one (None: not)."""
        if last is None:
            return "joined" if self.settings.health_check_on_join else None
        if interval and _aware(last) + interval <= now:
            return "scheduled"
        return None

    def _lacks_reference(self, instance: TargetInstance, now: datetime,
                         interval: timedelta) -> bool:
        """Whether the instance was found without a reference model and nothing changed
        since: same engines, within the check interval. A stale entry is dropped."""
        entry = self._no_reference.get(instance.uid)
        if entry is None:
            return False
        engines, since = entry
        if engines == _engines_key(instance) and (not interval or since + interval > now):
            return True
        del self._no_reference[instance.uid]
        return False

    def request(self, uid: str, rebaseline: bool = False, reason: str = "on demand",
                ) -> dict[str, Any]:
        """Ask for a check of instance `uid` now (or return the one that is still open);
        raises HealthError for an unknown instance or one without a reference model."""
        with self._asking, self.db.session() as session:
            # "No pending check, so create one" is atomic: the row lock across replicas
            # (PostgreSQL), `_asking` within this process (SQLite has one server).
            instance = _lock_instance(session, uid)
            if instance is None:
                raise HealthError(f"unknown target instance {uid!r}")
            if not instance.enabled:
                raise HealthError(f"target instance {uid} is not available ({instance.state})")
            check = _pending(session, uid)
            if check is None:
                check = self._request(session, instance, reason=reason, rebaseline=rebaseline)
            elif rebaseline and not check.rebaseline:
                check.rebaseline = True
            view = check_view(check)
        self.scheduler.wake()
        self.wake()
        return view

    def _request(self, session: Session, instance: TargetInstance, reason: str,
                 rebaseline: bool = False) -> HealthCheck:
        from vlab_backend.submission import RunRequest, check_request, create_benchmark

        reference = reference_for(session, self.settings, instance)
        user = session.get(User, self.user_id) if self.user_id else None
        if user is None:
            user = health_user(session)
            self.user_id = user.id
        model = self._store_model(session, user, reference)
        parameters: dict[str, Any] = {"profile_layers": False,
                                      "min_time_s": self.settings.health_check_min_time_s}
        profile = engine_profile(session, reference.engine)
        if profile is not None:
            parameters = {k: v for k, v in parameters.items() if k in profile.parameters}
        request = RunRequest(
            target_type=instance.target_type, engine=reference.engine, benchmark_type="TYPE1",
            nb_inference=self.settings.health_check_runs, target_uids=[instance.uid],
            parameters=parameters, name=f"health check of {instance.uid}", tags=[HEALTH_TAG],
            notes=f"{reason} health check ({reference.source} reference "
                  f"{reference.filename} on {reference.engine})")
        try:
            check_request(session, request, max(self.settings.max_nb_inference,
                                                self.settings.health_check_runs))
        except ValueError as exc:
            raise HealthError(f"{instance.uid}: {exc}") from exc
        bench = create_benchmark(session, user, request, model)
        check = HealthCheck(instance_uid=instance.uid, benchmark_id=bench.id, reason=reason,
                            rebaseline=rebaseline, verdict=Verdict.PENDING)
        session.add(check)
        session.flush()
        log.info("health check %s of %s (%s): benchmark %s", check.id, instance.uid, reason,
                 bench.id)
        return check

    def _store_model(self, session: Session, user: User, reference: Reference) -> StoredModel:
        from vlab_backend.submission import intake_upload, store_model

        sha256 = hashlib.sha256(reference.data).hexdigest()
        existing = session.scalar(select(StoredModel).where(
            StoredModel.owner_id == user.id, StoredModel.sha256 == sha256,
            StoredModel.filename == reference.filename))
        if existing is not None and self.models.exists(sha256):
            return existing
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.settings.tmp_dir,
                                        suffix=Path(reference.filename).suffix)
        upload = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(reference.data)
            info = intake_upload(upload, reference.filename,
                                 engine_profile(session, reference.engine))
            if existing is not None:  # its blob was removed: store it again
                self.models.put(upload, sha256)
                return existing
            return store_model(session, self.models, user, upload, reference.filename, info,
                               sha256)
        except ValueError as exc:
            raise HealthError(f"the reference model {reference.filename} was refused: "
                              f"{exc}") from exc
        finally:
            upload.unlink(missing_ok=True)

    def _mark_error(self, session: Session, instance: TargetInstance, message: str,
                    check: HealthCheck | None = None) -> None:
        instance.health = Health.ERROR
        instance.health_detail = {"verdict": f"error: {message}", "message": message,
                                  "check_id": check.id if check else None,
                                  "benchmark_id": check.benchmark_id if check else None,
                                  "at": datetime.now(UTC).isoformat()}

    # -- judging ---------------------------------------------------------------------------
    def judge_ended(self) -> bool:
        """Judge every open check whose benchmark has ended (or vanished)."""
        with self.db.session() as session:
            rows = session.execute(
                select(HealthCheck.id, Benchmark.status)
                .join(Benchmark, Benchmark.id == HealthCheck.benchmark_id, isouter=True)
                .where(HealthCheck.verdict == Verdict.PENDING)).all()
        ended = [check_id for check_id, status in rows
                 if status is None or status in TERMINAL_STATUSES]
        for check_id in ended:
            try:
                self.judge(check_id)
            except Exception:
                log.exception("judging health check %s failed", check_id)
                with self.db.session() as session:
                    session.execute(update(HealthCheck).where(HealthCheck.id == check_id)
                                    .values(verdict=Verdict.FAILED,
                                            finished_at=datetime.now(UTC)))
        return bool(ended)

    def _samples(self, benchmark_id: str) -> list[float]:
        report = self.settings.artifacts_dir / benchmark_id / "report.json"
        try:
            latency = json.loads(report.read_text()).get("inference_latency") or {}
        except (OSError, ValueError):
            return []
        return [float(s) for s in latency.get("samples") or []
                if isinstance(s, int | float) and s > 0]

    def judge(self, check_id: int) -> None:
        """Judge one ended check: baseline, healthy, degraded or failed; the instance's
        health and evidence follow."""
        with self.db.session() as session:
            check = session.get(HealthCheck, check_id)
            if check is None or check.verdict != Verdict.PENDING:
                return
            bench = session.scalar(select(Benchmark).where(
                Benchmark.id == check.benchmark_id))
            instance = session.get(TargetInstance, check.instance_uid)
            now = datetime.now(UTC)
            check.finished_at = now
            samples = self._samples(check.benchmark_id) if bench is not None \
                and bench.status == Status.SUCCESS else []
            if len(samples) < 2:
                why = ("its benchmark was deleted" if bench is None else
                       f"its benchmark {bench.status}: {bench.message}" if bench.status
                       != Status.SUCCESS else "its report has no latency samples")
                check.verdict = Verdict.FAILED
                check.detail = {"verdict": f"failed: {why}"}
                if instance is not None:
                    self._mark_error(session, instance, f"the health check failed ({why})",
                                     check)
                log.warning("health check %s of %s failed: %s", check.id, check.instance_uid,
                            why)
                return
            import numpy as np

            check.samples = samples
            check.median_s = float(np.median(samples))
            baseline = session.scalar(
                select(HealthCheck).where(HealthCheck.instance_uid == check.instance_uid,
                                          HealthCheck.verdict == Verdict.BASELINE)
                .order_by(HealthCheck.id.desc()).limit(1))
            current = {"check_id": check.id, "benchmark_id": check.benchmark_id,
                       "median_s": check.median_s, "at": now.isoformat(),
                       "samples": len(samples)}
            if baseline is None or check.rebaseline:
                check.verdict = Verdict.BASELINE
                words = (f"baseline: median {check.median_s * 1e3:.3g} ms "
                         f"({'asked for' if check.rebaseline else 'first healthy check'})")
                check.detail = {"verdict": words}
                detail: dict[str, Any] = {"verdict": words, "baseline": current,
                                          "current": current, "ratio": 1.0}
                health = Health.HEALTHY
            else:
                evidence = judge(baseline.samples, samples, self.settings.health_min_effect)
                check.verdict = Verdict.DEGRADED if evidence["degraded"] else Verdict.HEALTHY
                check.detail = {**evidence, "baseline_check_id": baseline.id}
                detail = {**evidence, "baseline": {
                    "check_id": baseline.id, "benchmark_id": baseline.benchmark_id,
                    "median_s": baseline.median_s, "at": _iso(baseline.finished_at)},
                    "current": current}
                health = Health.DEGRADED if evidence["degraded"] else Health.HEALTHY
            if instance is not None:
                instance.health, instance.health_detail = health, detail
            log.info("health check %s of %s: %s", check.id, check.instance_uid,
                     detail["verdict"])
            self._prune(session, check.instance_uid)

    def _prune(self, session: Session, uid: str) -> None:
        """Drop the samples of old checks (their medians and verdicts stay); baselines keep
        theirs."""
        keep = select(HealthCheck.id).where(HealthCheck.instance_uid == uid).order_by(
            HealthCheck.id.desc()).limit(KEEP_SAMPLES)
        session.execute(update(HealthCheck).where(
            HealthCheck.instance_uid == uid, HealthCheck.verdict != Verdict.BASELINE,
            HealthCheck.id.not_in(keep.scalar_subquery())).values(samples=[])
            .execution_options(synchronize_session=False))

    # -- reading -----------------------------------------------------------------------------
    def history(self, uid: str, limit: int = 50) -> list[dict[str, Any]]:
        """The instance's checks, newest first."""
        with self.db.session() as session:
            return [check_view(c) for c in session.scalars(
                select(HealthCheck).where(HealthCheck.instance_uid == uid)
                .order_by(HealthCheck.id.desc()).limit(limit))]


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
