"""The deployment files: the Nomad job files of the services are valid by construction, keep
secrets out and read only what ACLs allow; the gateway's Caddyfile is well formed whatever
runs; the images pin their versions and own their data volume; the wheel ships the notebooks
and the built-in targets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.nomad_feasibility import variable_readable
from vlab_backend.nomad.models import JobRegisterRequest, NomadJob, Template

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
JOBS = sorted((DEPLOY / "nomad").glob("*.json"))
SERVICES = ("vlab-api", "vlab-web", "vlab-gateway", "vlab-db")


def test_every_service_has_a_job_file() -> None:
    assert {p.stem for p in JOBS} == {"vlab-api", "vlab-web", "vlab-gateway", "vlab-db",
                                      "vlab-vpn"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.stem)
def test_job_file_is_valid_and_holds_no_secret(path: Path) -> None:
    job = JobRegisterRequest.model_validate(json.loads(path.read_text())).Job
    assert path.stem == job.ID
    text = path.read_text()
    # Passwords and tokens come from Nomad Variables through templates, never inline.
    assert not re.search(r'"(POSTGRES_PASSWORD|NOMAD_TOKEN|VLAB_TOKEN)":', text)
    for group in job.TaskGroups:
        for service in group.Services:
            assert service.Provider == "nomad"  # Nomad's native service discovery
        for task in group.Tasks:
            for template in task.Templates:
                if "nomadVar" in template.EmbeddedTmpl:
                    assert template.DestPath.startswith("secrets/")


def jobs() -> dict[str, NomadJob]:
    return {p.stem: JobRegisterRequest.model_validate(json.loads(p.read_text())).Job
            for p in JOBS}


def test_vpn_runs_on_every_node_and_services_on_services_hosts() -> None:
    """A node is in one pool (`vlab host init` puts hosts with boards in vlab-targets, a
    services host without boards in vlab-services): the service jobs take any pool and select
    the services hosts by their meta."""
    by_name = jobs()
    assert by_name["vlab-vpn"].Type == "system" and by_name["vlab-vpn"].NodePool == "all"
    for name in SERVICES:
        job = by_name[name]
        assert job.Type == "service" and job.NodePool == "all"
        assert [(c.LTarget, c.Operand, c.RTarget) for c in job.Constraints] == \
            [("${meta.vlab_role}", "=", "services")]


def test_each_job_reads_only_its_own_variables() -> None:
    """With ACLs on, a workload reads only nomad/jobs/<its job>[/<group>[/<task>]]: vlab-api
    could not read nomad/jobs/vlab-db (the review's finding)."""
    for job in jobs().values():
        for group in job.TaskGroups:
            for task in group.Tasks:
                for template in task.Templates:
                    for path in re.findall(r'nomadVar "([^"]+)"', template.EmbeddedTmpl):
                        assert variable_readable(path, job.ID, group.Name, task.Name), \
                            f"{job.ID}/{task.Name} reads {path}"
    policy = (DEPLOY / "nomad" / "acl" / "vlab-api.policy.hcl").read_text()
    assert 'path "nomad/jobs/vlab-bench-*"' in policy and 'policy = "read"' in policy


# -- the gateway's Caddyfile -------------------------------------------------------------------

def render(template: str, services: dict[str, list[tuple[str, int]]]) -> str:
    """The subset of consul-template the gateway's template uses, evaluated: variables bound
    to `nomadService "name"`, `if`/`else`/`end`, `range $var`, `.Address`, `.Port`."""
    tokens = re.split(r"(\{\{.*?\}\})", template)
    variables: dict[str, list[tuple[str, int]]] = {}
    out: list[str] = []

    def run(at: int, item: tuple[str, int] | None, emit: bool) -> tuple[int, str]:
        """Evaluate from token `at` to the next else/end at this level; returns where it
        stopped and which keyword stopped it."""
        while at < len(tokens):
            token = tokens[at]
            if not token.startswith("{{"):
                if emit:
                    out.append(token)
                at += 1
                continue
            action = token[2:-2].strip()
            if action in ("else", "end"):
                return at, action
            if match := re.fullmatch(r'(\$\w+) := nomadService "([\w-]+)"', action):
                if emit:
                    variables[match.group(1)] = services.get(match.group(2), [])
                at += 1
            elif match := re.fullmatch(r"if (\$\w+)", action):
                truth = bool(variables.get(match.group(1))) if emit else False
                at, stop = run(at + 1, item, emit and truth)
                if stop == "else":
                    at, stop = run(at + 1, item, emit and not truth)
                assert stop == "end"
                at += 1
            elif match := re.fullmatch(r"range (\$\w+)", action):
                body_start = at + 1
                entries = variables.get(match.group(1), []) if emit else []
                at, stop = run(body_start, item, False)  # find the end
                for entry in entries:
                    run(body_start, entry, True)
                assert stop == "end"
                at += 1
            elif action in (".Address", ".Port"):
                if emit:
                    assert item is not None, f"{action} outside a range"
                    out.append(str(item[0] if action == ".Address" else item[1]))
                at += 1
            else:
                raise AssertionError(f"unexpected template action {action!r}")
        return at, ""

    run(0, None, True)
    return "".join(out)


def caddyfile_problems(text: str) -> list[str]:
    depth, problems = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        depth += line.count("{") - line.count("}")
        if depth < 0:
            problems.append(f"line {number}: unbalanced '}}'")
    if depth:
        problems.append(f"{depth} unclosed '{{'")
    return problems


def gateway_template() -> Template:
    task = jobs()["vlab-gateway"].TaskGroups[0].Tasks[0]
    return task.Templates[0]


@pytest.mark.parametrize("running", [
    ("vlab-api", "vlab-lab", "vlab-dashboard"), ("vlab-api",), ("vlab-api", "vlab-lab"), (),
], ids=["all", "api only (no web)", "no dashboard", "nothing yet"])
def test_the_gateway_config_is_well_formed_whatever_runs(running: tuple[str, ...]) -> None:
    addresses = {name: [("10.0.0.1", 20000 + i), ("10.0.0.2", 21000 + i)]
                 for i, name in enumerate(running)}
    text = render(gateway_template().EmbeddedTmpl, addresses)
    assert caddyfile_problems(text) == []
    for prefix, service in (("/api/*", "vlab-api"), ("/dashboard/*", "vlab-dashboard"),
                            ("", "vlab-lab")):
        block = re.search(r"handle " + re.escape(prefix) + r"\s*\{([^}]*)\}", text)
        assert block is not None, (prefix, text)
        if service in running:
            assert " 10.0.0.1:" in block.group(1) and " 10.0.0.2:" in block.group(1)
        else:
            assert "respond" in block.group(1) and "503" in block.group(1)


def test_the_old_gateway_template_was_unbalanced_without_web() -> None:
    """What the review found, reproduced with the same renderer."""
    old = ('{{ $api := nomadService "vlab-api" }}{{ $lab := nomadService "vlab-lab" }}'
           "{{ range $api }}:443 {\n  handle /api/* {\n    reverse_proxy {{ .Address }}:"
           "{{ .Port }}\n  }\n{{ end }}{{ range $lab }}  handle {\n    reverse_proxy "
           "{{ .Address }}:{{ .Port }}\n  }\n}\n{{ end }}")
    assert caddyfile_problems(render(old, {"vlab-api": [("a", 1)]})) == ["1 unclosed '{'"]


def test_the_gateway_reloads_in_a_way_caddy_understands() -> None:
    """Caddy v2 ignores SIGHUP: a changed Caddyfile restarts the task."""
    template = gateway_template()
    assert template.ChangeMode == "restart" and not template.ChangeSignal
    assert "SIGHUP" not in (DEPLOY / "nomad" / "vlab-gateway.json").read_text()


def test_health_checks_need_no_token(tmp_path: Path) -> None:
    """The API's check is its public status endpoint; JupyterLab's is Jupyter's `GET /api`
    (its version, the one endpoint it serves without a token; `/api/status` needs one)."""
    from fastapi.testclient import TestClient
    from jupyter_server.base.handlers import APIVersionHandler
    from jupyter_server.services.api.handlers import APIStatusHandler

    from vlab_backend.api import create_app
    from vlab_backend.config import Settings

    checks = {check.Name: check.Path for job in jobs().values() for group in job.TaskGroups
              for service in group.Services for check in service.Checks}
    assert checks["vlab-api-alive"] == "/api/benchmarks/status"
    assert checks["vlab-lab-alive"] == "/api" and "/api/status" not in checks.values()
    assert getattr(APIVersionHandler.get, "__allow_unauthenticated", False)
    assert not getattr(APIStatusHandler.get, "__allow_unauthenticated", False)
    voila = jobs()["vlab-web"].TaskGroups[0].Tasks[1]
    assert "--Voila.base_url=/dashboard/" in voila.Config["args"]
    assert checks["vlab-dashboard-alive"] == "/dashboard/"
    with TestClient(create_app(Settings(data_dir=tmp_path, warm_workers=False))) as client:
        assert client.get("/api/benchmarks/status").status_code == 200  # no token sent


# -- images --------------------------------------------------------------------------------------

def deploy_texts() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(DEPLOY.rglob("*"))
            if p.is_file()}


