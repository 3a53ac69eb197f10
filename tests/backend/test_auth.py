"""Credentials without a server: password checks, JWT subjects, the login throttle and the
trusted-proxy setting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
import pytest
from argon2 import PasswordHasher
from pydantic import ValidationError

from vlab_backend import auth
from vlab_backend.auth import AuthError, TokenService, check_login, create_user, verify_password
from vlab_backend.config import Settings
from vlab_backend.ratelimit import AttemptLimiter, LoginThrottle
from vlab_backend.store.database import Database

SECRET = "s" * 48


class CountingHasher(PasswordHasher):
    """Counts the hashes verified."""

    verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher()
    monkeypatch.setattr(auth, "_hasher", counting)
    return counting


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'vlab.db'}")
    database.migrate()
    with database.session() as session:
        create_user(session, "known@lab.example", "the right password", is_admin=False)
        create_user(session, "nopassword@lab.example", None, is_admin=False)
    yield database
    database.dispose()


# -- passwords: one verification whatever the account (no user enumeration by timing) ---------


@pytest.mark.parametrize("stored", [None, ""])
def test_a_missing_hash_is_verified_against_a_dummy(hasher: CountingHasher,
                                                     stored: str | None) -> None:
    assert verify_password(stored, "any password") is False
    assert hasher.verified == 1


@pytest.mark.parametrize(("email", "password", "accepted"), [
    ("known@lab.example", "the right password", True),
    ("known@lab.example", "a wrong password", False),
    ("unknown@lab.example", "the right password", False),
    ("nopassword@lab.example", "", False),
    ("nopassword@lab.example", "anything at all", False),
])
def test_a_login_check_verifies_one_hash_whether_or_not_the_account_exists(
        hasher: CountingHasher, db: Database, email: str, password: str,
        accepted: bool) -> None:
    user = check_login(db, email, password)
    assert (user is not None and user.email == email) is accepted
    assert hasher.verified == 1


# -- JWT subjects: a token signed with the real secret but a bad `sub` is refused --------------


def signed(**claims: Any) -> str:
    now = datetime.now(UTC)
    return jwt.encode({"type": "access", "iat": now, "exp": now + timedelta(minutes=5),
                       **claims}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("sub", ["abc", "1.5", " 7", "0", "-3", "07", "\u0661",
                                 "99999999999999999999999", 7, None, ["7"]])
def test_a_bad_subject_is_an_auth_error(sub: object) -> None:
    with pytest.raises(AuthError, match="invalid token"):
        TokenService(SECRET, 60, 7).user_id_from_jwt(signed(sub=sub), "access")


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "type"])
def test_a_token_without_a_required_claim_is_an_auth_error(missing: str) -> None:
    now = datetime.now(UTC)
    claims = {"sub": "7", "type": "access", "iat": now, "exp": now + timedelta(minutes=5)}
    del claims[missing]
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="invalid token"):
        TokenService(SECRET, 60, 7).user_id_from_jwt(token, "access")


def test_a_good_subject_is_the_user_id() -> None:
    assert TokenService(SECRET, 60, 7).user_id_from_jwt(signed(sub="7"), "access") == 7


def test_the_token_of_a_deleted_user_is_an_auth_error(db: Database) -> None:
    tokens = TokenService(SECRET, 60, 7)
    with db.session() as session:
        user = create_user(session, "gone@lab.example", "a long password", is_admin=False)
        token = tokens.issue(user, "access")
        session.delete(user)
    with db.session() as session, pytest.raises(AuthError, match="unknown user"):
        tokens.authenticate(session, token)


# -- the login throttle: keyed on the account alone and on the peer address --------------------


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_account_is_locked_whichever_address_tries() -> None:
    throttle = LoginThrottle(account_attempts=3, address_attempts=100, window_s=60)
    for i in range(3):
        assert throttle.attempt("a@lab.example", f"203.0.113.{i}") == 0
    for i in range(3, 10):
        assert throttle.attempt("a@lab.example", f"203.0.113.{i}") > 0
    assert throttle.attempt("b@lab.example", "203.0.113.1") == 0


def test_an_address_spraying_accounts_is_locked() -> None:
    throttle = LoginThrottle(account_attempts=3, address_attempts=5, window_s=60)
    for i in range(5):
        assert throttle.attempt(f"user{i}@lab.example", "198.51.100.9") == 0
    assert throttle.attempt("user9@lab.example", "198.51.100.9") > 0
    assert throttle.attempt("user9@lab.example", "198.51.100.10") == 0


def test_concurrent_attempts_count_before_their_passwords_are_checked() -> None:
    # Five guesses in flight at once: the limit holds before any of them has failed.
    throttle = LoginThrottle(account_attempts=5, address_attempts=100, window_s=60)
    waits = [throttle.attempt("a@lab.example", "192.0.2.1") for _ in range(7)]
    assert waits[:5] == [0] * 5 and all(wait > 0 for wait in waits[5:])


def test_a_success_clears_the_account_but_not_the_address() -> None:
    throttle = LoginThrottle(account_attempts=2, address_attempts=3, window_s=60)
    throttle.attempt("mine@lab.example", "192.0.2.1")
    throttle.attempt("victim@lab.example", "192.0.2.1")
    assert throttle.attempt("mine@lab.example", "192.0.2.1") == 0
    throttle.succeeded("mine@lab.example", "192.0.2.1")
    # The account may try again at once; the address still has its two failures counted.
    assert throttle.accounts.wait_s("mine@lab.example") == 0
    assert throttle.attempt("victim@lab.example", "192.0.2.1") == 0
    assert throttle.attempt("other@lab.example", "192.0.2.1") > 0


def test_attempts_expire_after_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(account_attempts=1, address_attempts=10, window_s=60, clock=clock)
    assert throttle.attempt("a@lab.example", "192.0.2.1") == 0
    assert throttle.attempt("a@lab.example", "192.0.2.1") == 61
    clock.now += 61
    assert throttle.attempt("a@lab.example", "192.0.2.1") == 0


def test_expired_keys_are_swept() -> None:
    clock = Clock()
    limiter = AttemptLimiter(max_attempts=5, window_s=60, clock=clock)
    for i in range(5000):
        limiter.count(f"sprayed{i}@lab.example")
        clock.now += 1
    assert len(limiter) <= 1024


# -- trusted proxies ---------------------------------------------------------------------------


def test_no_proxy_is_trusted_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLAB_FORWARDED_ALLOW_IPS", raising=False)
    assert Settings().forwarded_allow_ips == ""


@pytest.mark.parametrize(("given", "kept"), [
    (" 127.0.0.1 , 10.0.0.0/8,::1", "127.0.0.1,10.0.0.0/8,::1"), ("*", "*")])
def test_trusted_proxies_are_addresses_or_networks(given: str, kept: str) -> None:
    assert Settings(forwarded_allow_ips=given).forwarded_allow_ips == kept


def test_a_proxy_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings(forwarded_allow_ips="127.0.0.1,proxy.example")


def test_replicas_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    """Many starts racing on a fresh shared data dir read back one and the same secret."""
    from concurrent.futures import ThreadPoolExecutor

    from vlab_backend.auth import load_or_create_secret

    path = tmp_path / "shared" / "jwt.secret"
    with ThreadPoolExecutor(16) as pool:
        secrets_seen = set(pool.map(lambda _: load_or_create_secret(path), range(64)))
    assert secrets_seen == {path.read_text().strip()}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["jwt.secret"]  # no temporary left
