"""Platform status: the only endpoints that need no token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vlab_backend import API_VERSION, __version__

router = APIRouter(tags=["status"])


@router.get("/api/benchmarks/status")
def api_status() -> dict[str, Any]:
    return {"status": "OK", "version": API_VERSION, "server": f"vlab-workbench {__version__}"}


@router.get("/api/status")
def legacy_status() -> dict[str, Any]:
    """For dAIEdge clients 0.2.x, which expect this path and version."""
    return {"status": "OK", "version": "0.2.0"}
