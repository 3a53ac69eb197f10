"""Hosts register their whole target configuration: the API upserts their target instances,
which the scheduler then sees; a host's node state enables or disables them; registration is
an idempotent upsert, safe in parallel on SQLite and PostgreSQL; the host-scoped credential
reads the mesh and updates its own host, nothing else."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.server import LiveServer
from vlab_backend.api import create_app
from vlab_backend.api.app import startup_instances, sync_targets
from vlab_backend.config import Settings
from vlab_backend.hosts.mesh import generate_keypair
from vlab_backend.hosts.registry import (
    Registration,
    RegistrationConflict,
    mark_host_state,
    node_state,
    register_host,
    sync_node_states,
)
from vlab_backend.store.database import MIGRATIONS, Database
from vlab_backend.store.schema import Host, TargetInstance
from vlab_backend.targets import parse_target_config

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
PARALLEL = 40


def example(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((EXAMPLES / f"host-{name}-targets.json").read_text())
    return config


def body(name: str, config: dict[str, Any] | None = None, role: str = "targets",
         key: str | None = None) -> dict[str, Any]:
    return {"name": name, "public_key": key or generate_keypair()[1],
            "endpoint": f"{name}.lab:51820", "role": role,
            "target_config": example(name) if config is None else config}


def rpi5_config(*uids: str, version: str = "2.16") -> dict[str, Any]:
    return {"rpi5": [{"target_uid": uid, "memory": {"ram": 8 << 30},
                      "engines": {"tflite": {"version": version,
                                             "image": "registry.lab/vlab/rpi5-tflite:1.0.0",
                                             "supported_types": ["TYPE1", "TYPE2"]}}}
                     for uid in uids]}


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The API in process (local runner, this machine's cores as its own targets), with the
    local administrator's token."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        warm_workers=False)
    with TestClient(create_app(settings)) as client:
        token = (tmp_path / "data" / "local-admin.token").read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def instances(client: TestClient) -> dict[str, dict[str, Any]]:
    """target_uid -> its overview entry (with the type's free count)."""
    answer = client.get("/api/targets/overview")
    assert answer.status_code == 200, answer.text
    return {i["target_uid"]: {**i, "type_free": t["free"]}
            for t in answer.json()["targets"] for i in t["instances"]}


def schedulable(client: TestClient) -> dict[str, list[str]]:
    """What submissions accept: target type -> enabled instances."""
    devices = client.get("/api/benchmarks/config").json()["devices"]
    return {name: device["instances"] for name, device in devices.items()}


def test_registered_targets_reach_the_scheduler(api: TestClient) -> None:
    for name, role in (("alpha", "services"), ("beta", "targets"), ("gamma", "targets")):
        answer = api.post("/api/hosts", json=body(name, role=role))
        assert answer.status_code == 201, answer.text
        registered = answer.json()
        assert registered["role"] == role and registered["state"] == "ready"
        assert registered["host_token"].startswith("vlabhost_")
    seen = instances(api)
    rpi5 = seen["rpi5-0001"]
    assert (rpi5["target"], rpi5["host"], rpi5["state"], rpi5["host_state"], rpi5["remote"]) \
        == ("rpi5", "alpha", "free", "ready", True)
    assert rpi5["engines"]["tflite"]["supported_types"] == ["TYPE1", "TYPE2"]
    assert seen["jetson-orin-0001"]["host"] == "beta"
    assert seen["host-cpu-gamma-0"]["host"] == "gamma"
    assert seen["host-cpu-0"]["remote"] is False  # this server's own cores stay
    devices = schedulable(api)
    assert devices["rpi5"] == ["rpi5-0001"] and devices["jetson-orin"] == ["jetson-orin-0001"]
    # The instance carries what the Nomad runner needs: the engine's image, env, devices.
    detail = api.get("/api/hosts/beta").json()
    assert detail["instances"] == {"jetson-orin-0001": "ready"}
    assert detail["target_config"] == example("beta")


def test_registration_is_an_idempotent_upsert(api: TestClient) -> None:
    key = generate_keypair()[1]
    first = api.post("/api/hosts", json=body("alpha", rpi5_config("rpi5-1", "rpi5-2"),
                                             key=key)).json()
    again = api.post("/api/hosts", json=body("alpha", rpi5_config("rpi5-1", "rpi5-2"),
                                             key=key)).json()
    assert again["mesh_address"] == first["mesh_address"]
    assert again["instances"] == first["instances"] == {"rpi5-1": "ready", "rpi5-2": "ready"}
    # An administrator's registration rotates the host credential.
    old = httpx.Headers({"Authorization": f"Bearer {first['host_token']}"})
    assert api.get("/api/hosts", headers=old).status_code == 401
    host_auth = {"Authorization": f"Bearer {again['host_token']}"}
    # The host updates itself with its own credential: a new engine version, one board gone.
    update = api.post("/api/hosts", headers=host_auth,
                      json=body("alpha", rpi5_config("rpi5-1", version="2.17"), key=key))
    assert update.status_code == 201, update.text
    assert update.json()["host_token"] is None  # its credential stays
    assert update.json()["instances"] == {"rpi5-1": "ready"}
    seen = instances(api)
    assert seen["rpi5-1"]["engines"]["tflite"]["version"] == "2.17"
    assert "rpi5-2" not in seen and schedulable(api)["rpi5"] == ["rpi5-1"]
    # A board that comes back is the same instance again.
    api.post("/api/hosts", headers=host_auth,
             json=body("alpha", rpi5_config("rpi5-1", "rpi5-2"), key=key))
    assert schedulable(api)["rpi5"] == ["rpi5-1", "rpi5-2"]


def test_a_target_belongs_to_one_host_and_bad_files_store_nothing(api: TestClient) -> None:
    assert api.post("/api/hosts", json=body("alpha")).status_code == 201
    clash = api.post("/api/hosts", json=body("delta", rpi5_config("rpi5-0001")))
    assert clash.status_code == 409
    assert "rpi5-0001 is already declared by alpha" in clash.json()["error"]
    no_image = {"rpi5": [{"target_uid": "rpi5-9", "engines": {"tflite": {"repository": "/r"}}}]}
    refused = api.post("/api/hosts", json=body("delta", no_image))
    assert refused.status_code == 400 and "has no 'image'" in refused.json()["error"]
    assert api.post("/api/hosts", json=body("delta", {"rpi5": [{"engines": {}}]})
                    ).status_code == 400
    assert api.get("/api/hosts/delta").status_code == 404
    assert api.post("/api/hosts", json={**body("delta", rpi5_config("rpi5-9")),
                                        "role": "boss"}).status_code == 422
    assert set(instances(api)) >= {"rpi5-0001"} and "rpi5-9" not in instances(api)


def test_down_or_drained_hosts_targets_are_not_scheduled(api: TestClient) -> None:
    api.post("/api/hosts", json=body("alpha", rpi5_config("rpi5-1")))
    for state in ("down", "draining", "ineligible", "disconnected"):
        answer = api.put("/api/hosts/alpha/state", json={"state": state})
        assert answer.status_code == 200 and answer.json()["instances"] == {"rpi5-1": state}
        entry = instances(api)["rpi5-1"]
        assert (entry["state"], entry["host_state"], entry["type_free"]) == (state, state, 0)
        assert "rpi5" not in schedulable(api)
    api.put("/api/hosts/alpha/state", json={"state": "ready"})
    assert instances(api)["rpi5-1"]["state"] == "free" and schedulable(api)["rpi5"] == ["rpi5-1"]
    assert api.put("/api/hosts/alpha/state", json={"state": "gone"}).status_code == 422
    # Re-registering a down host keeps it unscheduled until its node is ready.
    api.put("/api/hosts/alpha/state", json={"state": "down"})
    api.post("/api/hosts", json=body("alpha", rpi5_config("rpi5-1", "rpi5-2")))
    assert "rpi5" not in schedulable(api)
    assert {instances(api)[u]["state"] for u in ("rpi5-1", "rpi5-2")} == {"down"}


def test_the_host_credential_reads_the_mesh_and_updates_its_own_host(
        api: TestClient) -> None:
    alpha = api.post("/api/hosts", json=body("alpha")).json()
    api.post("/api/hosts", json=body("beta"))
    host = httpx.Headers({"Authorization": f"Bearer {alpha['host_token']}"})
    peers = api.get("/api/hosts", headers=host)
    assert peers.status_code == 200 and [p["name"] for p in peers.json()] == ["alpha", "beta"]
    assert api.get("/api/hosts/alpha", headers=host).status_code == 200
    assert api.get("/api/hosts/beta", headers=host).status_code == 403
    assert api.post("/api/hosts", headers=host, json=body("beta")).status_code == 403
    assert api.put("/api/hosts/alpha/state", headers=host,
                   json={"state": "down"}).status_code == 403
    assert api.delete("/api/hosts/beta", headers=host).status_code == 403
    for path in ("/api/targets/overview", "/api/benchmarks", "/api/users/tokens"):
        assert api.get(path, headers=host).status_code == 401, path
    # A removed host's credential stops working; its targets are no longer scheduled.
    assert api.delete("/api/hosts/alpha").json()["deleted"] is True
    assert api.get("/api/hosts", headers=host).status_code == 401
    assert "rpi5-0001" not in instances(api) and "rpi5" not in schedulable(api)
    bogus = httpx.Headers({"Authorization": "Bearer vlabhost_nothing"})
    assert api.get("/api/hosts", headers=bogus).status_code == 401


@pytest.mark.parametrize("endpoint", [
    "alpha.lab:51820\n[Interface]\nPostUp = touch /tmp/pwned", "alpha.lab:51820 ",
    "alpha.lab :51820", "alpha.lab:51820\r", "alpha\tlab:51820", "alpha.lab", "alpha.lab:",
    "alpha.lab:0", "alpha.lab:65536", "alpha.lab:+80", ":51820", "-alpha.lab:51820",
    "alpha_1.lab:51820", "10.0.0.1.5:51820", "999.1.1.1:51820", "::1:51820", "[::1]",
    "[fe80::1%eth0]:51820", "[not-v6]:51820", "alpha.lab:51820#x", "élan.lab:51820",
    "a" * 64 + ".lab:51820",
])
def test_an_endpoint_that_is_not_host_port_is_refused(api: TestClient, endpoint: str) -> None:
    """The endpoint is written into every peer's wg-quick configuration: a newline in it
    could add an `[Interface] PostUp = <command>`."""
    answer = api.post("/api/hosts", json={**body("alpha"), "endpoint": endpoint})
    assert answer.status_code == 422, answer.text
    assert "endpoint" in answer.json()["error"]
    assert api.get("/api/hosts/alpha").status_code == 404


def test_endpoints_names_and_keys_that_may_reach_a_configuration(api: TestClient) -> None:
    for index, endpoint in enumerate(("alpha.lab:51820", "alpha.lab.:1", "192.168.1.10:65535",
                                      "[2001:db8::1]:51820", "localhost:51820", "")):
        answer = api.post("/api/hosts", json={**body(f"h{index}", {}), "endpoint": endpoint})
        assert answer.status_code == 201, (endpoint, answer.text)
        assert answer.json()["endpoint"] == endpoint
    key = generate_keypair()[1]
    for bad_key in (key + "\n", key.rstrip("=") + "A", "A" * 43 + "=\nPostUp = x", " " + key):
        answer = api.post("/api/hosts", json=body("beta", key=bad_key))
        assert answer.status_code in (400, 422), answer.text
        assert "public_key" in answer.json()["error"]
    for name in ("beta\n[Interface]", "beta gamma", "beta\r", "-beta"):
        answer = api.post("/api/hosts", json={**body("beta"), "name": name})
        assert answer.status_code == 400 and "host name" in answer.json()["error"]
    assert api.get("/api/hosts/beta").status_code == 404


def test_a_host_credential_binds_only_its_own_or_new_targets(api: TestClient) -> None:
    """Another host's detached board and an inventory entry (resources API) are bound to a
    host by an administrator's registration only."""
    alpha = api.post("/api/hosts", json=body("alpha", rpi5_config("rpi5-a"))).json()
    beta = api.post("/api/hosts", json=body("beta", rpi5_config("rpi5-b"))).json()
    as_alpha = {"Authorization": f"Bearer {alpha['host_token']}"}
    as_beta = {"Authorization": f"Bearer {beta['host_token']}"}
    # beta drops its board: detached, still named after beta.
    assert api.post("/api/hosts", headers=as_beta, json=body("beta", {},
                    key=beta["public_key"])).status_code == 201
    with api.app.state.vlab.db.session() as session:  # type: ignore[attr-defined]
        session.add(TargetInstance(uid="rpi5-inventory", target_type="rpi5", host="",
                                   engines={}, enabled=False))
    for uid in ("rpi5-b", "rpi5-inventory"):
        taken = api.post("/api/hosts", headers=as_alpha, json=body(
            "alpha", rpi5_config("rpi5-a", uid, "rpi5-new"), key=alpha["public_key"]))
        assert taken.status_code == 409, taken.text
        assert "only an administrator" in taken.json()["error"]
        assert api.get("/api/hosts/alpha").json()["instances"] == {"rpi5-a": "ready"}
    # Its own and brand-new boards, with its own credential; the others by an administrator.
    own = api.post("/api/hosts", headers=as_alpha, json=body(
        "alpha", rpi5_config("rpi5-a", "rpi5-new"), key=alpha["public_key"]))
    assert own.status_code == 201 and set(own.json()["instances"]) == {"rpi5-a", "rpi5-new"}
    # beta takes its own detached board back with its credential.
    back = api.post("/api/hosts", headers=as_beta, json=body("beta", rpi5_config("rpi5-b"),
                                                             key=beta["public_key"]))
    assert back.status_code == 201 and back.json()["instances"] == {"rpi5-b": "ready"}
    api.post("/api/hosts", headers=as_beta, json=body("beta", {},
                                                      key=beta["public_key"]))
    admin = api.post("/api/hosts", json=body(
        "alpha", rpi5_config("rpi5-a", "rpi5-b", "rpi5-inventory"), key=alpha["public_key"]))
    assert admin.status_code == 201, admin.text
    assert set(admin.json()["instances"]) == {"rpi5-a", "rpi5-b", "rpi5-inventory"}


def test_parallel_registrations_all_succeed(database_url: str) -> None:
    """40 hosts at once, then the same 40 again and 40 registrations of one new name: no
    conflict, one mesh address each, every instance once."""
    db = Database(database_url)
    db.migrate()
    keys = [generate_keypair()[1] for _ in range(PARALLEL)]

    def register(index: int, name: str | None = None) -> str:
        with db.session() as session:
            host = register_host(session, Registration(
                name=name or f"host-{index}", public_key=keys[index], role="targets",
                target_config=rpi5_config(f"rpi5-{name or index}")))
            return host.mesh_address

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            first = list(pool.map(register, range(PARALLEL)))
            second = list(pool.map(register, range(PARALLEL)))
            same = list(pool.map(lambda i: register(i, "omega"), range(PARALLEL)))
        assert len(set(first)) == PARALLEL and second == first
        assert len(set(same)) == 1 and same[0] not in first
        with db.session() as session:
            assert session.scalar(select(sa.func.count()).select_from(Host)) == PARALLEL + 1
            rows = session.scalars(select(TargetInstance)).all()
            assert len(rows) == PARALLEL + 1 and all(r.enabled for r in rows)
    finally:
        db.dispose()


def test_parallel_registrations_through_the_api(database_url: str, tmp_path: Path) -> None:
    """What the operator saw (9 x 409 of 40 on PostgreSQL): each answer is 201."""
    server = LiveServer(tmp_path / "data", env={"VLAB_DATABASE_URL": database_url,
                                                "VLAB_WARM_WORKERS": "0"}).start()
    try:
        with server.client() as client, ThreadPoolExecutor(PARALLEL) as pool:
            bodies = [body(f"host-{i}", rpi5_config(f"rpi5-{i}")) for i in range(PARALLEL)]
            answers = list(pool.map(lambda b: client.post("/api/hosts", json=b), bodies))
            assert [a.status_code for a in answers] == [201] * PARALLEL
            again = list(pool.map(lambda b: client.post("/api/hosts", json=b), bodies))
            assert [a.status_code for a in again] == [201] * PARALLEL
            assert [a.json()["mesh_address"] for a in again] == \
                [a.json()["mesh_address"] for a in answers]
    finally:
        server.stop()


def test_mark_host_state_for_the_cluster_watcher(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    try:
        with db.session() as session:
            for name in ("alpha", "beta"):
                register_host(session, Registration(
                    name=name, public_key=generate_keypair()[1],
                    target_config=rpi5_config(f"rpi5-{name}")))
        with db.session() as session:
            assert mark_host_state(session, "alpha", "draining") == ["rpi5-alpha"]
        with db.session() as session:
            row = session.get(TargetInstance, "rpi5-alpha")
            assert row is not None and (row.enabled, row.state) == (False, "draining")
            with pytest.raises(ValueError, match="unknown host state"):
                mark_host_state(session, "alpha", "sleepy")
            with pytest.raises(LookupError):
                mark_host_state(session, "nobody", "down")
        # A whole /v1/nodes listing: alpha's node is back, beta has no node any more.
        with db.session() as session:
            assert sync_node_states(session, [
                {"Name": "alpha", "Status": "ready", "SchedulingEligibility": "eligible",
                 "Drain": False}]) == {"alpha": "ready", "beta": "down"}
        with db.session() as session:
            states = {r.uid: (r.enabled, r.state)
                      for r in session.scalars(select(TargetInstance))}
            assert states == {"rpi5-alpha": (True, "ready"), "rpi5-beta": (False, "down")}
        with db.session() as session, pytest.raises(RegistrationConflict):
            register_host(session, Registration(name="gamma", public_key=generate_keypair()[1],
                                                target_config=rpi5_config("rpi5-alpha")))
    finally:
        db.dispose()


@pytest.mark.parametrize(("node", "state"), [
    ({"Status": "ready", "SchedulingEligibility": "eligible", "Drain": False}, "ready"),
    ({"Status": "ready", "SchedulingEligibility": "ineligible", "Drain": True}, "draining"),
    ({"Status": "ready", "SchedulingEligibility": "eligible",
      "DrainStrategy": {"Deadline": 3600}}, "draining"),
    ({"Status": "ready", "SchedulingEligibility": "ineligible"}, "ineligible"),
    ({"Status": "down"}, "down"),
    ({"Status": "disconnected"}, "disconnected"),
    ({"Status": "initializing"}, "initializing"),
    ({"Status": "something new"}, "down"),
    ({}, "down"),
])
def test_node_state(node: dict[str, Any], state: str) -> None:
    assert node_state(node) == state


def test_a_restart_keeps_the_registered_instances(tmp_path: Path) -> None:
    """`vlab serve` describes only its own instances at start; on a cluster without
    `--targets` it has none (the API container's cores are no target)."""
    db = Database(f"sqlite:///{tmp_path / 'vlab.db'}")
    db.migrate()
    try:
        with db.session() as session:
            register_host(session, Registration(name="alpha", public_key=generate_keypair()[1],
                                                target_config=rpi5_config("rpi5-1")))
        nomad = Settings(data_dir=tmp_path / "d", runner="nomad")
        assert startup_instances(nomad) == []
        local = parse_target_config({"host-cpu": [{"target_uid": "host-cpu-0", "engines": {
            "onnxruntime": {"repository": "/r"}}}], "rpi5": [{"target_uid": "rpi5-1",
            "engines": {"tflite": {"repository": "/r"}}}]})
        sync_targets(db, startup_instances(nomad))
        sync_targets(db, local)  # a file that also names the host's board: the host keeps it
        with db.session() as session:
            rows = {r.uid: r for r in session.scalars(select(TargetInstance))}
            assert rows["rpi5-1"].enabled and rows["rpi5-1"].host == "alpha"
            assert rows["rpi5-1"].engines["tflite"]["image"]
            assert rows["host-cpu-0"].enabled and rows["host-cpu-0"].host_id is None
        sync_targets(db, [])
        with db.session() as session:
            rows = {r.uid: r for r in session.scalars(select(TargetInstance))}
            assert rows["rpi5-1"].enabled
            assert (rows["host-cpu-0"].enabled, rows["host-cpu-0"].state) == (False, "detached")
    finally:
        db.dispose()


def test_the_migration_keeps_hosts_and_instances(database_url: str) -> None:
    """0005 on a store with hosts: a full host becomes a services host, a disabled instance is
    detached; and it downgrades."""
    db = Database(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", db.engine.url.render_as_string(False))

    def migrate(revision: str, down: bool = False) -> None:
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)

    try:
        migrate("0004")
        with db.engine.begin() as connection:
            for index, (name, minimal) in enumerate((("alpha", False), ("gamma", True))):
                connection.execute(sa.text(
                    "INSERT INTO hosts (name, public_key, endpoint, mesh_address, minimal, "
                    "targets, created_at) VALUES (:n, 'k', '', :a, :m, '[]', :t)"),
                    {"n": name, "a": f"10.77.0.{index + 1}", "m": minimal,
                     "t": "2026-01-01T00:00:00+00:00"})
            for uid, enabled in (("on-0", True), ("off-0", False)):
                connection.execute(sa.text(
                    "INSERT INTO target_instances (uid, target_type, host, engines, cpuset, "
                    "memory, enabled, notes, serial_number, registered_engines) VALUES "
                    "(:u, 't', 'localhost', '{}', '[]', '{}', :e, '', '', '[]')"),
                    {"u": uid, "e": enabled})
        migrate("head")
        with db.engine.connect() as connection:
            roles = dict(connection.execute(sa.text("SELECT name, role FROM hosts")).all())
            states = dict(connection.execute(sa.text(
                "SELECT uid, state FROM target_instances")).all())
        assert roles == {"alpha": "services", "gamma": "targets"}
        assert states == {"on-0": "ready", "off-0": "detached"}
        migrate("0004", down=True)
        migrate("head")
    finally:
        db.dispose()


def test_registration_body_of_the_sdk_is_what_the_api_takes(api: TestClient,
                                                            tmp_path: Path) -> None:
    from vlab_backend.hosts.sdk import host_token, init_host, register

    files = init_host(EXAMPLES / "host-beta-targets.json", tmp_path / "beta", name="beta",
                      role="targets")
    answer = register(api, files, tmp_path / "beta", endpoint="beta.lab:51820")
    assert answer["instances"] == {"jetson-orin-0001": "ready"}
    token = host_token(tmp_path / "beta")
    assert token == answer["host_token"]
    assert ((tmp_path / "beta" / "host.token").stat().st_mode & 0o777) == 0o600
    # Again with the host's own credential: the same host, the token kept.
    own = TestClient(api.app, headers={"Authorization": f"Bearer {token}"})
    changed = copy.deepcopy(files.target_config)
    changed["jetson-orin"][0]["engines"]["onnxruntime"]["version"] = "1.19"
    files.target_config = changed
    assert register(own, files, tmp_path / "beta")["host_token"] is None
    assert host_token(tmp_path / "beta") == token
    assert instances(api)["jetson-orin-0001"]["engines"]["onnxruntime"]["version"] == "1.19"
