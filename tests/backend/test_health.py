"""Health checks' verdict logic on synthetic samples, the built-in reference models, the choice
of a reference per instance, and the monitor's judging of ended checks against a store (no
server, no pipeline: the checks' benchmarks and reports are written by hand)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlab_backend.config import Settings
from vlab_backend.health import (
    HEALTH_TAG,
    HEALTH_USER_EMAIL,
    ONNX_FILENAME,
    TFLITE_FILENAME,
    HealthError,
    HealthMonitor,
    degraded_note,
    health_user,
    judge,
    reference_for,
    reference_onnx,
    reference_tflite_int8,
)
from vlab_backend.store.database import Database
from vlab_backend.store.schema import (
    Benchmark,
    HealthCheck,
    Status,
    StoredModel,
    TargetInstance,
)


def latencies(median_ms: float, n: int = 200, spread: float = 0.03,
              seed: int = 0) -> list[float]:
    """Right-skewed latencies (log-normal, `spread` = sigma of the log) around a median, with a
    few slow outliers, as a busy machine gives them."""
    rng = np.random.default_rng(seed)
    samples = median_ms * 1e-3 * rng.lognormal(0.0, spread, n)
    samples[rng.choice(n, n // 50, replace=False)] *= 3.0
    return [float(s) for s in samples]


# -- the verdict -----------------------------------------------------------------------------


def test_the_same_distribution_is_healthy() -> None:
    found = judge(latencies(2.0, seed=1), latencies(2.0, seed=2))
    assert not found["degraded"] and found["verdict"].startswith("healthy")
    assert found["ratio"] == pytest.approx(1.0, abs=0.02)
    assert found["p_value"] > 0.05 or abs(found["ratio"] - 1) < 0.02


def test_a_large_slowdown_beyond_noise_is_degraded_with_its_evidence() -> None:
    found = judge(latencies(2.0, seed=1), latencies(3.0, seed=2))
    assert found["degraded"] and found["significant"]
    assert found["ratio"] == pytest.approx(1.5, rel=0.03)
    assert found["baseline_median_s"] == pytest.approx(2e-3, rel=0.02)
    assert found["median_s"] == pytest.approx(3e-3, rel=0.02)
    assert found["p_value"] < 0.01
    low, high = found["ci95_relative"]
    assert 0.4 < low < 0.5 < high < 0.6
    assert found["verdict"].startswith("degraded: median 3")
    assert "10% minimum effect" in found["verdict"]


def test_a_slowdown_beyond_noise_but_under_the_minimum_effect_is_healthy() -> None:
    # 5 % slower with 1 % noise: significant, yet below the 10 % that counts.
    found = judge(latencies(2.0, spread=0.01, seed=1), latencies(2.1, spread=0.01, seed=2))
    assert found["significant"] and not found["degraded"]
    assert "within the 10% minimum effect" in found["verdict"]
    # The same change with a 3 % minimum effect is a degradation.
    assert judge(latencies(2.0, spread=0.01, seed=1), latencies(2.1, spread=0.01, seed=2),
                 min_effect=0.03)["degraded"]


def test_a_large_change_within_noise_is_healthy() -> None:
    # 20 % slower medians, but ten samples each with a 40 % spread: not beyond noise.
    found = judge(latencies(2.0, n=10, spread=0.4, seed=3),
                  latencies(2.4, n=10, spread=0.4, seed=4))
    assert not found["significant"] and not found["degraded"]
    assert "within noise" in found["verdict"]


def test_faster_is_healthy() -> None:
    found = judge(latencies(3.0, seed=1), latencies(2.0, seed=2))
    assert found["significant"] and not found["degraded"] and "faster" in found["verdict"]


def test_the_verdict_is_reproducible() -> None:
    a, b = latencies(2.0, seed=5), latencies(2.3, seed=6)
    assert judge(a, b) == judge(a, b)


# -- reference models --------------------------------------------------------------------------


def test_the_onnx_reference_is_valid_and_the_same_every_time() -> None:
    import onnx

    data = reference_onnx()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    reference_onnx.cache_clear()
    assert reference_onnx() == data  # the same stored model for every check


def test_the_int8_tflite_reference_runs_in_litert_with_int8_tensors() -> None:
    from ai_edge_litert.interpreter import Interpreter

    data = reference_tflite_int8()
    assert data[4:8] == b"TFL3" and len(data) < 16 * 1024
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    [source], [result] = interpreter.get_input_details(), interpreter.get_output_details()
    assert source["dtype"] == np.int8 and list(source["shape"]) == [1, 64]
    assert result["dtype"] == np.int8 and list(result["shape"]) == [1, 16]
    interpreter.set_tensor(source["index"], np.arange(-32, 32, dtype=np.int8).reshape(1, 64))
    interpreter.invoke()
    assert interpreter.get_tensor(result["index"]).any()
    reference_tflite_int8.cache_clear()
    assert reference_tflite_int8() == data


# -- a store -------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    db = Database(settings.db_url)
    db.migrate()
    yield settings, db
    db.dispose()


def offer(formats: str, types: tuple[str, ...] = ("TYPE1", "TYPE2")) -> dict[str, Any]:
    return {"supported_types": list(types), "env": {"VLAB_ENGINE_FORMATS": formats}}


def test_the_reference_follows_the_instance_engines(store: Any, tmp_path: Path) -> None:
    settings, db = store
    with db.session() as session:
        cpu = TargetInstance(uid="cpu", target_type="host-cpu", engines={
            "synthetic": offer("onnx"), "tflite": offer("tflite"), "openvino": offer("onnx xml"),
            "onnxruntime": offer("onnx")})
        board = TargetInstance(uid="m4", target_type="mcu-cortex-m4",
                               engines={"tflite-micro": offer("tflite")})
        rpi = TargetInstance(uid="rpi", target_type="rpi5", engines={"tflite": offer("tflite")})
        calibration = TargetInstance(uid="cal", target_type="cal",
                                     engines={"synthetic": offer("onnx")})
        assert (reference_for(session, settings, cpu).filename,
                reference_for(session, settings, cpu).engine) == (ONNX_FILENAME, "onnxruntime")
        assert (reference_for(session, settings, board).filename,
                reference_for(session, settings, board).engine) == (TFLITE_FILENAME,
                                                                    "tflite-micro")
        assert reference_for(session, settings, rpi).engine == "tflite"
        with pytest.raises(HealthError, match="VLAB_HEALTH_REFERENCE_MODELS"):
            reference_for(session, settings, calibration)
        declared = tmp_path / "mobilenet.tflite"
        declared.write_bytes(reference_tflite_int8())
        own = settings.model_copy(update={"health_reference_models": {"rpi5": declared}})
        reference = reference_for(session, own, rpi)
        assert (reference.filename, reference.source) == ("mobilenet.tflite", str(declared))


class Quiet:
    """The scheduler a monitor wakes (these tests judge by hand)."""

    def wake(self) -> None:
        pass


def ended_check(db: Database, settings: Settings, uid: str, samples: list[float] | None,
                rebaseline: bool = False) -> int:
    """A check of `uid` whose benchmark ended: successful with these latency samples, or
    failed (None)."""
    bench_id = uuid.uuid4().hex[:16]
    with db.session() as session:
        user = health_user(session)
        model = session.query(StoredModel).first()
        if model is None:
            model = StoredModel(owner_id=user.id, sha256="a" * 64, filename=ONNX_FILENAME,
                                format="onnx", size=1, info={})
            session.add(model)
            session.flush()
        session.add(Benchmark(
            id=bench_id, owner_id=user.id, target_type="host-cpu", engine="onnxruntime",
            benchmark_type="TYPE1", nb_inference=len(samples or []), model_id=model.id,
            model_filename=model.filename, model_sha256=model.sha256, tags=[HEALTH_TAG],
            status=Status.SUCCESS if samples else Status.FAILED, target_uid=uid,
            message="" if samples else "engine crashed"))
        check = HealthCheck(instance_uid=uid, benchmark_id=bench_id, rebaseline=rebaseline)
        session.add(check)
        session.flush()
        check_id = check.id
    if samples:
        folder = settings.artifacts_dir / bench_id
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(
            {"inference_latency": {"samples": samples}}))
    return check_id


def test_the_monitor_keeps_a_baseline_and_judges_each_check_against_it(store: Any) -> None:
    settings, db = store
    with db.session() as session:
        session.add(TargetInstance(uid="cpu-0", target_type="host-cpu",
                                   engines={"onnxruntime": offer("onnx")}))
    monitor = HealthMonitor(settings, db, Quiet())  # type: ignore[arg-type]

    def state() -> tuple[str, dict[str, Any]]:
        with db.session() as session:
            instance = session.get(TargetInstance, "cpu-0")
            assert instance is not None
            return instance.health, instance.health_detail

    first = ended_check(db, settings, "cpu-0", latencies(2.0, seed=1))
    assert monitor.judge_ended()
    health, detail = state()
    assert health == "healthy" and detail["baseline"]["check_id"] == first
    assert detail["verdict"].startswith("baseline: median 2")

    slow = ended_check(db, settings, "cpu-0", latencies(3.0, seed=2))
    monitor.judge_ended()
    health, detail = state()
    assert health == "degraded"
    assert detail["baseline"]["check_id"] == first and detail["current"]["check_id"] == slow
    assert detail["ratio"] == pytest.approx(1.5, rel=0.03) and detail["p_value"] < 0.01
    assert detail["baseline"]["median_s"] == pytest.approx(2e-3, rel=0.02)
    assert detail["current"]["median_s"] == pytest.approx(3e-3, rel=0.02)
    assert detail["baseline"]["at"] and detail["current"]["at"]
    with db.session() as session:
        instance = session.get(TargetInstance, "cpu-0")
        assert instance is not None
        assert "cpu-0 was degraded" in degraded_note(instance) and "+50%" in degraded_note(
            instance)

    ended_check(db, settings, "cpu-0", latencies(2.0, seed=3))
    monitor.judge_ended()
    assert state()[0] == "healthy"

    # A failed check: the instance is in error, with the reason; the baseline stays.
    ended_check(db, settings, "cpu-0", None)
    monitor.judge_ended()
    health, detail = state()
    assert health == "error" and "engine crashed" in detail["message"]

    # A new baseline when asked: the slow machine becomes the reference.
    rebased = ended_check(db, settings, "cpu-0", latencies(3.0, seed=4), rebaseline=True)
    monitor.judge_ended()
    health, detail = state()
    assert health == "healthy" and detail["baseline"]["check_id"] == rebased
    ended_check(db, settings, "cpu-0", latencies(3.0, seed=5))
    monitor.judge_ended()
    assert state()[0] == "healthy"
    verdicts = [c["verdict"] for c in monitor.history("cpu-0")]
    assert verdicts == ["healthy", "baseline", "failed", "healthy", "degraded", "baseline"]
    assert not monitor.judge_ended()  # nothing left to judge


def test_the_health_account_cannot_log_in_and_is_no_admin(store: Any) -> None:
    _settings, db = store
    with db.session() as session:
        user = health_user(session)
        assert user.email == HEALTH_USER_EMAIL
        assert user.password_hash is None and not user.is_admin
        assert health_user(session).id == user.id


def test_the_degraded_policy_warn_notes_user_jobs_and_exclude_keeps_them_off(
        store: Any) -> None:
    from tests.backend.test_scheduler import IdleRunner
    from vlab_backend.artifacts import Outcome
    from vlab_backend.auth import create_user
    from vlab_backend.events import EventHub
    from vlab_backend.scheduler import Scheduler

    settings, db = store
    with db.session() as session:
        user = create_user(session, "u@lab", None, is_admin=False)
        session.add(TargetInstance(uid="cpu-0", target_type="host-cpu",
                                   engines={"onnxruntime": offer("onnx")}, health="degraded",
                                   health_detail={"ratio": 1.8}))
        user_id = user.id
    ended_check(db, settings, "cpu-0", latencies(2.0))  # creates the health account
    with db.session() as session:
        health_id = health_user(session).id
    warn = Scheduler(settings, db, EventHub(), IdleRunner())
    warn.health.user_id = health_id
    assert not warn._excluded("degraded", user_id)
    exclude = Scheduler(settings.model_copy(update={"degraded_policy": "exclude"}), db,
                        EventHub(), IdleRunner())
    exclude.health.user_id = health_id
    assert exclude._excluded("degraded", user_id)
    assert not exclude._excluded("degraded", health_id)  # its checks still run there
    assert not exclude._excluded("healthy", user_id)

    with db.session() as session:
        bench = Benchmark(id="u1", owner_id=user_id, target_type="host-cpu",
                          engine="onnxruntime", benchmark_type="TYPE1", nb_inference=5,
                          model_id=1, model_filename="m.onnx", model_sha256="a" * 64,
                          target_uid="cpu-0")
        outcome = Outcome(Status.SUCCESS, "", [], {"latency_median_s": 0.004})
        warn._note_health(session, bench, outcome)
        assert outcome.metrics["instance_health"] == "degraded"
        assert "+80%" in outcome.metrics["instance_health_note"]
        assert outcome.message.startswith("warning: instance cpu-0 was degraded")
        failed = Outcome(Status.FAILED, "engine crashed", [], {})
        warn._note_health(session, bench, failed)
        assert failed.message == "engine crashed" and failed.metrics["instance_health"]
        bench.owner_id = health_id  # a health check itself gets no note
        quiet = Outcome(Status.SUCCESS, "", [], {})
        warn._note_health(session, bench, quiet)
        assert quiet.metrics == {} and quiet.message == ""


def test_concurrent_check_requests_create_one_pending_check(store: Any) -> None:
    import threading

    settings, db = store
    with db.session() as session:
        session.add(TargetInstance(uid="cpu-0", target_type="host-cpu",
                                   engines={"onnxruntime": offer("onnx")}))
    monitor = HealthMonitor(settings, db, Quiet())  # type: ignore[arg-type]
    monitor.user_id = monitor._ensure_user()  # as `start` does
    barrier = threading.Barrier(4)
    views: list[dict[str, Any]] = []

    errors: list[BaseException] = []

    def ask() -> None:
        barrier.wait()
        try:
            views.append(monitor.request("cpu-0"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.session() as session:
        pending = session.query(HealthCheck).filter(HealthCheck.verdict == "pending").all()
        assert len(pending) == 1
        assert session.query(Benchmark).filter(Benchmark.tags.isnot(None)).count() == 1
    assert errors == [] and len(views) == 4
    assert {v["id"] for v in views} == {pending[0].id}
    # The monitor's own round finds the open check and asks for no other.
    monitor.round()
    with db.session() as session:
        assert session.query(HealthCheck).count() == 1


def test_an_instance_without_reference_is_tried_again_once_its_engines_change(
        store: Any) -> None:
    settings, db = store
    with db.session() as session:
        session.add(TargetInstance(uid="cal", target_type="cal",
                                   engines={"synthetic": offer("onnx")}))
    monitor = HealthMonitor(settings, db, Quiet())  # type: ignore[arg-type]
    assert monitor.round()  # no reference: the instance is in error, once
    assert "cal" in monitor._no_reference
    assert not monitor.round()  # not reported again every round
    with db.session() as session:
        instance = session.get(TargetInstance, "cal")
        assert instance is not None
        instance.engines = {"onnxruntime": offer("onnx")}
    assert monitor.round()  # new engines: a reference, and a check
    assert "cal" not in monitor._no_reference
    with db.session() as session:
        assert [c.reason for c in session.query(HealthCheck)] == ["joined"]