def test_no_floating_latest_tags() -> None:
    for name, text in deploy_texts().items():
        assert not re.search(r":latest\b", text), name
    images = [task.Config["image"] for job in jobs().values() for group in job.TaskGroups
              for task in group.Tasks]
    for image in images:
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+){1,2}(-[\w.]+)?", image), image
    for dockerfile in (DEPLOY / "images").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
        for base in re.findall(r"^FROM (\S+)", text, re.M):
            resolved = base
            for name, value in defaults.items():
                resolved = resolved.replace("${" + name + "}", value)
            assert re.search(r":\d+(\.\d+)+", resolved), (dockerfile.name, resolved)


def test_versions_are_build_args() -> None:
    vlab = (DEPLOY / "images" / "vlab.Dockerfile").read_text()
    assert "ARG PYTHON_VERSION=" in vlab and "FROM python:${PYTHON_VERSION}-slim" in vlab
    for name in ("vpn.Dockerfile", "target.Dockerfile"):
        text = (DEPLOY / "images" / name).read_text()
        assert "ARG VLAB_IMAGE=" in text and "FROM ${VLAB_IMAGE}" in text
    assert "buildx build --platform linux/amd64,linux/arm64" in vlab


def test_the_image_owns_its_data_volume_before_dropping_root() -> None:
    """A Nomad host volume is root's: the entry point gives it to vlab, then drops to vlab
    (no `USER vlab` that would find /data read-only)."""
    vlab = (DEPLOY / "images" / "vlab.Dockerfile").read_text()
    assert not re.search(r"^USER vlab", vlab, re.M)
    assert 'ENTRYPOINT ["vlab-entrypoint"]' in vlab
    assert "COPY deploy/images/entrypoint.sh /usr/local/bin/vlab-entrypoint" in vlab
    entrypoint = (DEPLOY / "images" / "entrypoint.sh").read_text()
    assert "chown vlab:vlab" in entrypoint and "exec setpriv --reuid=vlab" in entrypoint
    assert os.access(DEPLOY / "images" / "entrypoint.sh", os.X_OK)
    # The VPN (root, NET_ADMIN) and the targets' pipeline run their command as it is.
    for name in ("vpn.Dockerfile", "target.Dockerfile"):
        assert "ENTRYPOINT []" in (DEPLOY / "images" / name).read_text()


