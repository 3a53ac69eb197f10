"""Upload handling: a request-size limit enforced while the body streams in, and saving parts
into the data dir's tmp folder (never elsewhere) under a per-kind size limit."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CHUNK = 1 << 20
MAX_FILENAME_BYTES = 200


class UploadTooLarge(Exception):
    def __init__(self, limit: int, what: str = "request") -> None:
        super().__init__(f"the {what} exceeds the upload limit of {limit // (1024 * 1024)} MiB")
        self.limit = limit


# The errors of a full disk (or quota): the client is told so (507), not a generic failure.
STORAGE_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
STORAGE_FULL_MESSAGE = ("the server is out of storage space for uploads; try again later, or "
                        "ask its administrator to free disk space")


def storage_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or the error it was raised from, is a full disk."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
            return True
        exc = exc.__cause__
    return False


class PartSizeLimits:
    """Counts each multipart part's bytes as the body streams in, so that a part over its own
    limit (a model, a dataset) is refused at once, not once the whole body is spooled. Bad
    multipart data is left to the form parser, which reports it."""

    def __init__(self, boundary: bytes, limits: Mapping[str, int]) -> None:
        self._limits = limits
        self._header = self._value = b""
        self._field, self._limit, self._size = "", 0, 0
        self._broken = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_part_data": self._data})

    @classmethod
    def for_request(cls, headers: Mapping[bytes, bytes],
                    limits: Mapping[str, int]) -> PartSizeLimits | None:
        content_type, options = parse_options_header(headers.get(b"content-type", b""))
        boundary = options.get(b"boundary")
        return cls(boundary, limits) if content_type == b"multipart/form-data" and boundary \
            else None

    def feed(self, chunk: bytes) -> None:
        """Raises UploadTooLarge once a part is over its limit."""
        if self._broken:
            return
        try:
            self._parser.write(chunk)
        except FormParserError:
            self._broken = True

    def _begin(self) -> None:
        self._field, self._limit, self._size = "", 0, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            _, options = parse_options_header(self._value)
            self._field = options.get(b"name", b"").decode("latin-1")
            self._limit = self._limits.get(self._field, 0)
        self._header = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._limit and self._size > self._limit:
            raise UploadTooLarge(self._limit, self._field)


class BodySizeLimit:
    """Rejects bodies over `limit` bytes: at once from Content-Length, else while streaming;
    and multipart parts over their own limit (`part_limits`, by field name) as they stream."""

    def __init__(self, app: ASGIApp, limit: int,
                 part_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.part_limits = part_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        if declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            await _reject(send, UploadTooLarge(self.limit))
            return
        parts = PartSizeLimits.for_request(headers, self.part_limits) if self.part_limits \
            else None
        received = 0
        refusal: UploadTooLarge | None = None
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, refusal
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                try:
                    if received > self.limit:
                        raise UploadTooLarge(self.limit)
                    if parts is not None:
                        parts.feed(body)
                except UploadTooLarge as exc:
                    refusal = exc
                    raise
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers once a limit is hit (frameworks turn the error into
            # a generic 400), the client gets the 413.
            nonlocal rejected
            if refusal is None:
                await send(message)
            elif not rejected:
                rejected = True
                await _reject(send, refusal)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge as exc:
            if not rejected:
                await _reject(send, refusal or exc)


async def _reject(send: Send, refusal: UploadTooLarge) -> None:
    message = str(refusal)
    body = json.dumps({"error": message, "detail": message}).encode()
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
    if not cleaned or cleaned in (".", ".."):
        return default
    if len(cleaned.encode()) <= MAX_FILENAME_BYTES:
        return cleaned
    # Shortened before the extension, which says what format the file is; in bytes, as file
    # systems count (the job directory adds a timestamp to the name).
    suffix = Path(cleaned).suffix
    suffix = suffix if len(suffix.encode()) <= 16 else ""
    room = MAX_FILENAME_BYTES - len(suffix.encode())
    stem = cleaned[:len(cleaned) - len(suffix)].encode()[:room].decode(errors="ignore")
    return stem + suffix
