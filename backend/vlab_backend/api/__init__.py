"""The HTTP API: the dAIEdge-VLab endpoints plus live progress, cancel and flat results."""

from vlab_backend.api.app import create_app

__all__ = ["create_app"]
