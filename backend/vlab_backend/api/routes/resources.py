"""The dAIEdge resource endpoints (`ResourceConfigurator`): target types, engines, registered
target instances and engine parameters. Reading is open to users; changes need an admin."""

from __future__ import annotations

import re
import secrets

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from vlab_backend.api.deps import (
    get_engine_or_404,
    get_hardware_type_or_404,
    get_instance_or_404,
    get_parameter_or_404,
)
from vlab_backend.api.schemas import (
    ERRORS,
    Deleted,
    EngineBody,
    EngineConfigEntry,
    EngineFamilyView,
    EngineParameterView,
    HardwareTypeBody,
    HardwareTypeView,
    InstanceBody,
    InstanceDeleted,
    ParameterBody,
    ParameterDeleted,
    ParameterLink,
    RegisteredInstance,
    ResourcesStatus,
    TargetConfigEntry,
    TargetConfiguration,
)
from vlab_backend.api.state import AdminDep, SessionDep, UserDep
from vlab_backend.api.views import (
    engine_view,
    hardware_type_view,
    parameter_view,
    registered_instance_view,
)
from vlab_backend.catalog import default_values_text, find_parameter
from vlab_backend.engines import engine_specs
from vlab_backend.engines.base import PARAMETER_TYPES
from vlab_backend.store.schema import (
    EngineFamily,
    EngineParameter,
    EngineParameterLink,
    HardwareType,
    TargetInstance,
    User,
)

router = APIRouter(prefix="/api/targets", tags=["resources"], responses=ERRORS)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check_name(name: str, what: str) -> str:
    if not NAME.fullmatch(name):
        raise HTTPException(400, f"{what} {name!r} must be 1-100 letters, digits, '-', '_' or "
                                 "'.', starting with a letter or digit")
    return name


@router.get("/status")
def resources_status() -> ResourcesStatus:
    return ResourcesStatus(status="ok")


# -- target types ------------------------------------------------------------------------------
@router.get("/hardware-types/all")
def hardware_types(session: SessionDep) -> list[HardwareTypeView]:
    rows = session.scalars(select(HardwareType).order_by(HardwareType.name)).all()
    return [hardware_type_view(r, session) for r in rows]


@router.post("/hardware-types", status_code=201)
def create_hardware_type(body: HardwareTypeBody, session: SessionDep,
                         _admin: AdminDep) -> HardwareTypeView:
    name = _check_name(body.name, "hardware type")
    if session.get(HardwareType, name) is not None:
        raise HTTPException(409, f"hardware type {name} already exists")
    row = HardwareType(name=name, display_name=body.display_name or name,
                       description=body.description)
    session.add(row)
    session.flush()
    return hardware_type_view(row, session)


@router.delete("/hardware-types/{name}")
def delete_hardware_type(name: str, session: SessionDep, _admin: AdminDep) -> Deleted:
    row = get_hardware_type_or_404(session, name)
    if session.scalar(select(TargetInstance.uid).where(TargetInstance.target_type == name)):
        raise HTTPException(409, f"hardware type {name} still has instances")
    session.delete(row)
    return Deleted(name=name, deleted=True)


# -- engines -----------------------------------------------------------------------------------
@router.get("/engines/all")
def engines(session: SessionDep) -> list[EngineFamilyView]:
    rows = session.scalars(select(EngineFamily).order_by(EngineFamily.name)).all()
    return [engine_view(r, session) for r in rows]


@router.post("/engines", status_code=201)
def create_engine(body: EngineBody, session: SessionDep, _admin: AdminDep) -> EngineFamilyView:
    name = _check_name(body.name, "engine")
    extensions = [e if e.startswith(".") else f".{e}" for e in body.supported_file_extensions]
    if not all(re.fullmatch(r"\.[A-Za-z0-9]{1,16}", e) for e in extensions):
        raise HTTPException(400, "supported_file_extensions must look like '.tflite'")
    if session.get(EngineFamily, name) is not None:
        raise HTTPException(409, f"engine {name} already exists")
    row = EngineFamily(name=name, display_name=body.display_name or name,
                       description=body.description,
                       supported_file_extensions=[e.lower() for e in extensions])
    session.add(row)
    session.flush()
    return engine_view(row, session)


