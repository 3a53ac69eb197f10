"""One default per parameter: every door (CLI, magics, Lab, widgets, notebooks, API) takes the
number of inferences, the URL and the data dir from `vlab_kernel.defaults`."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vlab_kernel import defaults
from vlab_kernel.cli import build_parser
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection, resolve
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE, DEFAULT_SWEEP_DIR
from vlab_kernel.lab import Lab
from vlab_kernel.magics import _parser as magic_parser

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
UNREACHABLE = Connection("http://127.0.0.1:9", None)


def default_of(function: Callable[..., object], name: str) -> object:
    return inspect.signature(function).parameters[name].default


def test_every_client_door_defaults_to_the_same_number_of_inferences() -> None:
    parser = build_parser()
    bench = parser.parse_args(["bench", "m.onnx", "--target", "t", "--engine", "e"])
    sweep = parser.parse_args(["sweep", "--models", "m", "--targets", "t", "--engines", "e"])
    magic = magic_parser().parse_args(["bench", "m.onnx", "--target", "t", "--engine", "e"])
    assert bench.runs == sweep.runs == magic.runs == DEFAULT_NB_INFERENCE
    assert sweep.output == DEFAULT_SWEEP_DIR
    assert default_of(VlabClient.submit, "runs") == DEFAULT_NB_INFERENCE
    assert default_of(Lab.benchmark, "runs") == DEFAULT_NB_INFERENCE
    assert default_of(Lab.sweep, "runs") == DEFAULT_NB_INFERENCE


def test_the_launcher_starts_at_the_default() -> None:
    from vlab_widgets import Launcher

    launcher = Launcher(Lab(VlabClient(UNREACHABLE)))  # no server: it shows the error
    assert launcher.runs.value == DEFAULT_NB_INFERENCE
    assert launcher.runs.max == defaults.DEFAULT_MAX_NB_INFERENCE


def test_the_sweep_notebook_parameters_are_the_defaults() -> None:
    notebook = json.loads((NOTEBOOKS / "sweep.ipynb").read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    namespace: dict[str, object] = {}
    exec("".join(cell["source"]), namespace)
    assert namespace["runs"] == DEFAULT_NB_INFERENCE
    assert namespace["output_dir"] == DEFAULT_SWEEP_DIR


def test_the_api_and_the_server_settings_share_the_defaults() -> None:
    from vlab_backend.api.routes.benchmarks import run_benchmark
    from vlab_backend.config import Settings
    from vlab_backend.submission import RunRequest

    assert default_of(run_benchmark, "nb_inference") == DEFAULT_NB_INFERENCE
    assert RunRequest("host-cpu", "onnxruntime").nb_inference == DEFAULT_NB_INFERENCE
    fields = Settings.model_fields
    assert f"http://{fields['host'].default}:{fields['port'].default}" == defaults.DEFAULT_URL
    assert fields["max_nb_inference"].default == defaults.DEFAULT_MAX_NB_INFERENCE


def test_url_and_data_dir_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLAB_URL", "VLAB_TOKEN", "VLAB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert defaults.data_dir() == tmp_path / "xdg" / "vlab"
    assert resolve() == Connection(defaults.DEFAULT_URL, None)
    monkeypatch.setenv("VLAB_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / defaults.CREDENTIAL_FILE).write_text("vlab_local\n")
    assert resolve().token == "vlab_local"
    monkeypatch.setenv("VLAB_URL", "http://lab.example:9000/")
    assert resolve().url == "http://lab.example:9000"


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"abc")
    assert defaults.sha256_file(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
