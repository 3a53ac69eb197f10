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
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE, DEFAULT_SWEEP_DIR
from vlab_kernel.errors import UsageError, VlabError
from vlab_kernel.progress import ProgressPrinter

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


class _Parser(argparse.ArgumentParser):
    """Argument mistakes, like every user mistake, print one line and exit non-zero."""

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
        targets = client.targets()
    if args.json:
        print(json.dumps(targets, indent=1))
        return 0
    rows = []
    for target in targets:
        for instance in target["instances"]:
            rows.append({
                "target": target["target"], "instance": instance["target_uid"],
                "state": instance["state"], "cores": ",".join(map(str, instance["cpuset"])),
                "engines": ", ".join(f"{name} ({'/'.join(e['supported_types'])})"
                                     for name, e in instance["engines"].items()),
                "queue": target["queue_length"]})
    print(_table(rows, ["target", "instance", "state", "cores", "engines", "queue"]))
    return 0


def _summary(report: dict[str, Any]) -> str:
    latency = report["inference_latency"]
    ms = 1e3
    return "\n".join([
        f"{report['model_file_name']} on {report['target_id']} with {report['inference_engine']} "
        f"{report.get('engine_version', '')} ({report['benchmark_type']}, "
        f"{report['nb_inference']} inferences, {report.get('threads')} thread(s))",
        f"  latency  mean {latency['mean'] * ms:.3f} ms  median {latency['median'] * ms:.3f} ms"
        f"  p90 {latency['p90'] * ms:.3f} ms  p99 {latency['p99'] * ms:.3f} ms"
        f"  min {latency['min'] * ms:.3f} ms  max {latency['max'] * ms:.3f} ms",
        f"  memory   peak {report['peak_memory_bytes'] / 2**20:.1f} MiB  "
        f"delta {report['memory_delta_bytes'] / 2**20:.1f} MiB",
        f"  model    {report.get('model_size') or 0} bytes  "
        f"{report.get('nb_parameters_model') or 0:,} parameters  "
        f"{(report.get('flops') or 0) / 1e6:,.1f} MFLOPs/inference",
        f"  startup  load {report['init_time_s'] * ms:.1f} ms  first inference "
        f"{report['first_inference_s'] * ms:.3f} ms",
    ])


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
                                 public=args.public)
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
        if final["status"] != "success":
            detail = client.log(bench_id, "error-log").strip() if "error_log" in \
                final["artifacts"] else ""
            if detail:
                print(detail, file=sys.stderr)
            raise UsageError(f"benchmark {bench_id} {final['status']}: "
                             f"{final['message'] or 'see its error log'}")
        report = client.report(bench_id)
    if report is None:
        raise UsageError(f"benchmark {bench_id} finished without a report")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"benchmark {bench_id}: success")
        print(_summary(report))
    return 0


RESULT_COLUMNS = ["id", "status", "target", "engine", "model", "benchmark_type", "nb_inference",
                  "latency_mean_s", "latency_p90_s", "peak_memory_bytes", "created_at"]


def cmd_results(args: argparse.Namespace) -> int:
    with VlabClient() as client:
        rows = client.results(target=args.target, engine=args.engine, model=args.model,
                              status=args.status)
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.csv:
        columns = sorted({k for r in rows for k in r}, key=lambda c: (
            RESULT_COLUMNS.index(c) if c in RESULT_COLUMNS else len(RESULT_COLUMNS), c))
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(_table(rows, RESULT_COLUMNS) if rows else "no benchmarks yet")
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


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@contextmanager
def backend_running() -> Iterator[None]:
    """Use the backend at VLAB_URL, or start the embedded one for the duration."""
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