def test_images_exist_for_the_pipeline_and_targets() -> None:
    target = (DEPLOY / "images" / "target.Dockerfile").read_text()
    assert "vlab_backend.pipeline.remote" in target and "COPY app/ /app/" in target
    assert "wireguard-tools" in (DEPLOY / "images" / "vpn.Dockerfile").read_text()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins (`!` re-includes); a pattern matches a
    path or any of its parent folders; `**` matches any number of folders."""
    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*") \
            .replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_context_lean() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "test-artifacts/report.html",
                 ".mypy_cache/3.11/x.json", ".ruff_cache/x", ".pytest_cache/v/x",
                 "backend/vlab_backend/__pycache__/app.cpython-311.pyc", "build/lib/x.py",
                 "vlab_workbench.egg-info/PKG-INFO", "notebooks/.ipynb_checkpoints/x.ipynb",
                 ".hypothesis/examples/x", "benchmarks/out/run.json"):
        assert dockerignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "backend/vlab_backend/api/app.py",
                 "notebooks/dashboard.ipynb", "targets/host-cpu/AI_Build/build.sh",
                 "deploy/images/entrypoint.sh", "jupyter-config/jupyter_server_config.d/"
                 "vlab_server_ext.json", "vlab_kernel/cli.py"):
        assert not dockerignored(path, patterns), path


# -- the wheel -----------------------------------------------------------------------------------

def tracked(folder: str) -> list[str]:
    done = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.slow
def test_the_wheel_ships_the_notebooks_and_targets(tmp_path: Path) -> None:
    """Voila's dashboard and the built-in host-cpu target come with an installed wheel, and
    the installed lab finds them (in a fresh environment: nothing here is touched)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w",
                    str(tmp_path / "wheel")], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "wheel").glob("vlab_workbench-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        infos = {info.filename: info for info in archive.infolist()}
    data = f"{wheel.name.split('-py3')[0]}.data/data/share/vlab/"
    expected = tracked("notebooks") + tracked("targets")
    assert any(p.endswith("dashboard.ipynb") for p in expected)
    for path in expected:
        assert data + path in infos, path
        if path.endswith(".sh"):  # the pipeline runs the target's scripts as they are
            assert (infos[data + path].external_attr >> 16) & 0o111, path
    assert "vlab_kernel/shipped.py" in infos
    # Installed in a fresh environment, the lab finds its data there.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=600)
    done = subprocess.run(
        [str(python), "-c", "from vlab_kernel.shipped import shipped_folder; "
         "print(shipped_folder('targets')); print(shipped_folder('notebooks'))"],
        capture_output=True, text=True, cwd=tmp_path, check=True, timeout=60)
    targets, notebooks = (Path(line) for line in done.stdout.split())
    assert targets == (venv / "share" / "vlab" / "targets").resolve()
    assert (targets / "host-cpu" / "AI_Manager" / "manager.sh").is_file()
    assert (notebooks / "dashboard.ipynb").is_file()


def test_every_shipped_folder_file_is_in_the_wheel_data() -> None:
    """Each file of `targets/` and `notebooks/` matches a data-files entry that installs it
    at the same place under share/vlab (a wheel without it fails on its first use)."""
    import fnmatch
    import tomllib

    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["data-files"]
    missing = []
    for folder in ("targets", "notebooks"):
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT).as_posix()
            parent = path.parent.relative_to(ROOT).as_posix()
            entry = data_files.get(f"share/vlab/{parent}", [])
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in entry):
                missing.append(relative)
    assert missing == []
