"""The `vlab` command. User mistakes print one line on stderr and exit non-zero.

The client's commands live here; the server's (`serve`, `user`, `host`, `vpn`) live in
`vlab_backend.cli` and are added when the server is installed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, cast

import orjson

from vlab_kernel.client import VlabClient
from vlab_kernel.connection import resolve
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE, DEFAULT_SWEEP_DIR, data_dir
from vlab_kernel.errors import UsageError, VlabError
from vlab_kernel.progress import ProgressPrinter
from vlab_kernel.shipped import shipped_folder
from vlab_kernel.units import MIB, MS, budgets, sig3

# Values meant as JSON that are not: a list or object, a number that overflows, NaN or
# Infinity. Any other text that is not JSON is sent as a string.
_MEANT_AS_JSON = re.compile(r"[\[{].*|-?\d+(\.\d+)?([eE][-+]?\d+)?|[-+]?(nan|inf|infinity)",
                            re.IGNORECASE | re.DOTALL)


def _parse_param(text: str) -> tuple[str, Any]:
    """KEY=VALUE, VALUE read as JSON (orjson: finite numbers, bounded nesting) or as text."""
    if "=" not in text:
        raise UsageError(f"--param expects KEY=VALUE, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        return key, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _MEANT_AS_JSON.fullmatch(raw):
            raise UsageError(f"--param {key}: not valid JSON with finite numbers ({exc}); "
                             "write a string as JSON, e.g. '\"NaN\"'") from None
    return key, raw


def _count(text: str) -> int:
    """An argument that counts something: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number of at least 1, got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows an option's default where it has one (not "None" or "False")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Argument mistakes, like every user mistake, print one line and exit non-zero. Help
    shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        return "" if value is None else str(value)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------
def cmd_targets(args: argparse.Namespace) -> int:
    with VlabClient() as client:
        if args.check is not None or args.rebaseline:
            return _check_targets(client, args)
        targets = client.targets()
    if args.json:
        print(json.dumps(targets, indent=1))
        return 0
    rows = []
    for target in targets:
        for instance in target["instances"]:
            rows.append({
                "target": target["target"], "instance": instance["target_uid"],
                "host": instance.get("host") or "",
                "state": instance["state"], "health": health_cell(instance),
                "cores": ",".join(map(str, instance["cpuset"])),
                "budgets": budgets(instance.get("memory") or {}),
                "engines": ", ".join(f"{name} ({'/'.join(e['supported_types'])})"
                                     for name, e in instance["engines"].items()),
                "queue": target["queue_length"]})
    columns = ["target", "instance", "state", "health", "cores", "engines", "queue"]
    if any(row["budgets"] for row in rows):  # boards that declare their memory (MCUs)
        columns.insert(5, "budgets")
    if any(instance.get("remote") for target in targets for instance in target["instances"]):
        columns.insert(2, "host")  # registered hosts' boards: where each one is
    print(_table(rows, columns))
    return 0


def health_cell(instance: dict[str, Any]) -> str:
    """An instance's health in a few words: `healthy`, `degraded +52 %` (its last check's
    median against its baseline's), `error`, `unknown`; `(checking)` while a check runs."""
    health = str(instance.get("health") or "unknown")
    ratio = (instance.get("health_detail") or {}).get("ratio")
    if health == "degraded" and isinstance(ratio, int | float):
        health += f" {'+' if ratio >= 1 else ''}{sig3((ratio - 1) * 100)} %"
    if instance.get("health_checking"):
        health += " (checking)"
    return health


