"""Progress of the long loops (training, soft-label scoring) that a person can follow.

On a terminal a tqdm bar moves with every step. Whatever the output, a plain line is logged on the
`polydistill.progress` logger at least every `interval` seconds (a heartbeat thread, so a long evaluation pass does
not silence it) and once at the end: task, step / total, the latest figures (loss parts, validation macro-F1 per
language), elapsed time and ETA. In a stage flow those lines reach the terminal and the Prefect UI
(flows.common.show_core_logs). The interval changes no result, so it is not a params.yaml knob (a change there
would rerun stages): POLYDISTILL_PROGRESS_SECONDS sets it, default 30.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from types import TracebackType

from tqdm.auto import tqdm

log = logging.getLogger("polydistill.progress")
INTERVAL_VARIABLE = "POLYDISTILL_PROGRESS_SECONDS"
DEFAULT_INTERVAL_SECONDS = 30.0


class Progress:
    """A progress bar on a terminal and a heartbeat log line; use as a context manager around the loop."""

    def __init__(self, task: str, total: int, unit: str = "step", done: int = 0, quiet: bool = False) -> None:
        """`quiet` shows nothing (a training process other than the main one)."""
        self.task, self.total, self.unit, self.quiet = task, total, unit, quiet
        self.interval = float(os.environ.get(INTERVAL_VARIABLE, DEFAULT_INTERVAL_SECONDS))
        self.done, self.first, self.figures = done, done, {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._bar = tqdm(total=total, initial=done, desc=task, unit=unit, disable=quiet or not sys.stderr.isatty(),
                         leave=False)
        context = contextvars.copy_context()  # the heartbeat's lines belong to the caller's flow / task run
        self._heartbeat = threading.Thread(target=context.run, args=(self._beat,), name=f"progress-{task}",
                                           daemon=True)

    def __enter__(self) -> Progress:
        if not self.quiet:
            self._heartbeat.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stopped.set()
        if not self.quiet:
            self._heartbeat.join()
        self._bar.close()
        if kind is None and not self.quiet:
            self.log_line()

    def update(self, done: int, figures: dict[str, float] | None = None) -> None:
        """Record `done` units finished, and the latest figures to show beside them."""
        with self._lock:
            self.done = done
            if figures:
                self.figures = {**self.figures, **figures}
        self._bar.update(done - self._bar.n)
        if figures:
            self._bar.set_postfix({name: f"{value:.4g}" for name, value in self.figures.items()}, refresh=False)

    def line(self) -> str:
        """The plain progress line: task, done / total, figures, elapsed and ETA."""
        with self._lock:
            done, figures = self.done, dict(self.figures)
        elapsed = time.monotonic() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        shown = ", ".join(f"{name} {value:.4f}" for name, value in figures.items())
        return (f"{self.task}: {self.unit} {done}/{self.total} ({100 * done / max(1, self.total):.0f}%)"
                f"{', ' + shown if shown else ''}, elapsed {clock(elapsed)}, ETA {clock(eta)}")

    def log_line(self) -> None:
        log.info("%s", self.line())

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            self.log_line()


def clock(seconds: float) -> str:
    """Seconds as h:mm:ss (or m:ss); '?' when unknown."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
