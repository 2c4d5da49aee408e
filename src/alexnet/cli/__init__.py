"""The ``alexnet`` command line. Argument parsing only: every command calls one library function.

Each command lives in its own module here and exposes ``register(subparsers)``; modules are discovered, so a new
command is one new file. Library errors (:class:`alexnet.errors.AlexnetError`) and bad arguments become one line
on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence

from alexnet import denormals, malloc
from alexnet.cli._common import ArgumentParser, CommandError, run_safely


def build_parser() -> ArgumentParser:
    from alexnet import __version__

    parser = ArgumentParser(
        prog="alexnet",
        description="AlexNet (NIPS 2012) and ZFNet (ECCV 2014): build, train, evaluate, measure and look inside.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    malloc.tune()  # before the first large tensor: see alexnet/malloc.py
    with denormals.flushed():  # before PyTorch starts its threads: see alexnet/denormals.py
        return run_safely(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["CommandError", "build_parser", "main"]
