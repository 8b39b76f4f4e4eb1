"""``tnrwatch``: the operators' command (partner-contract.md §4).

Each command group lives in its own module with a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

COMMAND_MODULES = ["cli.keys", "cli.replay", "cli.eval", "cli.importer"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tnrwatch", description="Operate tnrwatch.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
