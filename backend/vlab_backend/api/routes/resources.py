"""The dAIEdge resource endpoints (`ResourceConfigurator`): target types, engines, registered
target instances and engine parameters. Reading is open to users; changes need an admin."""

from __future__ import annotations

import re
import secrets
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from vlab_backend.api.state import AdminDep, StateDep, UserDep
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

router = APIRouter(prefix="/api/targets", tags=["resources"])
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check_name(name: str, what: str) -> str:
    if not NAME.fullmatch(name):
        raise HTTPException(400, f"{what} {name!r} must be 1-100 letters, digits, '-', '_' or "
                                 "'.', starting with a letter or digit")
    return name


class HardwareTypeBody(BaseModel):
    name: str
    display_name: str = ""
    description: str = ""


class EngineBody(BaseModel):
    name: str
    display_name: str = ""
    description: str = ""
    supported_file_extensions: list[str] = Field(default_factory=list)


class InstanceBody(BaseModel):
    hardware_type_id: str
    engine_ids: list[str] = Field(default_factory=list)
    notes: str = ""
    serial_number: str = ""


class ParameterBody(BaseModel):
    key: str
    display_name: str = ""
    description: str = ""
    type: str = "string"
    default_values: Any = ""


@router.get("/status")
def resources_status() -> dict[str, str]:
    return {"status": "ok"}


# -- target types ------------------------------------------------------------------------------
def _type_view(row: HardwareType, session: Session) -> dict[str, Any]:
    instances = session.scalars(select(TargetInstance.uid).where(
        TargetInstance.target_type == row.name)).all()
    return {"name": row.name, "display_name": row.display_name or row.name,
            "description": row.description, "instances": len(instances)}


@router.get("/hardware-types/all")
def hardware_types(state: StateDep) -> list[dict[str, Any]]:
    with state.db.session() as session:
        rows = session.scalars(select(HardwareType).order_by(HardwareType.name)).all()
        return [_type_view(r, session) for r in rows]


@router.post("/hardware-types", status_code=201)
def create_hardware_type(body: HardwareTypeBody, state: StateDep,
                         _admin: AdminDep) -> dict[str, Any]:
    name = _check_name(body.name, "hardware type")
    with state.db.session() as session:
        if session.get(HardwareType, name) is not None:
            raise HTTPException(409, f"hardware type {name} already exists")
        row = HardwareType(name=name, display_name=body.display_name or name,
                           description=body.description)
        session.add(row)
        session.flush()
        return _type_view(row, session)


