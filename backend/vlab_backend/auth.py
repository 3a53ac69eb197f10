"""Accounts and credentials: argon2 password hashes, JWT access/refresh tokens, API tokens.

On one machine the server writes a local admin API token to `<data dir>/local-admin.token`
(mode 0600) so that the CLI and notebook kernels of the same user need no login.

Password checks (~0.1 s of CPU each) run on a few threads of their own, never on the thread
pool that serves the synchronous request handlers: a storm of logins delays logins only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from vlab_backend.store.database import Database
from vlab_backend.store.schema import ApiToken, Host, User

LOCAL_ADMIN_EMAIL = "admin@localhost"
API_TOKEN_PREFIX = "vlab_"
_hasher = PasswordHasher()
# Half the cores this process may use (at most 4): the other half keeps serving the API.
PASSWORD_WORKERS = max(1, min(4, len(os.sched_getaffinity(0)) // 2))
_password_pool = ThreadPoolExecutor(PASSWORD_WORKERS, thread_name_prefix="vlab-password")
# A user id in a token's `sub`: what the database can hold, nothing else.
_USER_ID = re.compile(r"[1-9][0-9]{0,17}")


class AuthError(Exception):
    """A credential is missing, malformed, expired or revoked."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches. Without a hash (no such account, or one without a password)
    a dummy hash is verified all the same, so that the answer takes as long and tells nothing."""
    try:
        matches = _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return matches and bool(password_hash)


def check_login(db: Database, email: str, password: str) -> User | None:
    """The user with this e-mail and password, or None: one password verification whether or
    not the account exists. The session is closed before the (slow) verification."""
    with db.session() as session:
        user = session.scalar(select(User).where(User.email == email))
    if verify_password(user.password_hash if user else None, password):
        return user
    return None


async def check_login_async(db: Database, email: str, password: str) -> User | None:
    """`check_login` on the password threads (at most `PASSWORD_WORKERS` at a time)."""
    return await asyncio.get_running_loop().run_in_executor(
        _password_pool, check_login, db, email, password)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_or_create_secret(path: Path) -> str:
    """The server's signing secret, made on first start. Replicas that start at once on a
    shared data dir agree on one: the secret is written whole to a temporary file and linked
    into place only if no other replica's is there yet (a hard link never replaces a file)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
            handle.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):  # another replica's came first: take it
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


class TokenService:
    """Issues and checks JWTs (HS256, signed with the server secret) and API tokens."""

    def __init__(self, secret: str, access_minutes: int, refresh_days: int) -> None:
        self._secret = secret
        self._access = timedelta(minutes=access_minutes)
        self._refresh = timedelta(days=refresh_days)

    def issue(self, user: User, kind: str) -> str:
        now = datetime.now(UTC)
        lifetime = self._access if kind == "access" else self._refresh
        claims = {"sub": str(user.id), "type": kind, "iat": now, "exp": now + lifetime,
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def user_id_from_jwt(self, token: str, kind: str) -> int:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._secret, algorithms=["HS256"],
                options={"require": ["sub", "exp", "iat", "type"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired; log in again") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token") from exc
        if claims["type"] != kind:
            raise AuthError(f"a {kind} token is required")
        # PyJWT has checked that `sub` is a string; one we issued holds a user id.
        if not _USER_ID.fullmatch(claims["sub"]):
            raise AuthError("invalid token")
        return int(claims["sub"])

    def authenticate(self, session: Session, token: str) -> User:
        """The user a bearer token (API token or JWT access token) belongs to."""
        if token.startswith(API_TOKEN_PREFIX):
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token)))
            if row is None or row.revoked:
                raise AuthError("invalid or revoked API token")
            user = session.get(User, row.user_id)
        else:
            user = session.get(User, self.user_id_from_jwt(token, "access"))
        if user is None:
            raise AuthError("unknown user")
        return user


def create_api_token(session: Session, user: User, name: str) -> str:
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, token_hash=token_digest(token)))
    return token


def create_user(session: Session, email: str, password: str | None, is_admin: bool) -> User:
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise ValueError(f"not an e-mail address: {email!r}")
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise ValueError(f"user {email} already exists")
    if password is not None and len(password) < 8:
        raise ValueError("password must have at least 8 characters")
    user = User(email=email, is_admin=is_admin,
                password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def ensure_local_admin(session: Session, credential_file: Path) -> None:
    """Create the local admin and its API token file unless a valid one already exists."""
    admin = session.scalar(select(User).where(User.email == LOCAL_ADMIN_EMAIL))
    if admin is None:
        admin = create_user(session, LOCAL_ADMIN_EMAIL, None, is_admin=True)
    if credential_file.exists():
        existing = credential_file.read_text().strip()
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(existing)))
        if row is not None and not row.revoked and row.user_id == admin.id:
            return
    token = create_api_token(session, admin, "local admin credential")
    _write_private(credential_file, token)


JOB_TOKEN_PREFIX = "vlabjob_"


def issue_job_credential(session: Session, benchmark_id: str) -> str:
    """A credential valid for one benchmark's inputs and outputs, until revoked."""
    from vlab_backend.store.schema import JobCredential

    token = JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(JobCredential(benchmark_id=benchmark_id, token_hash=token_digest(token)))
    return token


def job_of_credential(session: Session, token: str) -> str:
    """The benchmark a job credential was issued for; AuthError when invalid or revoked."""
    from vlab_backend.store.schema import JobCredential

    row = session.scalar(select(JobCredential).where(
        JobCredential.token_hash == token_digest(token)))
    if row is None or row.revoked:
        raise AuthError("invalid or revoked job credential")
    return row.benchmark_id


def revoke_job_credentials(session: Session, benchmark_id: str) -> None:
    from vlab_backend.store.schema import JobCredential

    for row in session.scalars(select(JobCredential).where(
            JobCredential.benchmark_id == benchmark_id)):
        row.revoked = True


HOST_TOKEN_PREFIX = "vlabhost_"


def issue_host_credential(host: Host) -> str:
    """A new host-scoped credential for `host` (the previous one stops working): it may read
    the mesh peer list and register or update this host, nothing else. Only its SHA-256 is
    stored."""
    token = HOST_TOKEN_PREFIX + secrets.token_urlsafe(32)
    host.credential_hash = token_digest(token)
    return token


def host_of_credential(session: Session, token: str) -> Host:
    """The host a host-scoped credential was issued to; AuthError when it is unknown (never
    issued, rotated, or its host was removed)."""
    host = session.scalar(select(Host).where(Host.credential_hash == token_digest(token)))
    if host is None:
        raise AuthError("invalid or revoked host credential")
    return host
