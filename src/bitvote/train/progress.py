"""Progress on stderr and the per-epoch CSV log.

On a terminal one line is redrawn in place (epoch, batch, loss, accuracy, images/s, ETA); in a
log file or pipe it becomes a plain line every ``log_every`` seconds (default 60) plus one per
epoch, so logs stay readable and a long epoch is never silent.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

from ..io import atomic_write_bytes

__all__ = ["Progress", "write_csv", "CSV_FIELDS", "fmt_time"]

CSV_FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "test_top1", "test_top5",
              "images_per_s", "epoch_s", "wall_s"]


def fmt_time(s: float) -> str:
    s = int(max(s, 0))
    h, r = divmod(s, 3600)
    return f"{h}:{r // 60:02d}:{r % 60:02d}" if h else f"{r // 60}:{r % 60:02d}"


class Progress:
    def __init__(self, epochs: int, steps: int, stream=None, quiet: bool = False, log_every: float = 60.0):
        self.epochs, self.steps = epochs, steps
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.quiet = quiet
        self.log_every = log_every
        self._last = time.monotonic()

    def update(self, epoch: int, batch: int, loss: float, acc: float, ips: float, eta_s: float, force=False):
        """Redraw the bar (terminal: at most 5 times a second; elsewhere: a line every log_every s)."""
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty:
            if now - self._last >= self.log_every:
                self._last = now
                self.stream.write(f"epoch {epoch + 1}/{self.epochs} step {batch}/{self.steps} loss {loss:.3f} "
                                  f"acc {100 * acc:.1f}% {ips:.0f} img/s ETA {fmt_time(eta_s)}\n")
                self.stream.flush()
            return
        if not force and now - self._last < 0.2:
            return
        self._last = now
        done = int(20 * batch / max(self.steps, 1))
        bar = "#" * done + "." * (20 - done)
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] {batch}/{self.steps} "
                          f"loss {loss:.3f} acc {100 * acc:.1f}% {ips:.0f} img/s ETA {fmt_time(eta_s)}  ")
        self.stream.flush()

    def epoch_end(self, row: dict, eta_s: float):
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        test = ""
        if row.get("test_top1") not in (None, ""):
            test = f" test top1 {row['test_top1']:.2f}% top5 {row['test_top5']:.2f}%"
        self.stream.write(f"epoch {row['epoch']}/{self.epochs} loss {row['train_loss']:.3f} "
                          f"acc {row['train_acc']:.2f}%{test} {row['images_per_s']:.0f} img/s "
                          f"{fmt_time(row['epoch_s'])} (ETA {fmt_time(eta_s)})\n")
        self.stream.flush()

    def note(self, text: str):
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


def write_csv(path: Path, rows) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS})
    atomic_write_bytes(path, buf.getvalue().encode())
