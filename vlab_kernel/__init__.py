"""Kernel-side client of the VLab workbench: connection, HTTP client and the `vlab` CLI."""

from vlab_kernel.client import VlabClient, VlabError, connect

__all__ = ["VlabClient", "VlabError", "connect"]
