"""files: atomic writes are durable (synced before the rename) and a killed writer's leftovers are swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet import files
from alexnet.files import atomic_write, make_temp, sweep_stale_temps, temp_prefix

# Writes half of a file through atomic_write, says so, then waits to be killed.
KILLED_WRITER = """
import sys, time
from pathlib import Path
from alexnet.files import atomic_write

def write(tmp):
    Path(tmp).write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(600)

atomic_write(sys.argv[1], write)
"""


def _age(path: Path, seconds: float = 2 * files.STALE_AFTER) -> Path:
    """Pretend ``path`` was last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_write_syncs_the_data_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Without the first sync a power loss can leave an empty file under the name; without the second, the old."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "out.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(temp_prefix("out.txt"))  # the temporary file's data
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)  # then the folder's entry
    assert target.read_text() == "new"
    events.clear()
    atomic_write(tmp_path / "fast.txt", lambda tmp: Path(tmp).write_text("x"), durable=False)
    assert [kind for kind, _ in events] == ["replace"]


def test_a_writer_killed_mid_write_leaves_a_temporary_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = [p for p in tmp_path.iterdir() if p != target]
    assert len(left) == 1 and left[0].name.startswith(f".model.safetensors.{files._host()}.{proc.pid}.")
    assert target.read_text() == "old"  # the old file is untouched
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert left[
        0
    ].exists()  # written to a moment ago: perhaps a process of another container with our host name
    _age(left[0])
    atomic_write(target, lambda tmp: Path(tmp).write_text("newer"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert target.read_text() == "newer"


def test_the_sweep_keeps_the_temporary_files_of_live_processes_other_hosts_and_other_targets(tmp_path):
    live = make_temp(tmp_path, "a.txt")  # this process: alive
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = files._host()
        other_live = tmp_path / f".a.txt.{host}.{sleeper.pid}.abc123.tmp"
        other_host = tmp_path / f".a.txt.elsewhere.{_dead_pid()}.abc123.tmp"
        other_target = tmp_path / f".a.txt.bak.{host}.{_dead_pid()}.abc123.tmp"  # of "a.txt.bak"
        dead = tmp_path / f".a.txt.{host}.{_dead_pid()}.abc123.tmp"
        dead_folder = tmp_path / f".a.txt.{host}.{_dead_pid()}.def456.tmp"
        for path in (other_live, other_host, other_target, dead):
            path.write_text("x")
            _age(path)
        (dead_folder / "train").mkdir(parents=True)
        _age(dead_folder)
        removed = sweep_stale_temps(tmp_path, "a.txt", ".tmp")
        assert sorted(removed) == sorted([dead, dead_folder])
        assert all(p.exists() for p in (live, other_live, other_host, other_target))
        assert sweep_stale_temps(tmp_path / "missing", "a.txt", ".tmp") == []  # no folder: nothing to do
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("dotted", ["node1.cluster.example", ""])
def test_temporary_names_read_back_whatever_the_host_is_called(tmp_path, monkeypatch, dotted):
    """A dotted host name is stored without its dots, so the name still splits into host and process."""
    monkeypatch.setattr(files.socket, "gethostname", lambda: dotted)
    files._host.cache_clear()
    try:
        tmp = make_temp(tmp_path, "x.bin")
        # pretend the process died: rename the file to a pid that no longer runs
        stale = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{_dead_pid()}."))
        _age(tmp.rename(stale))
        assert sweep_stale_temps(tmp_path, "x.bin", ".tmp") == [stale]
    finally:
        files._host.cache_clear()


def test_a_killed_synthetic_data_generation_is_swept_by_the_next(tmp_path):
    """The built-in data set is generated into a temporary folder; a killed run's folder goes at the next."""
    from alexnet.data.synthetic import dataset_dir, ensure_builtin_dataset

    kwargs = dict(classes=2, train_per_class=1, val_per_class=1, size=32)
    final = dataset_dir(tmp_path, seed=0, **kwargs)
    host = files._host()
    stale = tmp_path / f".{final.name}.{host}.{_dead_pid()}.abc123.tmp"
    (stale / "train").mkdir(parents=True)
    _age(stale)
    assert ensure_builtin_dataset(tmp_path, seed=0, progress=False, workers=1, **kwargs) == final
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
