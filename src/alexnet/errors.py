"""Typed errors with messages a person can act on. The CLI prints them as one line and exits with code 2."""


class AlexnetError(Exception):
    """Base class: anything the user can fix (bad name, bad file, bad data)."""


class ModelNotFound(AlexnetError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LayerNotFound(AlexnetError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SelectionError(AlexnetError, ValueError):
    """A channel or unit that the chosen layer does not have (out of range)."""


class InputSizeError(AlexnetError, ValueError):
    """An image size the model's classifier cannot take (its fc6 expects a fixed pool5 map)."""


class ModelOptionError(AlexnetError, ValueError):
    """A model option with a value the network cannot be built with (``num_classes=-1``, a too-small input)."""


class WeightsError(AlexnetError):
    """Unreadable or malformed weights file."""


class WeightsMismatch(WeightsError):
    """Weights that do not fit the model: names the tensor and both shapes."""


class OutputError(AlexnetError, OSError):
    """An output path that cannot be written (no such folder, a file where a folder should be, no permission,
    disk full). Still an ``OSError``, for callers that tolerate a failed write (a cache)."""


class DataError(AlexnetError):
    """Bad data folder, bad image, too many unreadable files."""


class ImageError(DataError):
    """A file that is not a decodable image. ``path``: the file, where the code reporting it knows it (the message
    names it anyway)."""

    path: str | None = None


class TrainingError(AlexnetError):
    """A run that cannot continue (NaN loss, bad resume state)."""


class StoppedByMainRank(TrainingError):
    """Raised on the other ranks of a torchrun job when rank 0 has failed and printed why: they stop with the same
    exit code without repeating it (torchrun may kill them before they could print anyway)."""


class Interrupted(AlexnetError):
    """A run stopped by a signal (Ctrl-C, SIGTERM) after saving its state. The command exits with 128 + the
    signal's number, as a shell reports a process that the signal ended. ``quiet``: another rank says it."""

    def __init__(self, message: str, signum: int, quiet: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        self.quiet = quiet

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
