"""Shared CLI plumbing: a one-line-error parser, error-to-exit-code mapping, model/weights arguments."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from alexnet.errors import AlexnetError, Interrupted, StoppedByMainRank

EXIT_USAGE = 2


class CommandError(AlexnetError):
    """A user error detected by the CLI itself."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and exit code 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """As argparse, but an unknown flag is reported by the (sub)command it was given to, so the hint names
        that command's help (``see alexnet train --help``), which lists its flags; the top level's does not."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost subcommand parser that ``parsed`` went through (``self`` without subcommands)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
                if chosen is not None:
                    return chosen._chosen(parsed) if isinstance(chosen, ArgumentParser) else chosen
        return self


# Output folders this command created (deepest first): a command that fails removes those still empty, so a bad
# input leaves nothing behind, not even the folder its --out named.
_created: list[Path] = []


def _remove_created_folders() -> None:
    while _created:
        folder = _created.pop(0)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


def run_safely(fn: Callable[[], int | None]) -> int:
    """Run a command; turn user errors into one line on stderr and exit code 2."""
    code = 1  # an unexpected exception: the traceback is the report
    try:
        code = int(fn() or 0)
        return code
    except StoppedByMainRank:  # rank 0 has said why, once for the whole job
        return EXIT_USAGE
    except Interrupted as e:  # stopped on request, its state saved
        if not e.quiet:
            print(f"alexnet: {e}", file=sys.stderr)
        return e.exit_code
    except AlexnetError as e:
        print(f"alexnet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("alexnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        code = 0
        return code
    finally:
        if code != 0:
            _remove_created_folders()
        _created.clear()


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder this process writes into (created if missing), or ``None``."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        _created.extend(missing)
    except OSError as e:
        from alexnet.files import file_in_the_way

        blocking = file_in_the_way(path)
        return f"{blocking} is not a folder" if blocking else f"cannot create {path}: {e.strerror or e}"
    try:  # the one sure test (permissions, read-only mounts, /proc)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"cannot write into {path}: {e.strerror or e}"
    return None


def writable_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder this process can write into, created if missing. Checked before any work is done,
    so a bad ``--out`` fails at once, not after the computation."""
    path = Path(path)
    if problem := _folder_problem(path):
        raise CommandError(f"{flag} {path}: {problem}")
    return path


def writable_file(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a file this process can write (its folder created if missing), checked up front."""
    path = Path(path)
    problem = f"{path} is a folder; give a file name" if path.is_dir() else _folder_problem(path.parent)
    if problem:
        raise CommandError(f"{flag} {path}: {problem}")
    return path


def image_files(paths: list[str]) -> list[str]:
    """The images named on a command line, each folder standing for its image files
    (:func:`alexnet.predict.image_paths`); a folder holding none is an error."""
    from alexnet.errors import ImageError
    from alexnet.predict import image_paths

    found = image_paths(paths)
    for path in found:
        if isinstance(path, ImageError):
            raise path
    return [str(p) for p in found]


def readable_images(paths: Any) -> None:
    """Decode every image up front: a bad one is one line before any output is written, not after the good ones'
    files (``ImageError`` names it)."""
    from alexnet.data.images import read_image

    for path in paths or []:
        read_image(path)


def add_command(sub: Any, name: str, help: str, description: str | None = None) -> ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help)


def model_name(name: str) -> str:
    """An argparse ``type``: a registered model's name, checked as the command line is read (the registry is plain
    data: a misspelt name fails at once, before torch is imported), with the nearest name as a hint."""
    from alexnet.errors import ModelNotFound
    from alexnet.models.registry import get_config

    try:
        get_config(name)
    except ModelNotFound as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


# torch's and NumPy's generators take it whole, with room for the seeds derived from it (seed × 1000 + rank)
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """``--seed`` where torch's generators take it: a whole number from 0 to :data:`MAX_SEED` (a larger one
    would overflow a generator deep inside the run, as a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {MAX_SEED}, not {value}")
    return value


def layer_list(text: str) -> tuple[str, ...]:
    """An argparse ``type``: comma-separated paper layer names (``conv3,conv4``)."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give layer names separated by commas, e.g. conv3,conv4")
    return names


WEIGHTS_HELP = (
    "weights: a .safetensors file written by alexnet, a .pth/.pt state dict, a training run's checkpoint "
    "(RUN/checkpoints/step-N.pt), an .onnx or .caffemodel file "
    "(imported by structure), a published source name (see `alexnet weights sources`; fetched into the cache), "
    "or 'torchvision' (alexnet_owt)"
)


