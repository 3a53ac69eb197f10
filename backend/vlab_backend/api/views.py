"""Stored rows as the response models of `schemas` (the JSON the routes answer with)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vlab_backend.api.schemas import (
    ApiTokenInfo,
    BenchmarkStatus,
    BenchmarkView,
    EngineFamilyView,
    EngineParameterView,
    HardwareTypeView,
    HostView,
    InstanceView,
    OfferView,
    Progress,
    RegisteredInstance,
    StoredModelView,
    TensorView,
)
from vlab_backend.engines import engine_specs
from vlab_backend.store.schema import (
    ApiToken,
    Benchmark,
    EngineFamily,
    EngineParameter,
    EngineParameterLink,
    HardwareType,
    Host,
    Status,
    StoredModel,
    TargetInstance,
    User,
)
from vlab_backend.submission import model_ref


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _progress(bench: Benchmark) -> Progress:
    return Progress(phase=bench.progress_phase, done=bench.progress_done,
                    total=bench.progress_total)


def benchmark_view(bench: Benchmark) -> BenchmarkView:
    return BenchmarkView(
        id=bench.id, status=Status(bench.status), message=bench.message,
        device=bench.target_type, platform=bench.target_type, engine=bench.engine,
        benchmark_type=bench.benchmark_type,
        nb_inference=bench.nb_inference, target_uid=bench.target_uid,
        model=bench.model_filename, model_sha256=bench.model_sha256,
        dataset_name=bench.dataset_name, parameters=bench.parameters, public=bench.public,
        progress=_progress(bench), artifacts=bench.artifacts, metrics=bench.metrics,
        created_at=_iso(bench.created_at), started_at=_iso(bench.started_at),
        finished_at=_iso(bench.finished_at),
        name=bench.name or "", tags=list(bench.tags or []), notes=bench.notes or "")


def benchmark_status(bench: Benchmark) -> BenchmarkStatus:
    return BenchmarkStatus(id=bench.id, status=Status(bench.status), message=bench.message,
                           progress=_progress(bench))


def instance_view(instance: TargetInstance, running: str | None) -> InstanceView:
    return InstanceView(
        target_uid=instance.uid, target=instance.target_type, host=instance.host,
        cpuset=instance.cpuset, memory=instance.memory, enabled=instance.enabled,
        engines={name: OfferView(version=offer.get("version", ""),
                                 supported_types=offer.get("supported_types", []))
                 for name, offer in instance.engines.items()},
        state="busy" if running else "free", benchmark_id=running)


def _tensors(items: list[dict[str, Any]]) -> list[TensorView]:
    return [TensorView.model_validate(item) for item in items]


def model_view(model: StoredModel, user: User) -> StoredModelView:
    info = model.info or {}
    owned = model.owner_id == user.id
    return StoredModelView(
        model=model_ref(model), filename=model.filename, format=model.format, size=model.size,
        sha256=model.sha256, public=model.public, owned=owned,
        platform="user_models" if owned else "public",
        inputs=_tensors(info.get("inputs", [])), outputs=_tensors(info.get("outputs", [])),
        nb_parameters=info.get("nb_parameters"), flops=info.get("flops"),
        opset=info.get("opset"), created_at=model.created_at.isoformat(),
        lineage=info.get("lineage"))


def token_info(row: ApiToken) -> ApiTokenInfo:
    return ApiTokenInfo(id=row.id, name=row.name, created_at=row.created_at.isoformat(),
                        revoked=row.revoked)


def host_view(host: Host) -> HostView:
    return HostView(name=host.name, public_key=host.public_key, endpoint=host.endpoint,
                    mesh_address=host.mesh_address, minimal=host.minimal, targets=host.targets)


def hardware_type_view(row: HardwareType, session: Session) -> HardwareTypeView:
    instances = session.scalars(select(TargetInstance.uid).where(
        TargetInstance.target_type == row.name)).all()
    return HardwareTypeView(name=row.name, display_name=row.display_name or row.name,
                            description=row.description, instances=len(instances))


def engine_view(row: EngineFamily, session: Session) -> EngineFamilyView:
    keys = session.scalars(select(EngineParameter.key).join(
        EngineParameterLink, EngineParameterLink.parameter_id == EngineParameter.id).where(
        EngineParameterLink.engine == row.name).order_by(EngineParameter.key)).all()
    return EngineFamilyView(name=row.name, display_name=row.display_name or row.name,
                            description=row.description,
                            supported_file_extensions=row.supported_file_extensions,
                            parameters=list(keys), builtin=row.name in engine_specs())


def registered_instance_view(row: TargetInstance) -> RegisteredInstance:
    return RegisteredInstance(
        inventory_id=row.uid, target_uid=row.uid, hardware_type_id=row.target_type,
        engine_ids=row.registered_engines or sorted(row.engines), notes=row.notes,
        serial_number=row.serial_number, attached=row.enabled, host=row.host)


def parameter_view(row: EngineParameter, session: Session) -> EngineParameterView:
    engines = session.scalars(select(EngineParameterLink.engine).where(
        EngineParameterLink.parameter_id == row.id).order_by(EngineParameterLink.engine)).all()
    return EngineParameterView(id=row.id, key=row.key, display_name=row.display_name or row.key,
                               description=row.description, type=row.type,
                               default_values=row.default_values, engines=list(engines),
                               builtin=row.builtin)
