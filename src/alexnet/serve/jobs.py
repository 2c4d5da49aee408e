"""Background jobs (the occlusion study) that the page polls for progress.

One worker thread: an occlusion map is hundreds of forward passes, and running two at once on a 2-core CPU
would only make both slower and the page less responsive. Finished jobs are kept (bounded) so the page can
fetch their images; a failing job records its error message instead of killing the worker.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from alexnet.errors import AlexnetError

Progress = Callable[[int, int], None]


class UnknownJob(AlexnetError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"  # queued → running → done | failed
    done: int = 0
    total: int = 0
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)  # JSON-able summary
    files: dict[str, bytes] = field(default_factory=dict)  # name → PNG

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "progress": self.done / self.total if self.total else 0.0,
            "error": self.error,
            "result": self.result,
            "files": sorted(self.files),
        }


class TooManyJobs(AlexnetError):
    """More jobs waiting than the server takes: each is minutes of CPU (an occlusion study), one at a time."""


class JobStopped(AlexnetError):
    """Raised inside a running job (at its next progress report) when the server shuts down."""


class JobRunner:
    """Runs jobs one at a time. :meth:`shutdown` stops the running job at its next progress report: the worker
    is not a daemon thread, so the interpreter waits for it at exit, and Ctrl-C must not wait for a whole
    occlusion study (hundreds of forward passes)."""

    def __init__(self, keep: int = 32, max_pending: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alexnet-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep
        self._max_pending = max_pending
        self._pending: list[Job] = []  # queued or running, whether still listed or not
        self._stopping = threading.Event()

    def submit(self, kind: str, work: Callable[[Job, Progress], None], key: str | None = None) -> Job:
        """Queue ``work(job, progress)``; with ``key``, an identical job already known is returned instead.
        :class:`TooManyJobs` when ``max_pending`` jobs are queued or running already."""
        with self._lock:
            if key is not None and key in self._jobs and self._jobs[key].state != "failed":
                return self._jobs[key]
            self._pending = [j for j in self._pending if j.state in ("queued", "running")]
            if len(self._pending) >= self._max_pending:
                raise TooManyJobs(
                    f"{len(self._pending)} jobs are queued or running already; try again when one has finished"
                )
            job = Job(key or uuid.uuid4().hex[:16], kind)
            self._jobs[job.id] = job
            self._pending.append(job)
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)

        def progress(done: int, total: int) -> None:
            if self._stopping.is_set():  # the work's progress reports are its points to stop at
                raise JobStopped("the server is shutting down")
            job.done, job.total = done, total

        def run() -> None:
            job.state = "running"
            try:
                work(job, progress)
                job.state = "done"
            except AlexnetError as e:
                job.error, job.state = str(e), "failed"
            except Exception as e:  # a job's failure is reported to the page; the worker lives on
                job.error, job.state = f"internal error: {type(e).__name__}: {e}", "failed"

        try:
            self._pool.submit(run)
        except RuntimeError:  # shut down: the pool takes no new work
            job.error, job.state = "the server is shutting down", "failed"
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise UnknownJob(f"no job {job_id!r}")
            return self._jobs[job_id]

    def shutdown(self, wait: bool = False) -> None:
        """Cancel queued jobs and stop the running one at its next progress report; ``wait``: until it has."""
        self._stopping.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)
        with self._lock:
            for job in self._jobs.values():
                if job.state == "queued":  # cancelled: it will never run
                    job.error, job.state = "the server is shutting down", "failed"
