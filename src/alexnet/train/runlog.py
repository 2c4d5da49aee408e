"""The run folder's human-readable side: ``train.log``, ``metrics.csv``, ``steps.csv``, the learning-curve PNG.

Only rank 0 writes. On resume, rows newer than the checkpoint (steps that are re-done) are dropped first, so the
files read as if the run had never been interrupted.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from alexnet.files import atomic_write

METRICS = "metrics.csv"
STEPS = "steps.csv"
LOG = "train.log"
CURVE = "learning_curve.png"
METRIC_FIELDS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_loss",
    "val_top1_err",
    "val_top5_err",
    "images_per_s",
    "data_wait",  # share of the training time spent getting the next batch: near 1 = input-bound
]
STEP_FIELDS = ["step", "epoch", "lr", "loss"]

log = logging.getLogger("alexnet.train")


# ``extra=`` of a warning that the person at the terminal must see as well as train.log (an empty class folder, a
# damaged checkpoint set aside): once train.log has a handler, Python no longer prints warnings by itself. The
# health monitor's live warnings are not marked: the progress bar shows them.
ON_CONSOLE = {"console": True}


class _ConsoleNotices(logging.Handler):
    """The records marked :data:`ON_CONSOLE`, on stderr above the progress bar."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(lambda record: getattr(record, "console", False))

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        from tqdm import tqdm

        tqdm.write(f"alexnet: warning: {record.getMessage()}", file=sys.stderr)


def attach_log_file(run_dir: Path) -> list[logging.Handler]:
    """Send the package's log records (skipped files from :mod:`alexnet.data`, run events) to ``train.log``, and
    the warnings marked :data:`ON_CONSOLE` to stderr."""
    handler = logging.FileHandler(run_dir / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("alexnet")
    handlers = [handler, _ConsoleNotices()]
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.INFO)
    return handlers


def detach_log_file(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        logging.getLogger("alexnet").removeHandler(handler)
        handler.close()


class CsvLog:
    """An append-only CSV file with a header; ``truncate_after(step)`` drops rows of re-done steps.

    ``fresh``: start the file anew (a new run in a folder where an earlier one was killed before its first
    checkpoint must not append to that run's rows). The header is written atomically, so a killed start never
    leaves a file whose first data row would be read as its header."""

    def __init__(self, path: Path, fields: list[str], *, fresh: bool = False) -> None:
        self.path, self.fields = path, fields
        if fresh or not path.exists() or path.stat().st_size == 0:
            self._rewrite([])

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k)) for k in self.fields])

    def rows(self) -> list[dict[str, str]]:
        """The complete rows: one cut short (a disk that filled up mid-row) is left out."""
        with self.path.open(newline="") as f:
            return [r for r in csv.DictReader(f) if None not in r and None not in r.values()]

    def truncate_after(self, step: int) -> None:
        self._rewrite([r for r in self.rows() if r["step"].isdigit() and int(r["step"]) <= step])

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.fields)
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def plot_learning_curve(run_dir: Path) -> Path | None:
    """Training loss per step and validation loss / top-1 error per evaluation → ``learning_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = CsvLog(run_dir / STEPS, STEP_FIELDS).rows()
    metrics = CsvLog(run_dir / METRICS, METRIC_FIELDS).rows()
    if not steps:
        return None
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    x = [int(r["step"]) for r in steps]
    y = [float(r["loss"]) for r in steps]
    ax_loss.plot(x, y, lw=0.6, alpha=0.4, label="train loss (step)")
    window = max(1, len(y) // 50)
    if window > 1:
        smooth = [
            sum(y[max(0, i - window + 1) : i + 1]) / len(y[max(0, i - window + 1) : i + 1])
            for i in range(len(y))
        ]
        ax_loss.plot(x, smooth, lw=1.5, label=f"train loss ({window}-step mean)")
    if metrics:
        mx = [int(r["step"]) for r in metrics]
        ax_loss.plot(mx, [float(r["val_loss"]) for r in metrics], "o-", label="val loss")
        ax_err.plot(mx, [100 * float(r["val_top1_err"]) for r in metrics], "o-", label="val top-1 error")
        ax_err.plot(mx, [100 * float(r["val_top5_err"]) for r in metrics], "s-", label="val top-5 error")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="step", ylabel="error (%)", title="validation error", ylim=(0, 100))
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = run_dir / CURVE
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
