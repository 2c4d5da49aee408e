"""Writing files so that nothing half-written is ever left behind, and nothing written is lost.

Every file the package writes (weights, checkpoints, run logs, figures, data stores) goes through
:func:`atomic_write`: a temporary file beside the target, flushed to the disk, then renamed onto it. A process
killed at any moment leaves either the old file or the new one; a machine that loses power after the write
returned has the new one (the data and the rename are synced before it returns).

A process killed mid-write leaves its temporary file. The temporary names carry the writing host and process, so
the next write of the same file removes those of processes that no longer run and that have not been written to
for a minute (:func:`sweep_stale_temps`; the age guards against containers that share a host name but not their
process numbers).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from alexnet.errors import OutputError

STALE_AFTER = 60.0  # seconds a dead writer's temporary file must have been left alone before it is swept


def process_umask() -> int:
    """This process's umask (read by setting it and setting it back: there is no getter)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@functools.cache
def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (``mkstemp`` makes 0600)."""
    return 0o666 & ~process_umask()


def file_in_the_way(path: Path) -> Path | None:
    """The first of ``path``'s parent folders that exists as a file, if any: why the folder cannot be made."""
    return next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)


@functools.cache
def _host() -> str:
    # no dots: the host is read back from the right of a dotted name
    return socket.gethostname().replace(".", "_") or "localhost"


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary files for target file ``name``: ``.<name>.<host>.<pid>.``."""
    return f".{name}.{_host()}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale_temps(folder: Path, name: str, suffix: str, min_age: float = STALE_AFTER) -> list[Path]:
    """Remove the temporary files (or folders) of target ``name`` in ``folder`` whose writer, a process on this
    host, has died (killed mid-write), untouched for ``min_age`` seconds. Those of live processes and other hosts
    (a shared folder) are kept. Returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    lead = f".{name}."
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(lead) and p.name.endswith(suffix)]
    except OSError:
        return removed
    for path in candidates:
        # .<name>.<host>.<pid>.<random><suffix>; <name> may itself hold dots, so read from the right
        parts = path.name[len(lead) : len(path.name) - len(suffix)].rsplit(".", 2)
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            if now - path.lstat().st_mtime < min_age:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def make_temp(folder: Path, name: str, suffix: str = ".tmp", *, directory: bool = False) -> Path:
    """A new temporary file (or folder) in ``folder`` for target ``name``, named so that a later call can tell
    it was left by a killed process; leftovers of such processes are removed first."""
    sweep_stale_temps(folder, name, suffix)
    if directory:
        return Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=suffix, dir=folder))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


def fsync_path(path: str | Path, *, folder: bool = False) -> None:
    """Flush ``path``'s data (or a folder's entries, with ``folder=True``) to the disk. Folders whose file
    system cannot sync them (some network and virtual file systems say EINVAL) are let be."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not folder or e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object], *, durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file.

    With ``durable`` (the default) the file's data is synced before the rename and the folder after it, so the
    new file survives a power loss too, never replaced by an empty one. The file gets the mode of the file it
    replaces, else what the umask gives a new file. A path that cannot be written raises :class:`OutputError`
    naming it and the reason."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else new_file_mode()
        tmp = str(make_temp(path.parent, path.name))
        write(tmp)
        os.chmod(tmp, mode)  # after writing: a writer may replace the file (safetensors' save_file does)
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        tmp = None
        if durable:
            fsync_path(path.parent, folder=True)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = e.strerror or str(e)
        if e.filename and Path(e.filename) in path.parents:  # a folder on the way
            blocking = file_in_the_way(path)
            reason = f"{blocking} is not a folder" if blocking else f"{reason}: {e.filename}"
        raise OutputError(f"cannot write {path}: {reason}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path