@router.delete("/hardware-types/{name}")
def delete_hardware_type(name: str, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        row = session.get(HardwareType, name)
        if row is None:
            raise HTTPException(404, f"no hardware type {name}")
        if session.scalar(select(TargetInstance.uid).where(TargetInstance.target_type == name)):
            raise HTTPException(409, f"hardware type {name} still has instances")
        session.delete(row)
    return {"name": name, "deleted": True}


# -- engines -----------------------------------------------------------------------------------
def _engine_view(row: EngineFamily, session: Session) -> dict[str, Any]:
    keys = session.scalars(select(EngineParameter.key).join(
        EngineParameterLink, EngineParameterLink.parameter_id == EngineParameter.id).where(
        EngineParameterLink.engine == row.name).order_by(EngineParameter.key)).all()
    return {"name": row.name, "display_name": row.display_name or row.name,
            "description": row.description,
            "supported_file_extensions": row.supported_file_extensions,
            "parameters": list(keys), "builtin": row.name in engine_specs()}


@router.get("/engines/all")
def engines(state: StateDep) -> list[dict[str, Any]]:
    with state.db.session() as session:
        rows = session.scalars(select(EngineFamily).order_by(EngineFamily.name)).all()
        return [_engine_view(r, session) for r in rows]


@router.post("/engines", status_code=201)
def create_engine(body: EngineBody, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    name = _check_name(body.name, "engine")
    extensions = [e if e.startswith(".") else f".{e}" for e in body.supported_file_extensions]
    if not all(re.fullmatch(r"\.[A-Za-z0-9]{1,16}", e) for e in extensions):
        raise HTTPException(400, "supported_file_extensions must look like '.tflite'")
    with state.db.session() as session:
        if session.get(EngineFamily, name) is not None:
            raise HTTPException(409, f"engine {name} already exists")
        row = EngineFamily(name=name, display_name=body.display_name or name,
                           description=body.description,
                           supported_file_extensions=[e.lower() for e in extensions])
        session.add(row)
        session.flush()
        return _engine_view(row, session)


@router.delete("/engines/{name}")
def delete_engine(name: str, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    if name in engine_specs():
        raise HTTPException(409, f"engine {name} is built in and cannot be deleted")
    with state.db.session() as session:
        row = session.get(EngineFamily, name)
        if row is None:
            raise HTTPException(404, f"no engine {name}")
        offered = [i.uid for i in session.scalars(select(TargetInstance)) if name in i.engines
                   and i.enabled]
        if offered:
            raise HTTPException(409, f"engine {name} is offered by {', '.join(offered)}")
        for link in session.scalars(select(EngineParameterLink).where(
                EngineParameterLink.engine == name)):
            session.delete(link)
        session.delete(row)
    return {"name": name, "deleted": True}


# -- registered instances ----------------------------------------------------------------------
def _instance_view(row: TargetInstance) -> dict[str, Any]:
    return {"inventory_id": row.uid, "target_uid": row.uid, "hardware_type_id": row.target_type,
            "engine_ids": row.registered_engines or sorted(row.engines),
            "notes": row.notes, "serial_number": row.serial_number,
            "attached": row.enabled, "host": row.host}


@router.post("/hardware-instances", status_code=201)
def create_instance(body: InstanceBody, state: StateDep, admin: AdminDep) -> dict[str, Any]:
    """Register a target instance; its `inventory_id` is the `target_uid` its host's target
    configuration must use."""
    with state.db.session() as session:
        if session.get(HardwareType, body.hardware_type_id) is None:
            raise HTTPException(404, f"no hardware type {body.hardware_type_id}")
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
        return _instance_view(row)


@router.get("/hardware-instances")
def my_instances(state: StateDep, user: UserDep) -> list[dict[str, Any]]:
    with state.db.session() as session:
        query = select(TargetInstance).order_by(TargetInstance.uid)
        if not user.is_admin:
            query = query.where(TargetInstance.owner_id == user.id)
        return [_instance_view(r) for r in session.scalars(query)]


def _visible_instance(session: Session, user: User, inventory_id: str) -> TargetInstance:
    row = session.get(TargetInstance, inventory_id)
    if row is None or (not user.is_admin and row.owner_id != user.id):
        raise HTTPException(404, f"no hardware instance {inventory_id}")
    return row


@router.delete("/hardware-instances/{inventory_id}")
def delete_instance(inventory_id: str, state: StateDep, admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        row = _visible_instance(session, admin, inventory_id)
        if row.enabled:
            raise HTTPException(409, f"{inventory_id} is attached to a host; remove it from "
                                     "that host's target configuration first")
        session.delete(row)
    return {"inventory_id": inventory_id, "deleted": True}


@router.get("/hardware-instances/{inventory_id}/default-config")
def default_config(inventory_id: str, state: StateDep, user: UserDep) -> dict[str, Any]:
    """The target-configuration entry a host declares this instance with."""
    with state.db.session() as session:
        row = _visible_instance(session, user, inventory_id)
        engine_names = row.registered_engines or sorted(row.engines)
        engines_config = {name: {"version": "", "image": "",
                                 "supported_types": ["TYPE1", "TYPE2"], "devices": [],
                                 "volumes": [], "env": {}} for name in engine_names}
        entry = {"target_uid": row.uid, "memory": row.memory or {"storage": 0, "ram": 0},
                 "engines": engines_config}
        return {row.target_type: [entry]}


# -- engine parameters -------------------------------------------------------------------------
def _parameter_view(row: EngineParameter, session: Session) -> dict[str, Any]:
    engines_ = session.scalars(select(EngineParameterLink.engine).where(
        EngineParameterLink.parameter_id == row.id).order_by(EngineParameterLink.engine)).all()
    return {"id": row.id, "key": row.key, "display_name": row.display_name or row.key,
            "description": row.description, "type": row.type,
            "default_values": row.default_values, "engines": list(engines_),
            "builtin": row.builtin}


def _validated(body: ParameterBody) -> ParameterBody:
    _check_name(body.key, "parameter key")
    if body.type not in PARAMETER_TYPES:
        raise HTTPException(400, f"type must be one of {', '.join(PARAMETER_TYPES)}")
    if body.type == "enum" and not (isinstance(body.default_values, list)
                                    and body.default_values):
        raise HTTPException(400, "an enum parameter needs default_values: the list of choices")
    return body


@router.get("/engine-parameters/all")
def all_parameters(state: StateDep, _user: UserDep) -> list[dict[str, Any]]:
    with state.db.session() as session:
        rows = session.scalars(select(EngineParameter).order_by(EngineParameter.key)).all()
        return [_parameter_view(r, session) for r in rows]


@router.get("/engine-parameters")
def my_parameters(state: StateDep, user: UserDep) -> list[dict[str, Any]]:
    with state.db.session() as session:
        rows = session.scalars(select(EngineParameter).where(
            EngineParameter.owner_id == user.id).order_by(EngineParameter.key)).all()
        return [_parameter_view(r, session) for r in rows]


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
def create_parameter(body: ParameterBody, state: StateDep, admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        return _parameter_view(_create_parameter(session, body, admin), session)


def _engine_row(session: Session, name: str) -> EngineFamily:
    row = session.get(EngineFamily, name)
    if row is None:
        raise HTTPException(404, f"no engine {name}")
    return row


@router.post("/engines/{engine}/parameters", status_code=201)
def create_and_attach(engine: str, body: ParameterBody, state: StateDep,
                      admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        _engine_row(session, engine)
        row = _create_parameter(session, body, admin)
        session.add(EngineParameterLink(engine=engine, parameter_id=row.id))
        session.flush()
        return _parameter_view(row, session)


def _parameter_row(session: Session, ident: str) -> EngineParameter:
    row = find_parameter(session, ident)
    if row is None:
        raise HTTPException(404, f"no engine parameter {ident}")
    return row


@router.get("/engine-parameters/{ident}")
def get_parameter(ident: str, state: StateDep, _user: UserDep) -> dict[str, Any]:
    with state.db.session() as session:
        return _parameter_view(_parameter_row(session, ident), session)


@router.patch("/engine-parameters/{ident}")
def update_parameter(ident: str, body: ParameterBody, state: StateDep,
                     _admin: AdminDep) -> dict[str, Any]:
    body = _validated(body)
    with state.db.session() as session:
        row = _parameter_row(session, ident)
        if row.builtin and (body.key != row.key or body.type != row.type):
            raise HTTPException(409, f"{row.key} is built in: its key and type are fixed")
        other = find_parameter(session, body.key)
        if other is not None and other.id != row.id:
            raise HTTPException(409, f"parameter {body.key} already exists")
        row.key, row.type = body.key, body.type
        row.display_name = body.display_name or body.key
        row.description = body.description
        row.default_values = default_values_text(body.default_values)
        return _parameter_view(row, session)


@router.delete("/engine-parameters/{ident}")
def delete_parameter(ident: str, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        row = _parameter_row(session, ident)
        if row.builtin:
            raise HTTPException(409, f"{row.key} is built in and cannot be deleted")
        for link in session.scalars(select(EngineParameterLink).where(
                EngineParameterLink.parameter_id == row.id)):
            session.delete(link)
        session.delete(row)
    return {"key": ident, "deleted": True}


@router.post("/engines/{engine}/parameters/{ident}")
def attach(engine: str, ident: str, state: StateDep, _admin: AdminDep) -> JSONResponse:
    with state.db.session() as session:
        _engine_row(session, engine)
        row = _parameter_row(session, ident)
        exists = session.scalar(select(EngineParameterLink).where(
            EngineParameterLink.engine == engine, EngineParameterLink.parameter_id == row.id))
        if exists is None:
            session.add(EngineParameterLink(engine=engine, parameter_id=row.id))
        return JSONResponse({"engine": engine, "parameter": row.key, "attached": True})


@router.delete("/engines/{engine}/parameters/{ident}")
def detach(engine: str, ident: str, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        _engine_row(session, engine)
        row = _parameter_row(session, ident)
        link = session.scalar(select(EngineParameterLink).where(
            EngineParameterLink.engine == engine, EngineParameterLink.parameter_id == row.id))
        if link is None:
            raise HTTPException(404, f"{row.key} is not attached to {engine}")
        session.delete(link)
    return {"engine": engine, "parameter": row.key, "attached": False}
