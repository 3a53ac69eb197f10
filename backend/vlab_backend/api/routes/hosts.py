"""Hosts of the cluster: registration by the host SDK, the mesh view for `vlab vpn sync`."""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from vlab_backend.api.deps import get_host_or_404
from vlab_backend.api.schemas import ERRORS, Deleted, HostBody, HostView
from vlab_backend.api.state import AdminDep, SessionDep, StateDep
from vlab_backend.api.views import host_view
from vlab_backend.hosts.mesh import next_address, valid_public_key
from vlab_backend.store.schema import Host

router = APIRouter(prefix="/api/hosts", tags=["hosts"], responses=ERRORS)
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@router.post("", status_code=201)
def register_host(body: HostBody, state: StateDep, _admin: AdminDep) -> HostView:
    """Register a host (or update its key, endpoint and targets); it keeps its mesh address."""
    if not HOST_NAME.fullmatch(body.name):
        raise HTTPException(400, f"host name {body.name!r} must be letters, digits, '-', '_' "
                                 "or '.'")
    if not valid_public_key(body.public_key):
        raise HTTPException(400, "public_key must be a base64 WireGuard (X25519) public key")
    for _attempt in range(5):  # a concurrent registration may take the same address
        try:
            # A transaction per attempt, hence no request session here.
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
def list_hosts(session: SessionDep, _admin: AdminDep) -> list[HostView]:
    return [host_view(h) for h in session.scalars(select(Host).order_by(Host.name))]


@router.delete("/{name}")
def remove_host(name: str, session: SessionDep, _admin: AdminDep) -> Deleted:
    session.delete(get_host_or_404(session, name))
    return Deleted(name=name, deleted=True)
