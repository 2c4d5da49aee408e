"""Ctrl-C and SIGTERM let a long command finish the work under way and save it before it stops.

Training (a step), a top-9 pass (a batch), ``data-pack`` (a chunk of images) and the extraction of a retrieval
gallery's features (a shard) catch SIGINT and SIGTERM while they run, finish the unit under way, save their state
(``alexnet eval``: print its numbers over the images seen so far) and raise :class:`~alexnet.errors.Interrupted`: the command then says where it stopped and how to go on, and exits
with 128 + the signal's number, as a shell reports a process the signal ended. A second Ctrl-C stops at once
(what was saved last is kept). A signal the process was started ignoring stays ignored: a shell starts a
script's background jobs ignoring SIGINT, so that the terminal's Ctrl-C does not end them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from alexnet.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Catches SIGINT and SIGTERM inside a ``with`` block: :attr:`signum` is the first one received (``None``
    before), for the code to check between units of work. ``announce``: what to print on stderr when the first
    arrives (after ``alexnet: SIGINT: ``), or ``None``. Handlers are installed only in the main thread (the only
    one that may), and restored on exit."""

    def __init__(self, announce: str | None = None) -> None:
        self.announce = announce
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C again: now
            return  # torchrun's SIGTERM after the terminal's SIGINT: already stopping
        self.signum = signum
        if self.announce:
            sys.stderr.write(
                f"\nalexnet: {signal.Signals(signum).name}: {self.announce} (Ctrl-C again: now)\n"
            )

    def interrupted(self, message: str, quiet: bool = False) -> Interrupted:
        """The error to raise once the state is saved: ``SIGINT: <message>``, exit code 128 + the signal."""
        assert self.signum is not None
        return Interrupted(f"{signal.Signals(self.signum).name}: {message}", self.signum, quiet=quiet)


def quiet_worker_signals(_worker_id: int = 0) -> None:
    """A data-loading worker leaves Ctrl-C and a scheduler's SIGTERM to the main process: the terminal sends
    Ctrl-C to the whole process group, and systemd, SLURM and ``kill -TERM -PGID`` send SIGTERM so; a worker that
    died of either would break the batch the main process is waiting for. A SIGTERM from the main process itself
    (the loader's shutdown, ``multiprocessing``'s terminate at exit) still ends the worker at once with status 0,
    as torch's own worker handler does (which this replaces: it dies of anyone's SIGTERM): ignoring that one too
    would hang the exit. Where the sender cannot be told (no ``sigwaitinfo``: macOS), SIGTERM ends the worker.
    A ``worker_init_fn`` for ``torch.utils.data.DataLoader``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    # SIGTERM stays pending until this thread takes it and looks at who sent it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def sort_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass  # someone else's: the main process decides
        # ended on request: status 0, which torch's SIGCHLD handler does not report as a worker's failure
        os._exit(0)

    threading.Thread(target=sort_sigterm, name="alexnet-sigterm", daemon=True).start()
