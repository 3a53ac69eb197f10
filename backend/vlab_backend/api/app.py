"""Application factory: wires settings, store, credentials, targets and the scheduler."""

from __future__ import annotations

import asyncio
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
from vlab_backend.runners import create_runner
from vlab_backend.scheduler import Scheduler
from vlab_backend.store.database import Database
from vlab_backend.store.schema import TargetInstance
from vlab_backend.targets import InstanceConfig, load_target_config, local_cpu_targets

log = logging.getLogger("vlab.api")


def sync_targets(db: Database, instances: list[InstanceConfig]) -> None:
    """Make the instance table match the configuration; absent instances are disabled."""
    with db.session() as session:
        known = {row.uid: row for row in session.scalars(select(TargetInstance))}
        for config in instances:
            row = known.pop(config.uid, None) or TargetInstance(uid=config.uid)
            row.target_type = config.target_type
            row.host = config.host
            row.engines = {name: offer.as_dict() for name, offer in config.engines.items()}
            row.cpuset = config.cpuset
            row.memory = config.memory
            row.enabled = True
            session.add(row)
        for row in known.values():
            row.enabled = False


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
        with db.session() as session:
            ensure_local_admin(session, settings.credential_file)
        instances = (load_target_config(settings.targets_file) if settings.targets_file
                     else local_cpu_targets())
        sync_targets(db, instances)
        state.scheduler.runner.prewarm(instances)
        with db.session() as session:
            catalog.seed(session)
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
                   benchmarks.router, models.router, targets.router, resources.router,
                   jobs.router, hosts.router):
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
