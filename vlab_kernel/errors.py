"""Typed exceptions carrying the server's message and HTTP status, and the `vlab` command's
`UsageError`."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in a `vlab` command line or its inputs: one line on stderr, exit 1."""


class VlabError(Exception):
    """An error answered by the VLab server, or a failure to reach it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the message, not the client's frames
        that led to it (the mistake is in the call, not in them)."""
        return [f"{type(self).__name__}: {self.message}"]


class ConnectionFailed(VlabError):
    """The backend could not be reached."""


class BadRequest(VlabError):
    """400/422: the request is invalid (unknown target, wrong model format, ...)."""


class AuthenticationError(VlabError):
    """401: no token, or an invalid, expired or revoked one."""


class PermissionDenied(VlabError):
    """403: the account may not do this (e.g. only admins change targets)."""


class NotFound(VlabError):
    """404: no such benchmark, model or dataset visible to this account."""


class Conflict(VlabError):
    """409: the resource is in use or already exists."""


class TooLarge(VlabError):
    """413: the upload exceeds the server's limit."""


class NotReady(VlabError):
    """428: the benchmark has not finished; its artifacts are not available yet."""


class RateLimited(VlabError):
    """429: too many attempts; retry later."""


class ServerError(VlabError):
    """5xx: the server failed."""


class BenchmarkFailed(VlabError):
    """A benchmark ended `failed` or `canceled`; `.benchmark` holds its final description."""


_BY_STATUS: dict[int, type[VlabError]] = {
    400: BadRequest, 401: AuthenticationError, 403: PermissionDenied, 404: NotFound,
    409: Conflict, 413: TooLarge, 422: BadRequest, 428: NotReady, 429: RateLimited,
}


def error_for(status: int, message: str) -> VlabError:
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else VlabError)
    return kind(message, status)
