"""`fleet`: the command line of carla-fleet.

Commands live one per module in this package (`fleet train`, `fleet evaluate`, ...) and
benchmarks one per module in `cluster/bench/` (`fleet bench NAME`); each such module defines
`register(cli: Commands) -> None` and is discovered here, so adding a command never edits
this file. (A module of either package without `register` is a helper of the others.)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence

import cluster.bench
from learner.common import mkl_amd
from learner.common.errors import FleetError

Handler = Callable[[argparse.Namespace], int | None]


class Commands:
    """Where command modules add `fleet NAME` and `fleet bench NAME` sub-commands."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._top = parser.add_subparsers(dest="command", metavar="COMMAND")
        bench = self._top.add_parser("bench", help="measure speed and memory (benchmarks, not tests)")
        self._bench = bench.add_subparsers(dest="bench", metavar="BENCH")
        bench.set_defaults(func=lambda _args: _usage(bench))
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def command(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        parser = self._top.add_parser(name, help=help, description=help)
        parser.set_defaults(func=handler)
        return parser

    def bench(self, name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
        parser = self._bench.add_parser(name, help=help, description=help)
        parser.set_defaults(func=handler)
        return parser

    def group(self, name: str, help: str) -> argparse._SubParsersAction:
        """A command with its own sub-commands (e.g. `fleet snapshots list`)."""
        if name not in self._groups:
            parser = self._top.add_parser(name, help=help, description=help)
            parser.set_defaults(func=lambda _args: _usage(parser))
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
        return self._groups[name]


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Distributed TD3 training of driving agents on Ray (CARLA or the embedded simulator).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cli = Commands(parser)
    for package in (sys.modules[__name__], cluster.bench):
        for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if mod.name.startswith("_"):  # __main__ (python -m cluster.cli) runs the command line on import
                continue
            register = getattr(importlib.import_module(f"{package.__name__}.{mod.name}"), "register", None)
            if register is not None:
                register(cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    store_fs = sys.modules.get("checkpoint_store.fs")  # not imported: no store call to wait for
    # Only as the process's own command (argv None: the `fleet` script, `python -m cluster.cli`): a caller
    # that passes argv (a test, a library user) keeps its process, whatever an earlier call abandoned.
    if argv is None and store_fs is not None and store_fs.abandoned():
        # A store call given up on (a server that never answers) is still running, and pyarrow's S3
        # shutdown would wait for it: end now, with what was printed already out.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def runs_a_learner(argv: Sequence[str]) -> bool:
    """Whether the command in `argv` runs a CPU learner in this process (`train --local`, `bench
    learner`, and `bench learning`, whose peers learn in its process): the only commands that load
    learner/common/mkl_amd.py's library, which must happen before the command modules import torch, so before
    `argv` is parsed. A Ray run's learner gets it on its node."""
    if "-h" in argv or "--help" in argv:
        return False
    words = [a for a in argv if not a.startswith("-")]  # the top level has no option taking a value
    if words[:1] == ["train"]:
        return "--local" in argv
    return words[:2] in (["bench", "learner"], ["bench", "learning"])


def _main(argv: Sequence[str] | None = None) -> int:
    if runs_a_learner(sys.argv[1:] if argv is None else list(argv)):
        mkl_amd.preload()  # MKL's AVX-512 kernels on AMD CPUs
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except FleetError as exc:  # bad input, config, store, simulator setup or state: one line, never a traceback
        print(f"fleet: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 2: the user's to fix; 1: a lost node (cluster/runtime/nodes.py NodeLost)
