"""One download: ``url`` → ``target`` through a temporary file beside it, checked, then renamed; nothing is left
behind on failure or interruption, and a network that stops answering gives up after ``timeout`` seconds."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from alexnet.errors import WeightsError
from alexnet.files import fsync_path, make_temp, process_umask


def download(
    url: str,
    target: Path,
    *,
    timeout: float,
    check: Callable[[Path], None] | None = None,
    progress: bool = True,
    what: str | None = None,
) -> Path:
    """Fetch ``url`` into ``target``. ``check`` sees the complete temporary file first (a digest) and raises to
    refuse it. Errors are one :class:`WeightsError` line that names ``what`` and says where to put the file."""
    offline = f"offline, fetch it elsewhere and put it at {target}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create {target.parent} ({e.strerror or e}); {offline}") from None
    tmp = make_temp(target.parent, target.name, ".part")
    try:
        with (
            open(tmp, "wb") as out,
            urllib.request.urlopen(
                url, timeout=timeout
            ) as response,  # the timeout: connecting and every read
        ):
            from tqdm import tqdm

            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp's 0600 → what a plain open() would have made
        fsync_path(tmp)  # as files.atomic_write: a power loss must not leave an empty file under the name
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as e:  # TimeoutError is an OSError
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, TimeoutError):
            reason = f"no answer for {timeout:g} s"
        raise WeightsError(
            f"cannot download {what or target.name} from {url} ({reason}); {offline}"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