def _check_targets(client: VlabClient, args: argparse.Namespace) -> int:
    """`vlab targets --check [INSTANCE] [--rebaseline] [--wait]`: ask for health checks (of
    one instance, or of every available one) and, with --wait, print their verdicts."""
    if args.check:
        uids = [args.check]
    else:
        uids = [i["target_uid"] for t in client.targets() for i in t["instances"]
                if i["state"] in ("busy", "free")]
    checks = [client.check_target(uid, rebaseline=args.rebaseline) for uid in uids]
    for check in checks:
        print(f"health check {check['id']} of {check['target_uid']}: benchmark "
              f"{check['benchmark_id']}{' (new baseline)' if check['rebaseline'] else ''}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    ended: dict[int, dict[str, Any]] = {}
    while len(ended) < len(checks):
        if time.monotonic() > deadline:
            raise VlabError(f"the health checks did not end within {args.timeout:g} s")
        for check in checks:
            if check["id"] in ended:
                continue
            found = client.target_health(check["target_uid"])
            mine = next((c for c in found["checks"] if c["id"] == check["id"]), None)
            if mine is not None and mine["verdict"] != "pending":
                ended[check["id"]] = mine
        if len(ended) < len(checks):
            time.sleep(0.5)
    failing = 0
    for check in checks:
        done = ended[check["id"]]
        words = (done.get("detail") or {}).get("verdict") or done["verdict"]
        print(f"{check['target_uid']}: {words}")
        failing += done["verdict"] in ("degraded", "failed")
    return 1 if failing else 0


def _sig3(value: Any, scale: float = 1.0) -> str:
    """The client's number format, blank where unknown (a terminal table's empty cell)."""
    return sig3(value, scale, missing="")


def _noise(report: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The stability verdict with its reasons, and a warning when jobs ran side by side."""
    lines = []
    stability = report.get("stability") or {}
    if stability.get("unstable"):  # its reasons give the numbers
        lines.append(f"  noise    UNSTABLE: {'; '.join(stability.get('reasons') or [])}")
    elif stability.get("cv") is not None:
        drift = stability.get("drift") or 0.0
        lines.append(f"  noise    stable (CV {_sig3(stability['cv'], 100)} %, drift "
                     f"{'+' if drift > 0 else ''}{_sig3(drift, 100)} %)")
    others = metrics.get("concurrent_jobs_on_host") or 0
    if others:
        lines.append(f"  warning  {others} other job(s) ran on this host at the same time, "
                     "sharing its cores and memory: the latencies may be noisy")
    return lines


def _summary(report: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    latency = report["inference_latency"]
    timings = "  ".join(f"{name} {_sig3(latency[name], MS)} ms" for name in (
        "mean", "median", "p90", "p99", "min", "max"))
    return "\n".join([
        f"{report['model_file_name']} on {report['target_id']} with {report['inference_engine']} "
        f"{report.get('engine_version', '')} ({report['benchmark_type']}, "
        f"{report['nb_inference']} inferences, {report.get('threads')} thread(s))",
        f"  latency  {timings}",
        f"  memory   peak {_sig3(report['peak_memory_bytes'], 1 / MIB)} MiB  "
        f"delta {_sig3(report['memory_delta_bytes'], 1 / MIB)} MiB",
        f"  model    {_sig3((report.get('model_size') or 0) / MIB)} MiB  "
        f"{report.get('nb_parameters_model') or 0:,} parameters  "
        f"{_sig3((report.get('flops') or 0) / 1e6)} MFLOPs/inference",
        f"  startup  load {_sig3(report['init_time_s'], MS)} ms  first inference "
        f"{_sig3(report['first_inference_s'], MS)} ms",
        *_board(report),
        *_noise(report, metrics or {}),
    ])


def _board(report: dict[str, Any]) -> list[str]:
    """A microcontroller board's own figures: flash and tensor arena against its budgets,
    and its own timing beside the host's."""
    if report.get("flash_usage_bytes") is None:
        return []
    board = report.get("board") or {}
    board_latency = (board.get("inference_latency") or {}).get("median")
    return [
        f"  board    flash {report['flash_usage_bytes']:,} B "
        f"({_sig3(report.get('flash_usage'))} % of {report.get('flash_size') or 0:,} B)  "
        f"arena {report.get('ram_peak_usage_bytes') or 0:,} B "
        f"({_sig3(report.get('ram_peak'))} % of {report.get('ram_size') or 0:,} B)  "
        f"median on the board {_sig3(board_latency, MS)} ms"]


def cmd_bench(args: argparse.Namespace) -> int:
    params = dict(_parse_param(p) for p in args.param or [])
    model = args.model
    if not str(model).startswith("model-") and not Path(model).is_file():
        raise UsageError(f"model file {model} not found")
    dataset = Path(args.dataset) if args.dataset else None
    if dataset is not None and not dataset.is_file():
        raise UsageError(f"dataset file {dataset} not found")
    benchmark_type = args.type or ("TYPE2" if dataset else "TYPE1")
    with VlabClient() as client:
        bench_id = client.submit(model, args.target, args.engine, runs=args.runs,
                                 benchmark_type=benchmark_type, dataset=dataset, params=params,
                                 public=args.public, name=args.name, tags=args.tag or (),
                                 notes=args.notes or "")
        if args.no_wait:
            print(json.dumps({"id": bench_id}) if args.json else bench_id)
            return 0
        show = sys.stderr.isatty() and not args.json
        printer = ProgressPrinter(bench_id) if show else None
        try:
            final = client.wait(bench_id, printer.update if printer else None)
        except KeyboardInterrupt:
            client.cancel(bench_id)
            raise UsageError(f"interrupted: benchmark {bench_id} canceled") from None
        finally:
            if printer:
                printer.close()
        if final["status"] != "success":  # the message holds the reason from its error log
            raise UsageError(f"benchmark {bench_id} {final['status']}: "
                             f"{final['message'] or 'no reason given'}")
        report = client.report(bench_id)
    if report is None:
        raise UsageError(f"benchmark {bench_id} finished without a report")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"benchmark {bench_id}: success")
        print(_summary(report, final.get("metrics") or {}))
    return 0


# The table's columns: the API's column (units in its name) -> the header and scale shown.
RESULT_COLUMNS = {
    "id": ("id", None), "status": ("status", None), "target": ("target", None),
    "engine": ("engine", None), "model": ("model", None),
    "benchmark_type": ("type", None), "nb_inference": ("runs", None),
    "latency_mean_s": ("mean ms", MS), "latency_p90_s": ("p90 ms", MS),
    "latency_cv": ("CV %", 100.0), "unstable": ("unstable", None),
    "peak_memory_bytes": ("peak MiB", 1 / MIB), "created_at": ("created", None),
    "message": ("message", None),
}


# Shown after the id when any run has a name or tags.
LABEL_COLUMNS = {"name": ("name", None), "tags": ("tags", None)}


def _results_table(rows: list[dict[str, Any]]) -> str:
    """`vlab bench`'s units: ms, MiB, 3 significant digits; times to the second. The runs'
    names and tags when any has one."""
    columns = dict(RESULT_COLUMNS)
    if any(row.get("name") or row.get("tags") for row in rows):
        columns = {"id": RESULT_COLUMNS["id"], **LABEL_COLUMNS, **columns}
    shown = [{header: _sig3(row.get(key), scale) if scale else row.get(key)
              for key, (header, scale) in columns.items()} for row in rows]
    for row in shown:
        row["created"] = (row["created"] or "")[:19].replace("T", " ")
        if "tags" in row:
            row["tags"] = ",".join(row["tags"] or [])
    return _table(shown, [header for header, _ in columns.values()])


def _api_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of the rows: the table's first, then the others by name."""
    order = list(RESULT_COLUMNS)
    return sorted({k for r in rows for k in r}, key=lambda c: (
        order.index(c) if c in order else len(order), c))


def cmd_results(args: argparse.Namespace) -> int:
    from vlab_kernel.export import SUFFIXES

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--output {output}: the file name must end in "
                         f"{' or '.join(SUFFIXES)}")
    with VlabClient() as client:
        rows = client.results(target=args.target, engine=args.engine, model=args.model,
                              status=args.status, tag=args.tag, name=args.name)
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.csv:  # the API's own columns and units (in their names), for other tools
        writer = csv.DictWriter(sys.stdout, fieldnames=_api_columns(rows))
        writer.writeheader()
        writer.writerows({**row, "tags": ";".join(row["tags"] or [])} if "tags" in row
                         else row for row in rows)
    elif output is not None:
        import pandas as pd

        from vlab_kernel.export import export_table

        try:
            export_table(pd.DataFrame(rows, columns=_api_columns(rows)), output)
        except OSError as exc:
            raise UsageError(f"--output {output}: {exc.strerror or exc}") from None
        print(f"{len(rows)} run(s) written to {output}")
    else:
        print(_results_table(rows) if rows else "no benchmarks yet")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """Change the labels of one of your runs."""
    if args.clear_tags and args.tag:
        raise UsageError("--clear-tags and --tag contradict each other: --tag alone replaces "
                         "the tags")
    tags = [] if args.clear_tags else args.tag
    if args.name is None and tags is None and args.notes is None:
        raise UsageError("nothing to change: give --name, --tag, --clear-tags or --notes")
    with VlabClient() as client:
        info = client.label(args.id, name=args.name, tags=tags, notes=args.notes)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"benchmark {info['id']}: name {info.get('name') or '-'}, tags "
          f"{', '.join(info.get('tags') or []) or '-'}"
          + (f", notes {len(info['notes'])} characters" if info.get("notes") else ""))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Create (default), list or revoke long-lived API tokens of the current user."""
    with VlabClient() as client:
        if args.list:
            rows = client.get_json("/api/users/tokens")
            print(_table(rows, ["id", "name", "created_at", "revoked"]) if rows
                  else "no API tokens")
        elif args.revoke is not None:
            client.request("DELETE", f"/api/users/tokens/{args.revoke}")
            print(f"token {args.revoke} revoked")
        else:
            created = client.request("POST", "/api/users/tokens",
                                     json={"name": args.name}).json()
            if args.json:
                print(json.dumps(created))
            else:
                print(created["token"])
                print(f"token {created['id']} ({created['name']}): keep it secret; it is "
                      "shown only once. Use it as VLAB_TOKEN.", file=sys.stderr)
    return 0


def _backend_reachable(client: VlabClient) -> bool:
    try:
        client.status()
        return True
    except VlabError:
        return False


NOTEBOOKS = shipped_folder("notebooks")


@contextmanager
def backend_running() -> Iterator[None]:
    """Use the running backend (VLAB_URL, else the one recorded in the data dir, as a lab's
    is), or start one for the duration."""
    backend = None
    with VlabClient() as client:
        if not _backend_reachable(client):
            url = resolve().url
            port = url.rsplit(":", 1)[-1].split("/")[0]
            backend = subprocess.Popen([sys.executable, "-m", "vlab_kernel.cli", "serve",
                                        "--port", port, "--log-level", "warning"])
            for _ in range(300):
                if _backend_reachable(client) or backend.poll() is not None:
                    break
                time.sleep(0.1)
            if not _backend_reachable(client):
                backend.terminate()
                raise UsageError(f"the embedded backend did not start on {url}")
            print(f"VLab backend running at {url}", file=sys.stderr)
    try:
        yield
    finally:
        if backend is not None:
            backend.terminate()
            backend.wait(timeout=15)


WORKSPACE = "workspace"  # in the data dir: the user's own copies of the tour notebooks


def workspace_with_tour() -> Path:
    """`<data dir>/workspace`, holding the user's own copy of the explore notebook. It is
    copied once and never overwritten, so running the tour changes neither the shipped
    notebook nor the user's edits."""
    workspace = data_dir() / WORKSPACE
    workspace.mkdir(parents=True, exist_ok=True)
    tour = workspace / "explore.ipynb"
    shipped = NOTEBOOKS / "explore.ipynb"
    if not tour.exists() and shipped.is_file():
        shutil.copyfile(shipped, tour)
    return workspace


