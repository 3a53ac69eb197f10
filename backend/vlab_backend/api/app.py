"""Application factory: wires settings, store, credentials, targets and the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlab_backend import __version__, catalog
from vlab_backend.api.routes import (
    benchmarks,
    datasets,
    federated,
    hosts,
    jobs,
    models,
    resources,
    status,
    targets,
    training,
    users,
)
from vlab_backend.api.state import AppState
from vlab_backend.api.uploads import (
    STORAGE_FULL_MESSAGE,
    BodySizeLimit,
    UploadTooLarge,
    storage_full,
)
from vlab_backend.auth import TokenService, ensure_local_admin, load_or_create_secret
from vlab_backend.config import Settings
from vlab_backend.events import EventHub
from vlab_backend.hosts.registry import DETACHED, READY
from vlab_backend.runners import create_runner
from vlab_backend.scheduler import Scheduler
from vlab_backend.store.database import Database
from vlab_backend.store.schema import TargetInstance
from vlab_backend.targets import (
    InstanceConfig,
    load_target_config,
    local_cpu_targets,
    simulated_mcu_targets,
)

log = logging.getLogger("vlab.api")


def sync_targets(db: Database, instances: list[InstanceConfig]) -> None:
    """Make this server's own instances (`--targets`, or this machine's cores) match the
    configuration; absent ones are disabled. Instances that registered hosts declare are
    theirs (`vlab_backend.hosts.registry`): a restart leaves them as they are, and the
    configuration cannot take one over."""
    with db.session() as session:
        rows = session.scalars(select(TargetInstance)).all()
        hosted = {row.uid: row.host for row in rows if row.host_id is not None}
        known = {row.uid: row for row in rows if row.host_id is None}
        for config in instances:
            if config.uid in hosted:
                log.warning("target %s: declared by host %s, which registered it; the "
                            "entry of the target configuration is ignored", config.uid,
                            hosted[config.uid])
                continue
            row = known.pop(config.uid, None) or TargetInstance(uid=config.uid)
            row.target_type = config.target_type
            row.host = config.host
            row.engines = {name: offer.as_dict() for name, offer in config.engines.items()}
            row.cpuset = config.cpuset
            row.memory = config.memory
            row.enabled = True
            row.state = READY
            session.add(row)
        for row in known.values():
            row.enabled = False
            if row.state == READY:
                row.state = DETACHED


def startup_instances(settings: Settings) -> list[InstanceConfig]:
    """This server's own instances: the `--targets` file; else, with the local runner, this
    machine's cores. On a cluster (`--runner nomad`) without a file there are none here: the
    hosts register theirs (`vlab host init`), and the API container's own cores are no
    target."""
    if settings.targets_file:
        return load_target_config(settings.targets_file)
    if settings.runner == "nomad":
        return []
    if settings.simulated_boards:
        return [*local_cpu_targets(), *simulated_mcu_targets()]
    return local_cpu_targets()


def _error_body(message: str) -> dict[str, str]:
    # `error` is what the dAIEdge client reads; `detail` is FastAPI's convention.
    return {"error": message, "detail": message}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.ensure_dirs()
    # Multipart parts are spooled to the temp dir: keep them inside the data dir.
    tempfile.tempdir = str(settings.tmp_dir)
    db = Database(settings.db_url)
    hub = EventHub()
    state = AppState(settings=settings, db=db,
                     tokens=TokenService(load_or_create_secret(settings.secret_file),
                                         settings.access_token_minutes,
                                         settings.refresh_token_days),
                     hub=hub,
                     scheduler=Scheduler(settings, db, hub,
                                         runner=create_runner(settings.runner, settings, db)))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        db.migrate()
        # Replicas sharing a PostgreSQL database take turns for the start-up writes below (a
        # start-up that fails ends the process, and its connection frees the lock).
        startup = contextlib.ExitStack()
        startup.enter_context(db.startup_lock())
        with db.session() as session:
            ensure_local_admin(session, settings.credential_file)
        instances = startup_instances(settings)
        sync_targets(db, instances)
        state.scheduler.runner.prewarm(instances)
        with db.session() as session:
            catalog.seed(session)
        startup.close()
        hub.bind(asyncio.get_running_loop())
        await state.scheduler.start()
        log.info("VLab API ready: %d target instance(s), data in %s", len(instances),
                 settings.data_dir)
        try:
            yield
        finally:
            await state.scheduler.stop()
            await state.scheduler.runner.aclose()
            db.dispose()

    app = FastAPI(title="VLab workbench API", version=__version__, lifespan=lifespan,
                  description="dAIEdge-VLab compatible benchmarking API")
    app.state.vlab = state
    # A model or dataset part over its own limit is refused as it streams in.
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes,
                       part_limits={"model": settings.max_model_bytes,
                                    "dataset": settings.max_dataset_bytes})
    # Literal paths (datasets, train, fl, ...) before the /api/benchmarks/{id} patterns.
    for router in (status.router, users.router, datasets.router, training.router,
                   federated.router, benchmarks.router, models.router, targets.router,
                   resources.router, jobs.router, hosts.router):
        app.include_router(router)

    # Starlette's class: what FastAPI raises for a body it cannot parse is one too.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if storage_full(exc.__cause__):  # the form parser's spool hit a full disk
            return JSONResponse(_error_body(STORAGE_FULL_MESSAGE), status_code=507)
        return JSONResponse(_error_body(str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors())
        return JSONResponse(_error_body(f"invalid request: {problems}"), status_code=422)

    @app.exception_handler(OSError)
    async def storage_error(_request: Request, exc: OSError) -> JSONResponse:
        if storage_full(exc):
            return JSONResponse(_error_body(STORAGE_FULL_MESSAGE), status_code=507)
        raise exc  # any other OSError is the server's fault: a 500, logged

    @app.exception_handler(UploadTooLarge)
    async def too_large(_request: Request, exc: UploadTooLarge) -> JSONResponse:
        return JSONResponse(_error_body(str(exc)), status_code=413)

    return app
