"""Registered hosts and the target instances they declare.

A host registers its whole dAIEdge target configuration (`vlab host init`); the API upserts
one target instance per entry, tied to the host (`TargetInstance.host_id`). An instance is
scheduled only while its host's Nomad node is ready: `mark_host_state` is what the cluster
side calls when a node goes down, drains or comes back (`node_state` maps a Nomad node to the
state), and it enables or disables the host's instances in the same transaction.

Every write here is safe under concurrent registrations on PostgreSQL and SQLite: the host row
is claimed with `INSERT ... ON CONFLICT DO NOTHING` (a lost race on the name or on the mesh
address is retried with fresh data, in the same transaction), instances are upserted with
`INSERT ... ON CONFLICT (uid) DO UPDATE ... WHERE` (the WHERE refuses, atomically, an instance
that another host declares), rows are written in `uid` order (no deadlock between two hosts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from vlab_backend.hosts.mesh import next_address
from vlab_backend.store.schema import Host, TargetInstance
from vlab_backend.targets import InstanceConfig, TargetConfigError, parse_target_config

READY = "ready"
# Nomad node states (`Node.Status`, then drain and scheduling eligibility) a host can be in.
HOST_STATES = (READY, "initializing", "down", "disconnected", "draining", "ineligible")
# An instance no registered host declares any more.
DETACHED = "detached"
ROLES = ("services", "targets")
MAX_UID, MAX_TYPE = 200, 100  # the columns' sizes
NODE_HOST_META = "vlab_host"  # node meta written by `vlab host init`: the host's name
# Each lost race means another registration took a row: more attempts than concurrent
# registrations can ever need.
CLAIM_ATTEMPTS = 1000


class RegistrationError(ValueError):
    """The registration is invalid (HTTP 400); the message says why."""


class RegistrationConflict(Exception):
    """The registration clashes with another host's (HTTP 409); the message says which."""


@dataclass
class Registration:
    """What `vlab host init` sends. `target_config` None: an older client that sends only
    the target uids (`targets`); the host's instances are then left as they are."""

    name: str
    public_key: str
    endpoint: str = ""
    role: str = "targets"
    target_config: dict[str, Any] | None = None
    targets: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def check_for_cluster(instances: Iterable[InstanceConfig]) -> None:
    """On a cluster every engine runs from its image."""
    for instance in instances:
        for name, offer in instance.engines.items():
            if not offer.image:
                raise TargetConfigError(f"{instance.uid}: engine {name!r} has no 'image' (the "
                                        "Docker image Nomad runs the target's scripts in)")


def parse_registered_config(config: dict[str, Any]) -> list[InstanceConfig]:
    """The instances of a registered target configuration (an empty one declares none);
    RegistrationError naming the offending entry."""
    if not config:
        return []
    try:
        instances = parse_target_config(config)
        check_for_cluster(instances)
    except TargetConfigError as exc:
        raise RegistrationError(f"target configuration: {exc}") from None
    for instance in instances:
        if len(instance.uid) > MAX_UID or len(instance.target_type) > MAX_TYPE:
            raise RegistrationError(f"target configuration: target_uid at most {MAX_UID} and "
                                    f"target type at most {MAX_TYPE} characters")
    return instances


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"host registration needs PostgreSQL or SQLite, not {dialect}")


def _claim_host(session: Session, registration: Registration) -> Host:
    """The host row of this name, locked (PostgreSQL) for the rest of the transaction; a new
    one with the lowest free mesh address when there is none."""
    for _attempt in range(CLAIM_ATTEMPTS):
        host = session.scalar(select(Host).where(Host.name == registration.name)
                              .with_for_update())
        if host is not None:
            return host
        used = session.scalars(select(Host.mesh_address)).all()
        claimed = session.execute(
            _insert(session, Host).values(
                name=registration.name, public_key=registration.public_key,
                endpoint=registration.endpoint, mesh_address=next_address(used),
                minimal=registration.role != "services", targets=[], role=registration.role,
                state=READY, target_config={}, created_at=_now())
            .on_conflict_do_nothing().returning(Host.id)).scalar()
        if claimed is not None:
            new = session.get(Host, claimed)
            assert new is not None
            return new
        # Another registration took this name or this address first: look again.
    raise RegistrationConflict(f"could not register {registration.name}: too many concurrent "
                               "registrations; try again")


def _offer_row(host: Host, config: InstanceConfig) -> dict[str, Any]:
    return {"target_type": config.target_type, "host": host.name, "host_id": host.id,
            "engines": {name: offer.as_dict() for name, offer in config.engines.items()},
            "cpuset": config.cpuset, "memory": config.memory, "state": host.state,
            "enabled": host.state == READY}