def cmd_lab(args: argparse.Namespace) -> int:
    """JupyterLab with the extension (which finds or starts the backend), opened on the
    user's copy of the explore notebook unless a path is given."""
    command = [sys.executable, "-m", "jupyterlab", *args.extra_args]
    if os.geteuid() == 0 and "--allow-root" not in command:
        command.append("--allow-root")  # containers and CI machines often run as root
    opens_a_path = any(not a.startswith("-") for a in args.extra_args)
    if not opens_a_path:
        workspace = workspace_with_tour()
        command.append(f"--ServerApp.root_dir={workspace}")
        if (workspace / "explore.ipynb").is_file():
            # The URL Jupyter prints then opens the notebook.
            command.append("--LabApp.default_url=/lab/tree/explore.ipynb")
    return run_until_stopped(command)


def run_until_stopped(command: list[str]) -> int:
    """Run `command` in a process group of its own, and stop it with SIGTERM when this
    process gets SIGINT (Ctrl-C), SIGTERM or SIGHUP. Jupyter then shuts down in order, its
    kernels and the extension's backend with its workers too; a Ctrl-C that reached them
    all at once would stop the backend while Jupyter asks whether to stop."""
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0)

    def stop(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.terminate()

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, stop) for signum in stops}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The read-only Voila dashboard of results."""
    with backend_running():
        return subprocess.call([sys.executable, "-m", "voila", str(NOTEBOOKS / "dashboard.ipynb"),
                                "--no-browser", f"--port={args.port}", "--strip_sources=True",
                                "--show_tracebacks=False", *args.extra_args])


# The kernel's own start-up warnings ("running over TCP without encryption" on a local
# socket) are not the sweep's business; its errors still show.
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run notebooks/sweep.ipynb with papermill: every model x target x engine. The notebook's
    printed lines (one per finished combination, then the table) reach the terminal as they
    come; the command fails when any combination did not succeed."""
    import papermill

    models = [str(Path(m).resolve()) for m in args.models]
    missing = [m for m in models if not Path(m).is_file()]
    if missing:
        raise UsageError(f"model file {missing[0]} not found")
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parameters = {"models": models, "targets": args.targets, "engines": args.engines,
                  "runs": args.runs, "benchmark_type": args.type,
                  "params": dict(_parse_param(p) for p in args.param or []),
                  "output_dir": str(out)}
    with backend_running():
        try:
            papermill.execute_notebook(str(NOTEBOOKS / "sweep.ipynb"), str(out / "sweep.ipynb"),
                                       parameters=parameters, kernel_name="python3",
                                       progress_bar=False, cwd=str(out),
                                       stdout_file=sys.stdout, extra_arguments=QUIET_KERNEL)
        except papermill.PapermillExecutionError as exc:
            raise UsageError(f"the sweep failed: {exc.ename}: {exc.evalue} "
                             f"(see {out / 'sweep.ipynb'})") from None
    with (out / "results.csv").open() as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    print(f"results: {out / 'results.csv'}, figures: {out / 'figures.html'}, "
          f"notebook: {out / 'sweep.ipynb'}")
    failed = sum(status != "success" for status in statuses)
    if failed:
        raise UsageError(f"{failed} of {len(statuses)} combinations did not succeed "
                         "(their reasons are in the table above)")
    return 0


