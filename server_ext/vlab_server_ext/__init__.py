"""Jupyter server extension of the VLab workbench.

It proxies `/vlab/api/*` to the VLab backend (adding the server-side token, so browsers and
kernels authenticate to Jupyter only), proxies `/vlab/nomad/*` read-only to `NOMAD_ADDR`, and
starts the embedded backend when no `VLAB_URL` is configured.
"""

from __future__ import annotations

from typing import Any

from vlab_server_ext.app import VLabExtension


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "vlab_server_ext", "app": VLabExtension}]


__all__ = ["VLabExtension"]
