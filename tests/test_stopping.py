"""alexnet.stopping: what Ctrl-C and SIGTERM do to a long command (training, top-9, data-pack, retrieval)."""

from __future__ import annotations

import os
import signal
import threading
import time

from alexnet.stopping import StopSignals


def test_a_signal_is_recorded_and_turned_into_an_interruption_with_the_shells_exit_code(
    ctrl_c_reaches_us,
) -> None:
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes
        assert signals.signum == signal.SIGTERM
        error = signals.interrupted("stopped after 3 of 9 images")
    assert str(error) == "SIGTERM: stopped after 3 of 9 images" and error.exit_code == 143


def test_a_signal_the_process_was_started_ignoring_stays_ignored(ctrl_c_reaches_us) -> None:
    """A shell starts a script's background jobs ignoring SIGINT: the terminal's Ctrl-C is not for them."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as signals:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert signals.signum is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen: list[object] = []

    def in_a_thread() -> None:
        with StopSignals():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [before]
