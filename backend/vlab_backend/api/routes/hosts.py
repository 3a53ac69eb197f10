"""Hosts of the cluster: registration by the host SDK, the mesh view for `vlab vpn sync`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from vlab_backend.api.state import AdminDep, StateDep
from vlab_backend.hosts.mesh import next_address, valid_public_key
from vlab_backend.store.schema import Host

router = APIRouter(prefix="/api/hosts", tags=["hosts"])
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class HostBody(BaseModel):
    name: str
    public_key: str
    endpoint: str = ""
    minimal: bool = False
    targets: list[str] = Field(default_factory=list)


def host_view(host: Host) -> dict[str, Any]:
    return {"name": host.name, "public_key": host.public_key, "endpoint": host.endpoint,
            "mesh_address": host.mesh_address, "minimal": host.minimal,
            "targets": host.targets}


@router.post("", status_code=201)
def register_host(body: HostBody, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    """Register a host (or update its key, endpoint and targets); it keeps its mesh address."""
    if not HOST_NAME.fullmatch(body.name):
        raise HTTPException(400, f"host name {body.name!r} must be letters, digits, '-', '_' "
                                 "or '.'")
    if not valid_public_key(body.public_key):
        raise HTTPException(400, "public_key must be a base64 WireGuard (X25519) public key")
    for _attempt in range(5):  # a concurrent registration may take the same address
        try:
            with state.db.session() as session:
                host = session.scalar(select(Host).where(Host.name == body.name))
                if host is None:
                    used = session.scalars(select(Host.mesh_address)).all()
                    host = Host(name=body.name, mesh_address=next_address(used))
                    session.add(host)
                host.public_key, host.endpoint = body.public_key, body.endpoint
                host.minimal, host.targets = body.minimal, list(body.targets)
                session.flush()
                return host_view(host)
        except IntegrityError:
            continue
    raise HTTPException(409, "could not allocate a mesh address; try again")


@router.get("")
def list_hosts(state: StateDep, _admin: AdminDep) -> list[dict[str, Any]]:
    with state.db.session() as session:
        return [host_view(h) for h in session.scalars(select(Host).order_by(Host.name))]


@router.delete("/{name}")
def remove_host(name: str, state: StateDep, _admin: AdminDep) -> dict[str, Any]:
    with state.db.session() as session:
        host = session.scalar(select(Host).where(Host.name == name))
        if host is None:
            raise HTTPException(404, f"no host {name}")
        session.delete(host)
    return {"name": name, "deleted": True}
