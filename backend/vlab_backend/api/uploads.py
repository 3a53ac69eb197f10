"""Upload handling: a request-size limit enforced while the body streams in, and saving parts
into the data dir's tmp folder (never elsewhere) under a per-kind size limit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CHUNK = 1 << 20


class UploadTooLarge(Exception):
    def __init__(self, limit: int, what: str = "request") -> None:
        super().__init__(f"the {what} exceeds the upload limit of {limit // (1024 * 1024)} MiB")
        self.limit = limit


class BodySizeLimit:
    """Rejects bodies over `limit` bytes: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            declared = value.isascii() and value.isdigit() and int(value)
            if name == b"content-length" and declared and declared > self.limit:
                await _reject(send, self.limit)
                return
        received = 0
        exceeded = rejected = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise UploadTooLarge(self.limit)
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers once the limit is hit (frameworks turn the error into
            # a generic 400), the client gets the 413.
            nonlocal rejected
            if not exceeded:
                await send(message)
            elif not rejected:
                rejected = True
                await _reject(send, self.limit)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge:
            if not rejected:
                await _reject(send, self.limit)


async def _reject(send: Send, limit: int) -> None:
    body = (f'{{"error": "the request exceeds the upload limit of {limit // (1024 * 1024)} MiB",'
            f' "detail": "the request exceeds the upload limit of {limit // (1024 * 1024)} MiB"}}'
            ).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def save_upload(upload: UploadFile, tmp_dir: Path, limit: int, what: str) -> Path:
    """Copy an uploaded part to a new file in `tmp_dir`; UploadTooLarge past `limit` bytes."""
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    path = Path(name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            while chunk := await upload.read(CHUNK):
                written += len(chunk)
                if written > limit:
                    raise UploadTooLarge(limit, what)
                handle.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def safe_filename(name: str | None, default: str) -> str:
    """The base name of a client-supplied file name, without path parts or control characters."""
    base = Path((name or "").replace("\\", "/")).name
    cleaned = "".join(c for c in base if c.isprintable() and c not in '/\\"\'').strip()
    return cleaned[:200] if cleaned and cleaned not in (".", "..") else default
