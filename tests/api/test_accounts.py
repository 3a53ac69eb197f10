"""API tokens, token lifetimes, the login rate limit, trusted proxies and forged tokens."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from tests.server import LiveServer, add_user


def test_api_tokens_are_created_listed_and_revoked(server: LiveServer) -> None:
    add_user(server, "ci@lab.example", "a long password")
    login = httpx.post(server.url + "/api/users/login",
                       json={"email": "ci@lab.example", "password": "a long password"}).json()
    env = {"VLAB_TOKEN": login["access_token"]}
    created = server.cli("token", "--name", "nightly", "--json", **env)
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["token"].startswith("vlab_") and token["name"] == "nightly"
    # The new token works on its own, e.g. for the CLI.
    assert server.cli("targets", VLAB_TOKEN=token["token"]).returncode == 0
    listed = server.cli("token", "--list", **env).stdout
    assert "nightly" in listed and token["token"] not in listed
    assert server.cli("token", "--revoke", str(token["id"]), **env).returncode == 0
    refused = server.cli("targets", VLAB_TOKEN=token["token"])
    assert refused.returncode == 1 and "revoked" in refused.stderr


def test_access_tokens_outlive_the_client_refresh_period(server: LiveServer) -> None:
    add_user(server, "long@lab.example", "a long password")
    login = httpx.post(server.url + "/api/users/login",
                       json={"email": "long@lab.example", "password": "a long password"}).json()
    claims = jwt.decode(login["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] > 10 * 60
    # A refresh token is not an access token.
    refused = httpx.get(server.url + "/api/benchmarks",
                        headers={"Authorization": f"Bearer {login['refresh_token']}"})
    assert refused.status_code == 401


def test_failed_logins_are_rate_limited(server: LiveServer) -> None:
    add_user(server, "target@lab.example", "the right password")
    for _ in range(5):
        assert httpx.post(server.url + "/api/users/login", json={
            "email": "target@lab.example", "password": "wrong guess"}).status_code == 401
    limited = httpx.post(server.url + "/api/users/login", json={
        "email": "target@lab.example", "password": "the right password"})
    assert limited.status_code == 429
    assert "too many failed logins" in limited.json()["error"]
    assert int(limited.headers["Retry-After"]) > 0
    # Other accounts are not affected.
    add_user(server, "other@lab.example", "a long password")
    assert httpx.post(server.url + "/api/users/login", json={
        "email": "other@lab.example", "password": "a long password"}).status_code == 200


def test_passwords_are_stored_with_argon2(server: LiveServer) -> None:
    import sqlite3

    add_user(server, "hash@lab.example", "a long password")
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        stored = db.execute("select password_hash from users where email = ?",
                            ("hash@lab.example",)).fetchone()[0]
    assert stored.startswith("$argon2id$") and "a long password" not in stored


def test_forwarded_addresses_do_not_reset_the_login_limit(server: LiveServer) -> None:
    # The default server trusts no proxy: X-Forwarded-For is the client's word, not an address.
    add_user(server, "locked@lab.example", "the right password")
    for _ in range(5):
        assert httpx.post(server.url + "/api/users/login", json={
            "email": "locked@lab.example", "password": "wrong guess"}).status_code == 401
    answers = [httpx.post(server.url + "/api/users/login",
                          headers={"X-Forwarded-For": f"203.0.113.{i}"},
                          json={"email": "locked@lab.example", "password": password}).status_code
               for i, password in enumerate(["another guess"] * 9 + ["the right password"])]
    assert answers == [429] * 10


def access_log_address(server: LiveServer, marker: str) -> str:
    """The client address uvicorn logged for the request whose query is `marker`."""
    server.wait_for_log(marker)
    line = next(line for line in server.log_path.read_text().splitlines() if marker in line)
    return line.split()[1].rsplit(":", 1)[0]


def test_proxy_headers_are_ignored_by_default(server: LiveServer) -> None:
    httpx.get(server.url + "/api/benchmarks/status?default-proxy-probe",
              headers={"X-Forwarded-For": "203.0.113.7"})
    assert access_log_address(server, "default-proxy-probe") == "127.0.0.1"


@pytest.mark.slow
def test_proxy_headers_are_believed_from_a_named_proxy(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", ["--no-warm-workers",
                                            "--forwarded-allow-ips", "127.0.0.1"]).start()
    try:
        httpx.get(server.url + "/api/benchmarks/status?named-proxy-probe",
                  headers={"X-Forwarded-For": "203.0.113.7"})
        assert access_log_address(server, "named-proxy-probe") == "203.0.113.7"
    finally:
        server.stop()


def test_a_bad_proxy_setting_is_a_usage_error(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data")
    done = server.cli("serve", "--port", str(server.port), "--data-dir", str(server.data_dir),
                      "--forwarded-allow-ips", "proxy.example")
    assert done.returncode != 0
    assert "not an IP address or network" in done.stderr and "Traceback" not in done.stderr


def forged(server: LiveServer, kind: str = "access", **claims: object) -> str:
    """A JWT signed with the server's own secret."""
    now = datetime.now(UTC)
    body = {"type": kind, "iat": now, "exp": now + timedelta(minutes=5), **claims}
    secret = (server.data_dir / "jwt.secret").read_text().strip()
    return jwt.encode(body, secret, algorithm="HS256")


@pytest.mark.parametrize("sub", [{"sub": "abc"}, {"sub": "1.5"}, {},
                                 {"sub": "99999999999999999999999"}, {"sub": "424242"}])
def test_a_token_with_a_bad_subject_is_refused(server: LiveServer,
                                               sub: dict[str, str]) -> None:
    me = httpx.get(server.url + "/api/users/me",
                   headers={"Authorization": f"Bearer {forged(server, **sub)}"})
    assert me.status_code == 401 and me.json()["error"] in ("invalid token", "unknown user")
    refreshed = httpx.post(server.url + "/api/users/token/refresh",
                           json={"refresh": forged(server, "refresh", **sub)})
    assert refreshed.status_code == 401


def test_the_tokens_of_a_deleted_user_are_refused(server: LiveServer) -> None:
    import sqlite3

    add_user(server, "deleted@lab.example", "a long password")
    login = httpx.post(server.url + "/api/users/login", json={
        "email": "deleted@lab.example", "password": "a long password"}).json()
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        db.execute("delete from users where email = ?", ("deleted@lab.example",))
    me = httpx.get(server.url + "/api/users/me",
                   headers={"Authorization": f"Bearer {login['access_token']}"})
    assert me.status_code == 401 and me.json()["error"] == "unknown user"
    refreshed = httpx.post(server.url + "/api/users/token/refresh",
                           json={"refresh": login["refresh_token"]})
    assert refreshed.status_code == 401
