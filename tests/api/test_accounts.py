"""API tokens, token lifetimes and the login rate limit."""

from __future__ import annotations

import json

import httpx
import jwt

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
