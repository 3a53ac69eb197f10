"""Platform status: the only endpoints that need no token."""

from __future__ import annotations

from fastapi import APIRouter

from vlab_backend import API_VERSION, __version__
from vlab_backend.api.schemas import ApiStatus, LegacyStatus

router = APIRouter(tags=["status"])


@router.get("/api/benchmarks/status")
def api_status() -> ApiStatus:
    return ApiStatus(status="OK", version=API_VERSION, server=f"vlab-workbench {__version__}")


@router.get("/api/status")
def legacy_status() -> LegacyStatus:
    """For dAIEdge clients 0.2.x, which expect this path and version."""
    return LegacyStatus(status="OK", version="0.2.0")
