"""IPython magics: `%load_ext vlab_kernel`, then `%vlab targets`, `%vlab engines`,
`%vlab bench MODEL --target T --engine E [--runs N] [--type TYPE] [--dataset F] [--param k=v]`,
`%vlab results [--target T] [--engine E] [--model M] [--status S] [--tag T]... [--name N]`."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from vlab_kernel.defaults import DEFAULT_NB_INFERENCE
from vlab_kernel.errors import VlabError
from vlab_kernel.lab import Lab, connect


class MagicUsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the kernel
        raise MagicUsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%vlab", add_help=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("targets")
    sub.add_parser("engines")
    bench = sub.add_parser("bench")
    bench.add_argument("model")
    bench.add_argument("--target", required=True)
    bench.add_argument("--engine", required=True)
    bench.add_argument("--runs", type=int, default=DEFAULT_NB_INFERENCE)
    bench.add_argument("--type")
    bench.add_argument("--dataset")
    bench.add_argument("--param", action="append", default=[])
    bench.add_argument("--name")
    bench.add_argument("--tag", action="append", default=[])
    results = sub.add_parser("results")
    for option in ("--target", "--engine", "--model", "--status", "--name"):
        results.add_argument(option)
    results.add_argument("--tag", action="append", default=[])
    return parser


def _params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise MagicUsageError(f"--param expects KEY=VALUE, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@magics_class
class VlabMagics(Magics):
    _lab: Lab | None = None

    @property
    def lab(self) -> Lab:
        if self._lab is None:
            self._lab = connect()
        return self._lab

    @line_magic
    def vlab(self, line: str) -> Any:
        """Run `%vlab targets|engines|bench|results ...`; errors print one line."""
        try:
            args = _parser().parse_args(shlex.split(line))
            if args.command == "targets":
                return self.lab.targets()
            if args.command == "engines":
                return self.lab.engines()
            if args.command == "results":
                return self.lab.results(target=args.target, engine=args.engine,
                                        model=args.model, status=args.status,
                                        tags=args.tag, name=args.name)
            return self.lab.benchmark(args.model, args.target, args.engine, runs=args.runs,
                                      type=args.type, dataset=args.dataset,
                                      params=_params(args.param), name=args.name,
                                      tags=args.tag, wait=True)
        except (MagicUsageError, VlabError) as exc:
            print(f"vlab: error: {exc}")
            return None