def _upsert_instances(session: Session, host: Host, instances: list[InstanceConfig],
                      admin: bool) -> None:
    table = TargetInstance.__table__
    if admin:
        # Free to take: its own, one nothing declares, or an inventory entry (resources API)
        # waiting for a host. Anything else belongs to another host or to `--targets`.
        free = or_(table.c.host_id == host.id, table.c.state == DETACHED,
                   and_(table.c.host_id.is_(None), table.c.enabled.is_(False)))
    else:
        # A host with its own credential: its own instances, and those it declared before
        # and dropped (detached, still named after it); a brand-new uid is inserted. Another
        # host's detached instance or an inventory entry is bound by an administrator only.
        free = or_(table.c.host_id == host.id,
                   and_(table.c.host_id.is_(None), table.c.state == DETACHED,
                        table.c.host == host.name))
    for config in sorted(instances, key=lambda i: i.uid):
        values = _offer_row(host, config)
        insert = _insert(session, TargetInstance).values(uid=config.uid, **values)
        taken = session.execute(insert.on_conflict_do_update(
            index_elements=[table.c.uid], set_=values, where=free,
        ).returning(table.c.uid)).scalar()
        if taken is None:
            found = session.execute(select(TargetInstance.host, TargetInstance.host_id).where(
                TargetInstance.uid == config.uid)).one_or_none()
            if not admin and found is not None and found.host_id is None:
                raise RegistrationConflict(
                    f"target {config.uid} is an unbound (detached or inventory) instance: only "
                    "an administrator's registration may bind it to a host")
            owner = (found.host if found is not None else "") or "another host"
            raise RegistrationConflict(
                f"target {config.uid} is already declared by {owner}; target_uids must be "
                "unique across the cluster")
    session.expire_all()  # the upserts bypassed the identity map (all else is flushed)
    declared = {i.uid for i in instances}
    for row in session.scalars(select(TargetInstance).where(
            TargetInstance.host_id == host.id).order_by(TargetInstance.uid)):
        if row.uid not in declared:
            _detach(row)


def _detach(row: TargetInstance) -> None:
    row.host_id, row.state, row.enabled = None, DETACHED, False


def register_host(session: Session, registration: Registration, *,
                  admin: bool = False) -> Host:
    """Create or update the host and upsert the instances its target configuration declares
    (those it no longer declares are detached). Idempotent: the same registration again
    changes nothing, and the host keeps its mesh address. `admin`: an administrator's
    registration, which may also bind detached instances of other hosts and inventory
    entries; a host's own (host credential) binds only its own and brand-new uids."""
    if registration.role not in ROLES:
        raise RegistrationError(f"role must be one of {', '.join(ROLES)}")
    instances = (parse_registered_config(registration.target_config)
                 if registration.target_config is not None else None)
    host = _claim_host(session, registration)
    host.public_key, host.endpoint = registration.public_key, registration.endpoint
    host.role, host.minimal = registration.role, registration.role != "services"
    host.updated_at = _now()
    if instances is None:  # an older client: only the uids
        host.targets = list(registration.targets)
    else:
        host.target_config = registration.target_config or {}
        host.targets = [i.uid for i in instances]
        session.flush()
        _upsert_instances(session, host, instances, admin)
    session.flush()
    return host


def remove_host(session: Session, host: Host) -> None:
    """Delete the host; its instances are detached (kept, with their history, not scheduled)."""
    for row in session.scalars(select(TargetInstance).where(TargetInstance.host_id == host.id)):
        _detach(row)
    session.flush()
    session.delete(host)


def mark_host_state(session: Session, host: Host | str, state: str) -> list[str]:
    """Record a host's Nomad node state and enable its instances only while it is "ready"
    (down, disconnected, draining or ineligible hosts' targets are not scheduled). For the
    cluster watcher: call it in a transaction whenever a node's state changes; `host` is the
    row or its name. Returns the uids of the host's instances; unknown host: LookupError."""
    if state not in HOST_STATES:
        raise ValueError(f"unknown host state {state!r} (one of {', '.join(HOST_STATES)})")
    if isinstance(host, str):
        found = session.scalar(select(Host).where(Host.name == host).with_for_update())
        if found is None:
            raise LookupError(f"no host {host}")
        host = found
    if host.state != state:
        host.state, host.updated_at = state, _now()
    rows = session.scalars(select(TargetInstance).where(
        TargetInstance.host_id == host.id).order_by(TargetInstance.uid)).all()
    for row in rows:
        row.state, row.enabled = state, state == READY
    session.flush()
    return [row.uid for row in rows]


def node_state(node: Mapping[str, Any]) -> str:
    """A host state from a Nomad node (`/v1/nodes` stub or `/v1/node/:id`): its `Status`
    unless ready, then "draining" while a drain runs, "ineligible" when marked so."""
    status = str(node.get("Status") or "down")
    if status != READY:
        return status if status in HOST_STATES else "down"
    if node.get("Drain") or node.get("DrainStrategy"):
        return "draining"
    if node.get("SchedulingEligibility") == "ineligible":
        return "ineligible"
    return READY


def node_host_name(node: Mapping[str, Any]) -> str:
    """The registered host a Nomad node is: its `vlab_host` meta (full node objects carry
    Meta), else the node's name (`vlab host init` defaults to the machine's host name, as
    Nomad does)."""
    meta = node.get("Meta") or {}
    return str(meta.get(NODE_HOST_META) or node.get("Name") or "")


def sync_node_states(session: Session, nodes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Apply a whole node listing: each registered host takes its node's state; a host that
    no node stands for is "down". Returns host name -> state."""
    seen: dict[str, str] = {}
    for node in nodes:
        name = node_host_name(node)
        state = node_state(node)
        # Two nodes claiming one host (a re-installed machine): a ready one wins.
        if name and (name not in seen or state == READY):
            seen[name] = state
    result = {}
    for host in session.scalars(select(Host).order_by(Host.name)).all():
        result[host.name] = seen.get(host.name, "down")
        mark_host_state(session, host, result[host.name])
    return result
