"""The `vlab` command as a user runs it, against a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.models import two_input_model
from tests.server import LiveServer
from vlab_kernel.cli import _parse_param, _summary, main


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_bench_onnx_json_prints_only_the_report(server: LiveServer, squeezenet: Path,
                                                engine: str) -> None:
    done = server.cli("bench", str(squeezenet), "--target", "host-cpu", "--engine", engine,
                      "--runs", "10", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["inference_engine"] == engine and report["nb_inference"] == 10
    assert report["model_file_name"].startswith("light_squeezenet_")


def test_bench_tflite_prints_a_summary(server: LiveServer, face_tflite: Path) -> None:
    done = server.cli("bench", str(face_tflite), "--target", "host-cpu", "--engine", "tflite",
                      "--runs", "10", "--param", "threads=1")
    assert done.returncode == 0, done.stderr
    assert ": success" in done.stdout and "latency  mean" in done.stdout
    assert "1 thread(s)" in done.stdout


def test_no_wait_json_prints_the_id(server: LiveServer, small_onnx: Path) -> None:
    done = server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                      "onnxruntime", "--no-wait", "--json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"id"}


def test_type2_with_a_dataset_file(server: LiveServer, tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    dataset = tmp_path / "samples.bin"
    dataset.write_bytes(b"\0" * 32 * 4)
    done = server.cli("bench", str(model), "--target", "host-cpu", "--engine", "onnxruntime",
                      "--dataset", str(dataset), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["benchmark_type"] == "TYPE2"
    assert json.loads(done.stdout)["nb_inference"] == 4


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "missing.onnx", "--target", "host-cpu", "--engine", "onnxruntime"],
     "model file missing.onnx not found"),
    (["bench", "{small}", "--target", "mars", "--engine", "onnxruntime"], "unknown target 'mars'"),
    (["bench", "{small}", "--target", "host-cpu", "--engine", "onnxruntime", "--param", "x"],
     "--param expects KEY=VALUE"),
    (["bench", "{small}", "--target", "host-cpu", "--engine", "tflite"],
     "engine tflite cannot run onnx models"),
    (["bench", "{small}", "--target", "host-cpu", "--engine", "onnxruntime", "--dataset",
      "nothere.bin"], "dataset file nothere.bin not found"),
])
def test_mistakes_print_one_line(server: LiveServer, small_onnx: Path, args: list[str],
                                 message: str) -> None:
    done = server.cli(*[a.replace("{small}", str(small_onnx)) for a in args])
    assert done.returncode == 1
    assert message in one_error_line(done.stderr)


def test_unreachable_server_is_one_line(server: LiveServer) -> None:
    done = server.cli("targets", VLAB_URL="http://127.0.0.1:9")
    assert done.returncode == 1
    assert "cannot reach the VLab API" in one_error_line(done.stderr)


def test_targets_and_results(server: LiveServer, small_onnx: Path) -> None:
    targets = json.loads(server.cli("targets", "--json").stdout)
    assert targets[0]["target"] == "host-cpu"
    assert len(targets[0]["instances"]) >= 1
    assert "host-cpu-0" in server.cli("targets").stdout
    assert server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                      "onnxruntime", "--runs", "3").returncode == 0
    rows = json.loads(server.cli("results", "--json", "--engine", "onnxruntime").stdout)
    assert rows and all(r["engine"] == "onnxruntime" for r in rows)
    csv_out = server.cli("results", "--csv").stdout.splitlines()
    assert csv_out[0].startswith("id,status,target,engine,model")
    filters = ("--engine", "onnxruntime", "--status", "success")
    newest = json.loads(server.cli("results", "--json", *filters).stdout)[0]
    table = server.cli("results", *filters).stdout.splitlines()
    # vlab bench's units: ms and MiB to 3 significant digits, not seconds and bytes.
    header = table[0].split()
    mean = header.index("mean")
    assert header[mean:mean + 4] == ["mean", "ms", "p90", "ms"]
    assert "peak" in header and "latency_mean_s" not in table[0]
    # By position: other tests' runs may add name and tags columns with empty cells.
    start = table[0].index("mean ms")
    assert float(table[1][start:].split()[0]) == float(f"{newest['latency_mean_s'] * 1e3:.3g}")


def test_a_reader_that_leaves_early_gets_no_traceback(server: LiveServer) -> None:
    # `vlab results --csv | head -3`: the pipe closes before the command writes to it.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", "results", "--csv"],
                              env=server.env, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""


def test_a_notebook_shows_a_client_error_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("from vlab_kernel.client import VlabClient\n"
                       "from vlab_kernel.connection import resolve\n"
                       "VlabClient(resolve('http://127.0.0.1:9')).targets()")
    finally:
        InteractiveShell.clear_instance()  # the process's one shell: other tests start theirs
    shown = capsys.readouterr().out
    # The message, not the frames of client.py that raised it.
    assert one_error_line(shown).startswith("ConnectionFailed: cannot reach the VLab API")


def test_the_summary_shows_noise(capsys: pytest.CaptureFixture[str]) -> None:
    report = {"model_file_name": "net.onnx", "target_id": "host-cpu-0",
              "inference_engine": "onnxruntime", "benchmark_type": "TYPE1", "nb_inference": 9,
              "inference_latency": dict.fromkeys(
                  ("mean", "median", "p90", "p99", "min", "max"), 0.0123456),
              "peak_memory_bytes": 125 * 2**20, "memory_delta_bytes": 2**19,
              "init_time_s": 0.5, "first_inference_s": 0.02}
    stable = {"cv": 0.0123, "drift": 0.004, "unstable": False, "reasons": []}
    assert "  latency  mean 12.3 ms  median 12.3 ms" in _summary(report)
    assert "  memory   peak 125 MiB  delta 0.5 MiB" in _summary(report)
    assert "  noise    stable (CV 1.23 %, drift +0.4 %)" in _summary(
        report | {"stability": stable})
    unstable = {"cv": 0.3, "drift": 0.0, "unstable": True,
                "reasons": ["high variation (CV 30.0% > 10%)"]}
    summary = _summary(report | {"stability": unstable}, {"concurrent_jobs_on_host": 2})
    assert "  noise    UNSTABLE: high variation (CV 30.0% > 10%)" in summary
    assert "  warning  2 other job(s) ran on this host at the same time" in summary
    assert "warning" not in _summary(report, {"concurrent_jobs_on_host": 0})


def test_vlab_token_overrides_the_local_credential(server: LiveServer) -> None:
    done = server.cli("targets", VLAB_TOKEN="vlab_bogus")
    assert done.returncode == 1
    assert "invalid or revoked API token" in one_error_line(done.stderr)


@pytest.mark.parametrize(("args", "message"), [
    (["--param", "min_time_s=NaN"], "--param min_time_s: not valid JSON with finite numbers"),
    (["--param", "min_time_s=-Infinity"], "--param min_time_s: not valid JSON"),
    (["--param", "min_time_s=1e999"], "number is infinity"),
    # json.loads raised RecursionError here: a traceback instead of one line.
    (["--param", "shape=" + "[" * 3000 + "]" * 3000], "--param shape: not valid JSON"),
    (["--param", "shape={\"a\": [1,"], "--param shape: not valid JSON"),
])
def test_bad_param_values_are_one_line(small_onnx: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str], message: str) -> None:
    code = main(["bench", str(small_onnx), "--target", "host-cpu", "--engine", "onnxruntime",
                 *args])
    assert code == 1
    assert message in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("runs", ["0", "-5", "many", "1e999", "nan", "2.5"])
def test_bad_run_counts_are_one_line(small_onnx: Path, capsys: pytest.CaptureFixture[str],
                                     runs: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", str(small_onnx), "--target", "host-cpu", "--engine", "onnxruntime",
              "--runs", runs])
    assert exited.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"argument --runs: expects a whole number of at least 1, got {runs!r}" in line


@pytest.mark.parametrize(("text", "value"), [
    ("threads=2", 2), ("level=all", "all"), ("version=1.2.3", "1.2.3"),
    ("name=informal", "informal"), ("label=\"NaN\"", "NaN"), ("shape=[1, 2]", [1, 2])])
def test_param_values_are_json_or_text(text: str, value: object) -> None:
    assert _parse_param(text)[1] == value


def test_labels_from_bench_to_results_label_and_export(server: LiveServer, small_onnx: Path,
                                                       tmp_path: Path) -> None:
    unique = uuid.uuid4().hex[:8]  # the session's server is shared with other tests
    done = server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                      "onnxruntime", "--runs", "3", "--no-wait", "--name", f"first {unique}",
                      "--tag", f"t-{unique}", "--tag", "cli", "--notes", "from the CLI")
    assert done.returncode == 0, done.stderr
    bench_id = done.stdout.strip()
    rows = json.loads(server.cli("results", "--json", "--tag", f"t-{unique}").stdout)
    assert [(r["id"], r["name"], r["tags"], r["notes"]) for r in rows] == [
        (bench_id, f"first {unique}", [f"t-{unique}", "cli"], "from the CLI")]
    table = server.cli("results", "--name", unique).stdout.splitlines()
    assert table[0].split()[:3] == ["id", "name", "tags"]
    assert f"first {unique}" in table[1] and f"t-{unique},cli" in table[1]

    relabelled = server.cli("label", bench_id, "--name", f"renamed {unique}", "--tag",
                            f"t-{unique}", "--tag", "kept")
    assert relabelled.returncode == 0, relabelled.stderr
    assert relabelled.stdout.strip() == (f"benchmark {bench_id}: name renamed {unique}, tags "
                                         f"t-{unique}, kept, notes 12 characters")
    assert json.loads(server.cli("results", "--json", "--tag", "cli", "--tag",
                                 f"t-{unique}").stdout) == []
    cleared = json.loads(server.cli("label", bench_id, "--clear-tags", "--json").stdout)
    assert cleared["tags"] == [] and cleared["name"] == f"renamed {unique}"

    exported = server.cli("results", "--name", unique, "--output", str(tmp_path / "r.csv"))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == f"1 run(s) written to {tmp_path / 'r.csv'}"
    with (tmp_path / "r.csv").open() as handle:
        header = handle.readline().strip().split(",")
    assert header[:2] == ["id", "status"] and {"name", "tags", "notes"} <= set(header)
    server.cli("label", bench_id, "--tag", "a", "--tag", "b")
    assert server.cli("results", "--name", unique, "--output",
                      str(tmp_path / "r.parquet")).returncode == 0
    import pandas as pd

    parquet = pd.read_parquet(tmp_path / "r.parquet")
    assert list(parquet["tags"][0]) == ["a", "b"] and parquet["id"][0] == bench_id
    assert f"{bench_id},success" in server.cli("results", "--csv", "--name", unique).stdout
    assert ",a;b," in server.cli("results", "--csv", "--name", unique).stdout
    server.cli("label", bench_id, "--clear-tags")
    assert "[]" not in server.cli("results", "--csv", "--name", unique).stdout


@pytest.mark.parametrize(("args", "message"), [
    (["results", "--output", "runs.xlsx"], "--output runs.xlsx: the file name must end in "
                                           ".csv or .parquet"),
    (["results", "--tag", "no spaces"], "tag: 'no spaces' is not a tag"),
    (["label", "nothere", "--name", "x"], "no benchmark nothere"),
    (["label", "nothere"], "nothing to change: give --name, --tag, --clear-tags or --notes"),
    (["label", "nothere", "--tag", "a", "--clear-tags"], "--clear-tags and --tag contradict"),
])
def test_label_and_export_mistakes_print_one_line(server: LiveServer, tmp_path: Path,
                                                  args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", *args], env=server.env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert message in one_error_line(done.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_tag_at_submission_is_one_line(server: LiveServer, small_onnx: Path) -> None:
    done = server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                      "onnxruntime", "--tag", "bad tag")
    assert done.returncode == 1
    assert "tags: 'bad tag' is not a tag (1 to 64 characters" in one_error_line(done.stderr)


@pytest.mark.parametrize("command", ["bench", "results", "label"])
def test_label_options_explain_themselves(command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", command, "--help"],
                          capture_output=True, text=True, check=True)
    description = " ".join(done.stdout.split("\n\n")[1].split())
    assert len(description) > 40, done.stdout
    assert "--tag TAG" in done.stdout
    if command == "results":
        assert "--output FILE" in done.stdout and ".parquet" in done.stdout
