"""Look-ups shared by the routes: a row the caller may see (or change), or the HTTP error.

Each `get_…_or_404` takes an open session, so that a route and a thread-pool helper use the
same rules; the `Annotated` aliases at the end hand the row to a route as a dependency.
Rows a caller may not see answer 404, as if they did not exist; rows they may see but not
change answer 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from vlab_backend.api.state import SessionDep, UserDep
from vlab_backend.catalog import find_parameter
from vlab_backend.store.schema import (
    ApiToken,
    Benchmark,
    Dataset,
    EngineFamily,
    EngineParameter,
    HardwareType,
    Host,
    StoredModel,
    TargetInstance,
    User,
)
from vlab_backend.submission import SubmissionError, resolve_model_ref, visible


@contextmanager
def submission_errors() -> Iterator[None]:
    """A rejected submission (`SubmissionError`) as the HTTP error it names."""
    try:
        yield
    except SubmissionError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


# -- benchmarks --------------------------------------------------------------------------------


def get_benchmark_or_404(session: Session, user: User, bench_id: str) -> Benchmark:
    """A benchmark the caller owns, a public one, or any for an admin."""
    query = visible(select(Benchmark).where(Benchmark.id == bench_id), Benchmark.owner_id,
                    Benchmark.public, user)
    bench = session.scalar(query)
    if bench is None:
        raise HTTPException(404, f"no benchmark {bench_id}")
    return bench


def get_owned_benchmark(session: Session, user: User, bench_id: str) -> Benchmark:
    """A benchmark the caller may change: theirs (or any, for an admin)."""
    bench = get_benchmark_or_404(session, user, bench_id)
    if bench.owner_id != user.id and not user.is_admin:
        raise HTTPException(403, "only the owner can change this benchmark")
    return bench


def visible_benchmark(bench_id: str, session: SessionDep, user: UserDep) -> Benchmark:
    return get_benchmark_or_404(session, user, bench_id)


# -- models and datasets -----------------------------------------------------------------------


def get_model_or_404(session: Session, user: User, ident: str) -> StoredModel:
    """The model `ident` (`model-N`) if the caller owns it or it is public."""
    with submission_errors():
        return resolve_model_ref(session, user, ident)


def get_owned_model_or_404(session: Session, user: User, ident: str) -> StoredModel:
    model = get_model_or_404(session, user, ident)
    if model.owner_id != user.id and not user.is_admin:
        raise HTTPException(404, f"unknown model reference {ident!r}")
    return model


def get_dataset_or_404(session: Session, user: User, name: str) -> Dataset:
    """One of the caller's own datasets."""
    dataset = session.scalar(select(Dataset).where(Dataset.owner_id == user.id,
                                                   Dataset.name == name))
    if dataset is None:
        raise HTTPException(404, f"no dataset {name}")
    return dataset


# -- accounts and hosts ------------------------------------------------------------------------


def get_token_or_404(session: Session, user: User, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise HTTPException(404, f"no token {token_id}")
    return row


def get_host_or_404(session: Session, name: str) -> Host:
    host = session.scalar(select(Host).where(Host.name == name))
    if host is None:
        raise HTTPException(404, f"no host {name}")
    return host


# -- resources ---------------------------------------------------------------------------------


def get_hardware_type_or_404(session: Session, name: str) -> HardwareType:
    row = session.get(HardwareType, name)
    if row is None:
        raise HTTPException(404, f"no hardware type {name}")
    return row


def get_engine_or_404(session: Session, name: str) -> EngineFamily:
    row = session.get(EngineFamily, name)
    if row is None:
        raise HTTPException(404, f"no engine {name}")
    return row


def get_parameter_or_404(session: Session, ident: str) -> EngineParameter:
    """An engine parameter by numeric id or key."""
    row = find_parameter(session, ident)
    if row is None:
        raise HTTPException(404, f"no engine parameter {ident}")
    return row


def get_instance_or_404(session: Session, user: User, inventory_id: str) -> TargetInstance:
    """A target instance the caller registered (any, for an admin)."""
    row = session.get(TargetInstance, inventory_id)
    if row is None or (not user.is_admin and row.owner_id != user.id):
        raise HTTPException(404, f"no hardware instance {inventory_id}")
    return row


VisibleBenchmark = Annotated[Benchmark, Depends(visible_benchmark)]