# -- the server's commands --------------------------------------------------------------------
SERVER_COMMANDS = ("serve", "user", "host", "vpn")


def needs_server(command: str) -> str:
    return f"vlab {command} needs the server: pip install 'vlab-workbench[server]'"


def cmd_needs_server(args: argparse.Namespace) -> int:
    raise UsageError(needs_server(args.command))


def add_server_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The server's commands from `vlab_backend.cli`; without the server, stand-ins that say
    what to install (they take any arguments)."""
    try:
        from vlab_backend.cli import add_commands
    except ModuleNotFoundError:
        for name in SERVER_COMMANDS:
            stand_in = sub.add_parser(name, add_help=False, help=needs_server(name))
            stand_in.set_defaults(func=cmd_needs_server, extra_args=[])
        return
    add_commands(sub)


# -- parser ------------------------------------------------------------------------------------
def _label_options(parser: argparse.ArgumentParser, tag_help: str) -> None:
    parser.add_argument("--name", help="a name for the run (at most 200 characters)")
    parser.add_argument("--tag", action="append", metavar="TAG",
                        help=f"{tag_help}; repeat for more")
    parser.add_argument("--notes", metavar="TEXT",
                        help="notes on the run (at most 4000 characters)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlab", description="VLab workbench: benchmark AI models on edge "
                     "targets")
    sub = parser.add_subparsers(dest="command", required=True)
    # Sub-commands are _Parser too; the server's commands take any ArgumentParser's.
    add_server_commands(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))

    lab = sub.add_parser(
        "lab", help="JupyterLab with the VLab extension, on the guided tour",
        description="Start JupyterLab with the VLab extension, which uses the lab's running "
        "backend or starts one (and stops what it started on exit), and open the guided tour "
        "notebooks/explore.ipynb unless a path is given. Every other argument goes to "
        "JupyterLab, e.g. `vlab lab --port 8888 --no-browser`: see `jupyter lab --help`.")
    lab.set_defaults(func=cmd_lab, extra_args=[])

    dashboard = sub.add_parser(
        "dashboard", help="the read-only Voila dashboard of results",
        description="Serve notebooks/dashboard.ipynb with Voila (sources stripped): the "
        "results of every configuration with run counts, intervals and stability, filters "
        "and live updates. Uses the lab's running backend or starts one for the duration. "
        "Every other argument goes to Voila: see `voila --help`.")
    dashboard.add_argument("--port", type=int, default=8866, help="the port Voila serves on")
    dashboard.set_defaults(func=cmd_dashboard, extra_args=[])

    sweep = sub.add_parser(
        "sweep", help="benchmark every model x target x engine (notebooks/sweep.ipynb)",
        description="Run notebooks/sweep.ipynb with papermill: every model on every target "
        "with every engine, concurrently on the free instances. Prints a line as each "
        "combination ends, then a table; writes results.csv, figures.html and the executed "
        "notebook to the output directory. Exits 1 when a combination was refused or failed.")
    sweep.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                       help="model files (.onnx, .tflite)")
    sweep.add_argument("--targets", nargs="+", required=True, metavar="TARGET",
                       help="target names (see `vlab targets`)")
    sweep.add_argument("--engines", nargs="+", required=True, metavar="ENGINE",
                       help="inference engines")
    sweep.add_argument("--runs", type=_count, default=DEFAULT_NB_INFERENCE,
                       help="timed inferences per benchmark")
    sweep.add_argument("--type", default="TYPE1", choices=["TYPE1", "TYPE2"],
                       help="benchmark type")
    sweep.add_argument("--param", action="append", metavar="KEY=VALUE",
                       help="an engine parameter for every run (VALUE as JSON or text); "
                       "repeat for more")
    sweep.add_argument("-o", "--output", default=DEFAULT_SWEEP_DIR,
                       help="directory for results.csv, figures.html and sweep.ipynb")
    sweep.set_defaults(func=cmd_sweep)

    targets = sub.add_parser("targets", help="targets, instances, engines and their state",
                             description="List every target instance: busy or free, its "
                             "health (its last health check against its baseline), its cores, "
                             "its engines and the target's queue length; --check runs health "
                             "checks.")
    targets.add_argument("--json", action="store_true", help="print the API's JSON")
    targets.add_argument("--check", nargs="?", const="", default=None, metavar="INSTANCE",
                         help="run the health check (reference benchmark) of INSTANCE, or of "
                         "every available instance; administrators and the instance's owner")
    targets.add_argument("--rebaseline", action="store_true",
                         help="with --check: the check becomes the instance's new baseline")
    targets.add_argument("--wait", action="store_true",
                         help="with --check: wait for the verdicts (exit status 1 when one "
                         "is degraded or failed)")
    targets.add_argument("--timeout", type=float, default=600.0,
                         help="with --wait: give up after this many seconds")
    targets.set_defaults(func=cmd_targets)

    bench = sub.add_parser("bench", help="benchmark a model",
                           description="Submit a benchmark, follow it with a progress bar "
                           "(count and time left) and print its report: latency in ms, "
                           "memory in MiB, the stability verdict.")
    bench.add_argument("model", help="model file (.onnx, .tflite) or a stored model-N reference")
    bench.add_argument("--target", required=True, help="target name (see `vlab targets`)")
    bench.add_argument("--engine", required=True, help="inference engine")
    bench.add_argument("--type", choices=["TYPE1", "TYPE2"],
                       help="benchmark type (default: TYPE2 with --dataset, else TYPE1)")
    bench.add_argument("--dataset", help="raw dataset file (TYPE2)")
    bench.add_argument("--runs", type=_count, default=DEFAULT_NB_INFERENCE,
                       help="timed inferences")
    bench.add_argument("--param", action="append", metavar="KEY=VALUE",
                       help="an engine parameter (VALUE as JSON or text); repeat for more")
    bench.add_argument("--public", action="store_true", help="let every user see the result")
    _label_options(bench, "label the run with this tag")
    bench.add_argument("--json", action="store_true", help="print only the report JSON")
    bench.add_argument("--no-wait", action="store_true", help="submit and print the id")
    bench.set_defaults(func=cmd_bench)

    results = sub.add_parser("results", help="benchmark history",
                             description="One line per benchmark of yours, newest first, "
                             "with its metrics; filters combine.")
    results.add_argument("--target", help="only this target")
    results.add_argument("--engine", help="only this engine")
    results.add_argument("--model", help="only this model file name")
    results.add_argument("--status", help="only this status (success, failed, ...)")
    results.add_argument("--tag", action="append", metavar="TAG",
                         help="only runs with this tag (any case); repeat: runs with every one")
    results.add_argument("--name", metavar="TEXT",
                         help="only runs whose name contains TEXT (any case)")
    fmt = results.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the API's JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV with every column "
                     "(tags joined with ';')")
    fmt.add_argument("-o", "--output", metavar="FILE",
                     help="write every column to FILE.csv (tags joined with ';') or "
                     "FILE.parquet (tags a list)")
    results.set_defaults(func=cmd_results)

    label = sub.add_parser("label", help="name, tag or annotate a run",
                           description="Change the labels of one of your runs: what is given "
                           "replaces the stored label, the rest stays. Tags are 1 to 64 "
                           "characters of A-Z a-z 0-9 _ . : -, at most 32; `vlab results "
                           "--tag T --name TEXT` finds the runs again.")
    label.add_argument("id", help="the benchmark's id (see `vlab results`)")
    _label_options(label, "the run's tags become these")
    label.add_argument("--clear-tags", action="store_true", help="remove every tag")
    label.add_argument("--json", action="store_true",
                       help="print the benchmark's description as JSON")
    label.set_defaults(func=cmd_label)

    token = sub.add_parser("token", help="create, list or revoke API tokens",
                           description="Create a long-lived API token (the default), list "
                           "yours or revoke one. A new token is shown once: use it as "
                           "VLAB_TOKEN.")
    token.add_argument("--name", default="", help="a label for the new token")
    token.add_argument("--list", action="store_true", help="list your tokens")
    token.add_argument("--revoke", type=int, metavar="ID", help="revoke a token")
    token.add_argument("--json", action="store_true", help="print the new token as JSON")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "extra_args"):  # only commands that pass arguments on take them
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra_args = extra
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader that left shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        # The reader left (`vlab results --csv | head`): no traceback, and none at exit when
        # Python flushes stdout, which now points nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, VlabError) as exc:
        print(f"vlab: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if args.command not in SERVER_COMMANDS:
            raise
        # The server's code is there but not its dependencies (a client-only install).
        print(f"vlab: error: {needs_server(args.command)} (no module {exc.name!r})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
