"""The ``alexnet`` command line. Argument parsing only: every command calls one library function.

Each command lives in its own module here and exposes ``register(subparsers)``; modules are discovered, so a new
command is one new file. Library errors (:class:`alexnet.errors.AlexnetError`) and bad arguments become one line
on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
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


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to ``sys.stderr`` as it is at each message (tests and callers may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def show_build_notices() -> None:
    """Let the one-time build of the CPU kernels (:func:`alexnet.models.native.build`, 8-15 s on first use) say so
    on stderr: without a handler Python shows only warnings, and the command would pause without a word."""
    notices = logging.getLogger("alexnet.models.native")
    if not any(getattr(h, "_alexnet_notice", False) for h in notices.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("alexnet: %(message)s"))
        handler.setLevel(logging.INFO)
        handler._alexnet_notice = True  # type: ignore[attr-defined]
        notices.addHandler(handler)
    notices.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "without_torch", False):  # `alexnet models`: plain data, answered in a tenth of a second
        return run_safely(lambda: args.func(args))
    show_build_notices()
    malloc.tune()  # before the first large tensor: see alexnet/malloc.py
    with denormals.flushed():  # before PyTorch starts its threads: see alexnet/denormals.py
        return run_safely(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["CommandError", "build_parser", "main"]