def cmd_lab(args: argparse.Namespace) -> int:
    """JupyterLab with the extension (which finds or starts the backend)."""
    notebook = NOTEBOOKS / "explore.ipynb"
    command = [sys.executable, "-m", "jupyterlab", *args.extra_args]
    if os.geteuid() == 0 and "--allow-root" not in command:
        command.append("--allow-root")  # containers and CI machines often run as root
    opens_a_path = any(not a.startswith("-") for a in args.extra_args)
    if notebook.is_file() and not opens_a_path:
        command.append(str(notebook))
    return subprocess.call(command)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The read-only Voila dashboard of results."""
    with backend_running():
        return subprocess.call([sys.executable, "-m", "voila", str(NOTEBOOKS / "dashboard.ipynb"),
                                "--no-browser", f"--port={args.port}", "--strip_sources=True",
                                "--show_tracebacks=False", *args.extra_args])


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run notebooks/sweep.ipynb with papermill: every model x target x engine."""
    import papermill

    models = [str(Path(m).resolve()) for m in args.models]
    missing = [m for m in models if not Path(m).is_file()]
    if missing:
        raise UsageError(f"model file {missing[0]} not found")
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parameters = {"models": models, "targets": args.targets, "engines": args.engines,
                  "runs": args.runs, "benchmark_type": args.type, "output_dir": str(out)}
    with backend_running():
        try:
            papermill.execute_notebook(str(NOTEBOOKS / "sweep.ipynb"), str(out / "sweep.ipynb"),
                                       parameters=parameters, kernel_name="python3",
                                       progress_bar=False, cwd=str(out))
        except papermill.PapermillExecutionError as exc:
            raise UsageError(f"the sweep failed: {exc.ename}: {exc.evalue} "
                             f"(see {out / 'sweep.ipynb'})") from None
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    print(_table(rows, ["model", "target", "engine", "status", "latency_mean_s",
                        "latency_p90_s", "peak_memory_bytes"]))
    print(f"results: {out / 'results.csv'}, figures: {out / 'figures.html'}")
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
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlab", description="VLab workbench: benchmark AI models on edge "
                     "targets")
    sub = parser.add_subparsers(dest="command", required=True)
    # Sub-commands are _Parser too; the server's commands take any ArgumentParser's.
    add_server_commands(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))

    lab = sub.add_parser("lab", help="JupyterLab with the embedded backend; other arguments "
                         "go to JupyterLab")
    lab.set_defaults(func=cmd_lab, extra_args=[])

    dashboard = sub.add_parser("dashboard", help="the read-only Voila dashboard; other "
                               "arguments go to Voila")
    dashboard.add_argument("--port", type=int, default=8866)
    dashboard.set_defaults(func=cmd_dashboard, extra_args=[])

    sweep = sub.add_parser("sweep", help="run notebooks/sweep.ipynb with papermill")
    sweep.add_argument("--models", nargs="+", required=True)
    sweep.add_argument("--targets", nargs="+", required=True)
    sweep.add_argument("--engines", nargs="+", required=True)
    sweep.add_argument("--runs", type=_count, default=DEFAULT_NB_INFERENCE)
    sweep.add_argument("--type", default="TYPE1", choices=["TYPE1", "TYPE2"])
    sweep.add_argument("-o", "--output", default=DEFAULT_SWEEP_DIR)
    sweep.set_defaults(func=cmd_sweep)

    targets = sub.add_parser("targets", help="targets, instances, engines and their state")
    targets.add_argument("--json", action="store_true")
    targets.set_defaults(func=cmd_targets)

    bench = sub.add_parser("bench", help="benchmark a model")
    bench.add_argument("model", help="model file (.onnx, .tflite) or a stored model-N reference")
    bench.add_argument("--target", required=True)
    bench.add_argument("--engine", required=True)
    bench.add_argument("--type", choices=["TYPE1", "TYPE2"])
    bench.add_argument("--dataset", help="raw dataset file (TYPE2)")
    bench.add_argument("--runs", type=_count, default=DEFAULT_NB_INFERENCE)
    bench.add_argument("--param", action="append", metavar="KEY=VALUE")
    bench.add_argument("--public", action="store_true", help="let every user see the result")
    bench.add_argument("--json", action="store_true", help="print only the report JSON")
    bench.add_argument("--no-wait", action="store_true", help="submit and print the id")
    bench.set_defaults(func=cmd_bench)

    results = sub.add_parser("results", help="benchmark history")
    results.add_argument("--target")
    results.add_argument("--engine")
    results.add_argument("--model")
    results.add_argument("--status")
    fmt = results.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    results.set_defaults(func=cmd_results)

    token = sub.add_parser("token", help="create, list or revoke API tokens")
    token.add_argument("--name", default="", help="a label for the new token")
    token.add_argument("--list", action="store_true", help="list your tokens")
    token.add_argument("--revoke", type=int, metavar="ID", help="revoke a token")
    token.add_argument("--json", action="store_true")
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
        return handler(args)
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