def add_model_arguments(
    p: argparse.ArgumentParser, *, required_weights: bool = False, ensemble: bool = False, run: bool = False
) -> None:
    """``--model M --weights W`` (``W``: see :data:`WEIGHTS_HELP`); with ``ensemble``, ``--weights`` may be
    repeated (a list in ``args.weights``); with ``run``, ``--run DIR`` names a training run's final weights
    instead (repeatable with ``ensemble``), which :func:`load_model_from_args` adds to the weights."""
    from alexnet.models import list_models

    p.add_argument(
        "--model",
        "-m",
        help=f"model name ({', '.join(list_models())}); default: the one recorded in --weights",
    )
    p.add_argument(
        "--weights",
        "-w",
        required=required_weights,
        action="append" if ensemble else "store",
        help=WEIGHTS_HELP
        + (
            "; repeat it for an ensemble: the networks' softmax outputs averaged (AlexNet §6), which must take "
            "the same input and classes"
            if ensemble
            else ""
        ),
    )
    if run:
        p.add_argument(
            "--run",
            metavar="DIR",
            action="append" if ensemble else "store",
            help="a training run folder (uses DIR/model.safetensors)"
            + ("; repeat it, or add --weights, for an ensemble" if ensemble else "; instead of --weights"),
        )


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device``, ``auto`` by default as in ``alexnet train`` (:func:`alexnet.train.distributed.pick_device` resolves it)."""
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: the GPU when CUDA is available, else the CPU, as alexnet train), cpu, cuda, cuda:N "
        "or mps",
    )


def device_from_args(args: argparse.Namespace) -> Any:
    """The ``torch.device`` that ``--device`` names; a bad or absent one is one line (exit code 2), so the
    commands ask before they read any weights or data."""
    from alexnet.train.distributed import pick_device

    return pick_device(args.device)


def load_model_from_args(
    args: argparse.Namespace, *, need_weights: bool = False, unfinished_ok: bool = False
) -> Any:
    """Build the model named by ``--model`` / ``--weights``; fail with one clear line when they do not fit.
    ``--weights`` given more than once (``add_model_arguments(..., ensemble=True)``) gives an
    :class:`alexnet.models.ensemble.Ensemble` of them. ``unfinished_ok``: a ``--run`` that has not finished
    gives its newest checkpoint (:func:`alexnet.train.run_folder.run_weights`)."""
    from alexnet.factory import create_model

    if getattr(args, "run", None):
        args.weights = with_run_weights(args.weights, args.run, unfinished_ok=unfinished_ok)
    if not args.weights:
        if need_weights:
            asked = "--weights FILE or --run DIR" if hasattr(args, "run") else "--weights FILE"
            raise CommandError(f"{asked} is required (a trained model)")
        if args.model is None:
            raise CommandError(
                "give --model NAME, --weights FILE" + (" or --run DIR" if hasattr(args, "run") else "")
            )
        return create_model(args.model)
    return load_weights_list(args.model, args.weights if isinstance(args.weights, list) else [args.weights])


def with_run_weights(
    weights: str | list[str] | None, runs: str | list[str], *, unfinished_ok: bool = False
) -> str | list[str]:
    """``--weights`` with ``--run``'s final weights added: to the list of an ensemble, or instead of one file.
    ``unfinished_ok``: a run that has not finished gives its newest checkpoint."""
    from alexnet.train.run_folder import run_weights

    if isinstance(runs, list):  # add_model_arguments(..., ensemble=True)
        return [*(weights or []), *(str(run_weights(r, checkpoint_ok=unfinished_ok)) for r in runs)]
    if weights is not None:
        raise CommandError("give --run or --weights, not both")
    return str(run_weights(runs, checkpoint_ok=unfinished_ok))


def load_weights_list(model: str | None, weights: list[str]) -> Any:
    """One model per weights file (each checked to exist first); two or more are averaged as an ensemble."""
    from alexnet.weights import load_pretrained

    for w in weights:
        check_weights_exist(w)
    members = [load_pretrained(model, w) for w in weights]
    if len(members) == 1:
        return members[0]
    from alexnet.models.ensemble import Ensemble

    return Ensemble(members, names=weights)


def check_weights_exist(weights: str) -> None:
    """One clear line for a ``--weights`` that is neither a file nor a name that is fetched: "torchvision" and
    the published source names (`alexnet weights sources`) are downloaded or found in the cache."""
    from alexnet.weights.sources import SOURCES

    if weights != "torchvision" and weights not in SOURCES and not Path(weights).exists():
        raise CommandError(f"{weights}: no such weights file")