@router.delete("/engines/{name}")
def delete_engine(name: str, session: SessionDep, _admin: AdminDep) -> Deleted:
    if name in engine_specs():
        raise HTTPException(409, f"engine {name} is built in and cannot be deleted")
    row = get_engine_or_404(session, name)
    offered = [i.uid for i in session.scalars(select(TargetInstance)) if name in i.engines
               and i.enabled]
    if offered:
        raise HTTPException(409, f"engine {name} is offered by {', '.join(offered)}")
    for link in session.scalars(select(EngineParameterLink).where(
            EngineParameterLink.engine == name)):
        session.delete(link)
    session.delete(row)
    return Deleted(name=name, deleted=True)


# -- registered instances ----------------------------------------------------------------------
@router.post("/hardware-instances", status_code=201)
def create_instance(body: InstanceBody, session: SessionDep,
                    admin: AdminDep) -> RegisteredInstance:
    """Register a target instance; its `inventory_id` is the `target_uid` its host's target
    configuration must use."""
    get_hardware_type_or_404(session, body.hardware_type_id)
    missing = [e for e in body.engine_ids if session.get(EngineFamily, e) is None]
    if missing:
        raise HTTPException(404, f"no engine(s) {', '.join(missing)}")
    uid = f"{body.hardware_type_id}-{secrets.token_hex(2)}-{secrets.token_hex(2)}"
    row = TargetInstance(uid=uid, target_type=body.hardware_type_id, host="", engines={},
                         enabled=False, owner_id=admin.id, notes=body.notes[:2000],
                         serial_number=body.serial_number[:200],
                         registered_engines=list(body.engine_ids))
    session.add(row)
    session.flush()
    return registered_instance_view(row)


@router.get("/hardware-instances")
def my_instances(session: SessionDep, user: UserDep) -> list[RegisteredInstance]:
    query = select(TargetInstance).order_by(TargetInstance.uid)
    if not user.is_admin:
        query = query.where(TargetInstance.owner_id == user.id)
    return [registered_instance_view(r) for r in session.scalars(query)]


@router.delete("/hardware-instances/{inventory_id}")
def delete_instance(inventory_id: str, session: SessionDep, admin: AdminDep) -> InstanceDeleted:
    row = get_instance_or_404(session, admin, inventory_id)
    if row.enabled:
        raise HTTPException(409, f"{inventory_id} is attached to a host; remove it from "
                                 "that host's target configuration first")
    session.delete(row)
    return InstanceDeleted(inventory_id=inventory_id, deleted=True)


@router.get("/hardware-instances/{inventory_id}/default-config")
def default_config(inventory_id: str, session: SessionDep,
                   user: UserDep) -> TargetConfiguration:
    """The target-configuration entry a host declares this instance with."""
    row = get_instance_or_404(session, user, inventory_id)
    engine_names = row.registered_engines or sorted(row.engines)
    engines_config = {name: EngineConfigEntry(version="", image="",
                                              supported_types=["TYPE1", "TYPE2"], devices=[],
                                              volumes=[], env={}) for name in engine_names}
    entry = TargetConfigEntry(target_uid=row.uid,
                              memory=row.memory or {"storage": 0, "ram": 0},
                              engines=engines_config)
    return TargetConfiguration({row.target_type: [entry]})


# -- engine parameters -------------------------------------------------------------------------
def _validated(body: ParameterBody) -> ParameterBody:
    _check_name(body.key, "parameter key")
    if body.type not in PARAMETER_TYPES:
        raise HTTPException(400, f"type must be one of {', '.join(PARAMETER_TYPES)}")
    if body.type == "enum" and not (isinstance(body.default_values, list)
                                    and body.default_values):
        raise HTTPException(400, "an enum parameter needs default_values: the list of choices")
    return body


@router.get("/engine-parameters/all")
def all_parameters(session: SessionDep, _user: UserDep) -> list[EngineParameterView]:
    rows = session.scalars(select(EngineParameter).order_by(EngineParameter.key)).all()
    return [parameter_view(r, session) for r in rows]


