"""The client stands on its own: importing it loads no server module, and the server's commands
answer one line where the server is not installed. Each check runs in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

# A `sys.meta_path` finder that makes the named top-level packages uninstalled.
BLOCKER = textwrap.dedent("""
    import sys

    class Uninstalled:
        def __init__(self, *names):
            self.names = names

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled(*sys.argv[1].split(",")))
    from vlab_kernel.cli import main

    sys.exit(main(sys.argv[2:]))
""")


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_importing_the_client_loads_no_server_module() -> None:
    done = python(textwrap.dedent("""
        import importlib, pkgutil, sys

        import vlab_kernel, vlab_widgets

        for package in (vlab_kernel, vlab_widgets):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(module.name)
        print(sorted(name for name in sys.modules if name.startswith("vlab_")))
        loaded = [name for name in sys.modules if name.startswith("vlab_backend")]
        assert not loaded, loaded
    """))
    assert done.returncode == 0, done.stderr
    assert "vlab_kernel.magics" in done.stdout and "vlab_widgets.launcher" in done.stdout


def test_the_server_helpers_load_without_pandas() -> None:
    """The server imports `vlab_kernel.defaults` and `.stats` into every benchmark process."""
    done = python("import sys, vlab_kernel.defaults, vlab_kernel.stats; "
                  "assert not {'pandas', 'httpx'} & set(sys.modules), 'heavy imports'")
    assert done.returncode == 0, done.stderr


SERVER_COMMANDS = [["serve", "--port", "9"], ["user", "add", "a@b.org"],
                   ["host", "init", "--targets", "t.json", "--out", "x"], ["vpn", "sync"]]


@pytest.mark.parametrize("command", SERVER_COMMANDS, ids=lambda c: c[0])
def test_server_commands_without_the_server_say_what_to_install(command: list[str]) -> None:
    assert_needs_server(python(BLOCKER, "vlab_backend", *command), command[0])


@pytest.mark.parametrize("command", SERVER_COMMANDS[:2], ids=lambda c: c[0])
def test_server_commands_without_the_server_dependencies_say_what_to_install(
        command: list[str]) -> None:
    """A client-only install has the server's code but not its dependencies."""
    done = python(BLOCKER, "uvicorn,fastapi,sqlalchemy", *command)
    assert_needs_server(done, command[0])


def assert_needs_server(done: subprocess.CompletedProcess[str], command: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"vlab: error: vlab {command} needs the server: "
                               "pip install 'vlab-workbench[server]'")


def test_client_commands_work_without_the_server() -> None:
    done = python(BLOCKER, "vlab_backend", "bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "--runs" in done.stdout
    listed = python(BLOCKER, "vlab_backend", "--help")
    assert "needs the server" in listed.stdout and "bench" in listed.stdout


def test_the_base_install_is_the_client_and_the_server_an_extra() -> None:
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}

    base, server = names(project["dependencies"]), names(project["optional-dependencies"]["server"])
    assert {"httpx", "pandas", "ipywidgets", "jupyter-server", "papermill"} <= base
    assert {"fastapi", "uvicorn", "sqlalchemy", "pydantic-settings", "onnxruntime"} <= server
    assert not base & server
    # `make setup` and conda users install the same thing.
    assert "-e '.[server,dev]'" in (root / "Makefile").read_text()
    assert "- -e .[server,dev]" in (root / "environment.yml").read_text()
