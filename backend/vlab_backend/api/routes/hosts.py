"""Hosts of the cluster: registration by the host SDK (with the host's whole target
configuration, which becomes its target instances), the mesh view for `vlab vpn sync`, and the
host's node state.

Two kinds of caller: an administrator, and a host with its host-scoped credential
(`vlabhost_...`, issued when an administrator registers the host): that one may read the mesh
peer list and register or update its own host, nothing else."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from vlab_backend.api.deps import get_host_or_404
from vlab_backend.api.schemas import ERRORS, Deleted, HostView
from vlab_backend.api.state import StateDep, current_user
from vlab_backend.api.views import host_view
from vlab_backend.auth import (
    HOST_TOKEN_PREFIX,
    AuthError,
    host_of_credential,
    issue_host_credential,
)
from vlab_backend.hosts.mesh import MAX_ENDPOINT, valid_endpoint, valid_public_key
from vlab_backend.hosts.registry import (
    HOST_STATES,
    ROLES,
    Registration,
    RegistrationConflict,
    RegistrationError,
    mark_host_state,
    register_host,
    remove_host,
)
from vlab_backend.store.schema import Host, TargetInstance

router = APIRouter(prefix="/api/hosts", tags=["hosts"], responses=ERRORS)
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
# A transaction that lost a deadlock or a serialization check is run again.
TRANSACTION_ATTEMPTS = 5
HOSTS_EVENT_KEY = "hosts"  # the EventHub key of target-board refreshes from host changes

Role = Literal["services", "targets"]
HostState = Literal["ready", "initializing", "down", "disconnected", "draining", "ineligible"]
assert set(ROLES) == set(get_args(Role)) and set(HOST_STATES) == set(get_args(HostState))


class HostRegistration(BaseModel):
    """What `vlab host init` sends. `target_config` is the host's dAIEdge target
    configuration (keyed by target type, every engine with its `image`): each entry becomes a
    target instance on this host. Older clients send only `targets` (the uids) and `minimal`."""

    name: str = Field(max_length=200)
    public_key: str = Field(max_length=64)
    endpoint: str = Field(default="", max_length=MAX_ENDPOINT,
                          description="public HOST:PORT of its WireGuard (a DNS name, an IPv4 "
                                      "address or [IPv6], port 1-65535); empty: it dials out")
    role: Role | None = Field(default=None, description="default: 'targets' when `minimal`, "
                                                        "else 'services'")
    minimal: bool = False
    target_config: dict[str, Any] | None = None
    targets: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list,
                                                                  max_length=10_000)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        # It is written into every peer's WireGuard configuration: HOST:PORT and nothing else.
        if value and not valid_endpoint(value):
            raise ValueError("must be HOST:PORT (a DNS name, an IPv4 address or [IPv6], port "
                             "1-65535), without whitespace or control characters")
        return value


class HostDetail(HostView):
    role: str
    state: str = Field(description="its Nomad node's state: ready, initializing, down, "
                                   "disconnected, draining or ineligible")
    instances: dict[str, str] = Field(description="target_uid -> instance state")
    target_config: dict[str, Any]


class HostRegistered(HostDetail):
    host_token: str | None = Field(
        default=None, description="the host-scoped credential, issued when an administrator "
        "registers the host (the previous one stops working); shown once")


class HostStateBody(BaseModel):
    state: HostState


@dataclass
class Caller:
    """An administrator (`host` None) or a registered host."""

    host: str | None


_bearer = HTTPBearer(auto_error=False)


def admin_or_host(state: StateDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None,
                                         Depends(_bearer)]) -> Caller:
    if credentials is not None and credentials.credentials.startswith(HOST_TOKEN_PREFIX):
        with state.db.session() as session:
            try:
                return Caller(host=host_of_credential(session, credentials.credentials).name)
            except AuthError as exc:
                raise HTTPException(401, str(exc),
                                    headers={"WWW-Authenticate": "Bearer"}) from exc
    user = current_user(state, credentials)
    if not user.is_admin:
        raise HTTPException(403, "this action needs an administrator or the host's credential")
    return Caller(host=None)


def admin_only(caller: Annotated[Caller, Depends(admin_or_host)]) -> Caller:
    if caller.host is not None:
        raise HTTPException(403, "a host credential may only read the mesh and register its "
                                 "own host")
    return caller


CallerDep = Annotated[Caller, Depends(admin_or_host)]
AdminOnlyDep = Annotated[Caller, Depends(admin_only)]


def host_detail(session: Any, host: Host, token: str | None = None) -> HostRegistered:
    rows = session.scalars(select(TargetInstance).where(
        TargetInstance.host_id == host.id).order_by(TargetInstance.uid)).all()
    return HostRegistered(**host_view(host).model_dump(), role=host.role, state=host.state,
                          instances={row.uid: row.state for row in rows},
                          target_config=host.target_config or {}, host_token=token)


@router.post("", status_code=201)
def register(body: HostRegistration, state: StateDep, caller: CallerDep) -> HostRegistered:
    """Register a host, or update it: key, endpoint, role and target configuration; it keeps
    its mesh address. Its target instances are upserted (those it no longer declares are
    detached) and scheduled while its node is ready. Idempotent and safe to run in parallel."""
    if caller.host is not None and caller.host != body.name:
        raise HTTPException(403, f"this credential belongs to host {caller.host}")
    if not HOST_NAME.fullmatch(body.name):
        raise HTTPException(400, f"host name {body.name!r} must be letters, digits, '-', '_' "
                                 "or '.'")
    if not valid_public_key(body.public_key):
        raise HTTPException(400, "public_key must be a base64 WireGuard (X25519) public key")
    registration = Registration(
        name=body.name, public_key=body.public_key, endpoint=body.endpoint,
        role=body.role or ("targets" if body.minimal else "services"),
        target_config=body.target_config, targets=list(body.targets))
    for attempt in range(TRANSACTION_ATTEMPTS):
        try:
            # A transaction per attempt, hence no request session here.
            with state.db.session() as session:
                host = register_host(session, registration, admin=caller.host is None)
                token = issue_host_credential(host) if caller.host is None else None
                session.flush()
                answer = host_detail(session, host, token)
            break
        except RegistrationError as exc:
            raise HTTPException(400, str(exc)) from None
        except RegistrationConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except OperationalError:  # a deadlock, or SQLite's lock wait ran out: once more
            if attempt == TRANSACTION_ATTEMPTS - 1:
                raise
    state.hub.publish(HOSTS_EVENT_KEY, {"event": "targets"})
    return answer


@router.get("")
def list_hosts(state: StateDep, _caller: CallerDep) -> list[HostView]:
    """The mesh peer list (every host's key, endpoint and mesh address)."""
    with state.db.session() as session:
        return [host_view(h) for h in session.scalars(select(Host).order_by(Host.name))]


@router.get("/{name}")
def get_host(name: str, state: StateDep, caller: CallerDep) -> HostRegistered:
    """A host with its role, node state, target configuration and instances."""
    if caller.host is not None and caller.host != name:
        raise HTTPException(403, f"this credential belongs to host {caller.host}")
    with state.db.session() as session:
        return host_detail(session, get_host_or_404(session, name))


@router.put("/{name}/state")
def set_host_state(name: str, body: HostStateBody, state: StateDep,
                   _admin: AdminOnlyDep) -> HostRegistered:
    """Set a host's node state by hand (the cluster watcher does it from Nomad): its targets
    are scheduled only while it is "ready"."""
    with state.db.session() as session:
        host = get_host_or_404(session, name)
        mark_host_state(session, host, body.state)
        answer = host_detail(session, host)
    state.hub.publish(HOSTS_EVENT_KEY, {"event": "targets"})
    return answer


@router.delete("/{name}")
def delete_host(name: str, state: StateDep, _admin: AdminOnlyDep) -> Deleted:
    """Remove a host: it leaves the mesh at the next `vlab vpn sync`, its credential stops
    working and its instances are detached (no longer scheduled)."""
    with state.db.session() as session:
        remove_host(session, get_host_or_404(session, name))
    state.hub.publish(HOSTS_EVENT_KEY, {"event": "targets"})
    return Deleted(name=name, deleted=True)