@router.get("/engine-parameters")
def my_parameters(session: SessionDep, user: UserDep) -> list[EngineParameterView]:
    rows = session.scalars(select(EngineParameter).where(
        EngineParameter.owner_id == user.id).order_by(EngineParameter.key)).all()
    return [parameter_view(r, session) for r in rows]


@router.get("/engine-parameter-types")
def parameter_types(_user: UserDep) -> list[str]:
    return list(PARAMETER_TYPES)


def _create_parameter(session: Session, body: ParameterBody, owner: User) -> EngineParameter:
    body = _validated(body)
    if find_parameter(session, body.key) is not None:
        raise HTTPException(409, f"parameter {body.key} already exists")
    row = EngineParameter(key=body.key, display_name=body.display_name or body.key,
                          description=body.description, type=body.type,
                          default_values=default_values_text(body.default_values),
                          owner_id=owner.id)
    session.add(row)
    session.flush()
    return row


@router.post("/engine-parameters", status_code=201)
def create_parameter(body: ParameterBody, session: SessionDep,
                     admin: AdminDep) -> EngineParameterView:
    return parameter_view(_create_parameter(session, body, admin), session)


@router.post("/engines/{engine}/parameters", status_code=201)
def create_and_attach(engine: str, body: ParameterBody, session: SessionDep,
                      admin: AdminDep) -> EngineParameterView:
    get_engine_or_404(session, engine)
    row = _create_parameter(session, body, admin)
    session.add(EngineParameterLink(engine=engine, parameter_id=row.id))
    session.flush()
    return parameter_view(row, session)


@router.get("/engine-parameters/{ident}")
def get_parameter(ident: str, session: SessionDep, _user: UserDep) -> EngineParameterView:
    return parameter_view(get_parameter_or_404(session, ident), session)


@router.patch("/engine-parameters/{ident}")
def update_parameter(ident: str, body: ParameterBody, session: SessionDep,
                     _admin: AdminDep) -> EngineParameterView:
    body = _validated(body)
    row = get_parameter_or_404(session, ident)
    if row.builtin and (body.key != row.key or body.type != row.type):
        raise HTTPException(409, f"{row.key} is built in: its key and type are fixed")
    other = find_parameter(session, body.key)
    if other is not None and other.id != row.id:
        raise HTTPException(409, f"parameter {body.key} already exists")
    row.key, row.type = body.key, body.type
    row.display_name = body.display_name or body.key
    row.description = body.description
    row.default_values = default_values_text(body.default_values)
    return parameter_view(row, session)


@router.delete("/engine-parameters/{ident}")
def delete_parameter(ident: str, session: SessionDep, _admin: AdminDep) -> ParameterDeleted:
    row = get_parameter_or_404(session, ident)
    if row.builtin:
        raise HTTPException(409, f"{row.key} is built in and cannot be deleted")
    for link in session.scalars(select(EngineParameterLink).where(
            EngineParameterLink.parameter_id == row.id)):
        session.delete(link)
    session.delete(row)
    return ParameterDeleted(key=ident, deleted=True)


def _link(session: Session, engine: str, ident: str) -> tuple[EngineParameter,
                                                              EngineParameterLink | None]:
    """The parameter `ident` and its link to `engine` (None if not attached); 404 for an
    unknown engine or parameter."""
    get_engine_or_404(session, engine)
    row = get_parameter_or_404(session, ident)
    link = session.scalar(select(EngineParameterLink).where(
        EngineParameterLink.engine == engine, EngineParameterLink.parameter_id == row.id))
    return row, link


@router.post("/engines/{engine}/parameters/{ident}")
def attach(engine: str, ident: str, session: SessionDep, _admin: AdminDep) -> ParameterLink:
    row, link = _link(session, engine, ident)
    if link is None:
        session.add(EngineParameterLink(engine=engine, parameter_id=row.id))
    return ParameterLink(engine=engine, parameter=row.key, attached=True)


@router.delete("/engines/{engine}/parameters/{ident}")
def detach(engine: str, ident: str, session: SessionDep, _admin: AdminDep) -> ParameterLink:
    row, link = _link(session, engine, ident)
    if link is None:
        raise HTTPException(404, f"{row.key} is not attached to {engine}")
    session.delete(link)
    return ParameterLink(engine=engine, parameter=row.key, attached=False)
