"""Progress a person can follow: a line at least every interval during training, with the figures that matter."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training import PAD, settings, tiny_model, toy_set

from polydistill.model.training import cross_entropy_loss, train_classifier
from polydistill.progress import INTERVAL_VARIABLE, Progress, clock

INTERVAL = 0.3
LINE = re.compile(r"^tiny student: step (\d+)/60 \(\d+%\), loss [\d.]+, cross_entropy [\d.]+"
                  r"(, val_f1_en [\d.]+, val_f1_zh [\d.]+, val_f1_mean [\d.]+)?, elapsed \d+:\d\d, ETA (\d+:\d\d|\?)$")


def slow_loss(model, batch):  # ~25 ms a step, so the run lasts long enough for several heartbeats
    time.sleep(0.025)
    return cross_entropy_loss(model, batch)


def test_training_logs_a_progress_line_at_least_every_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_VARIABLE, str(INTERVAL))
    with caplog.at_level(logging.INFO, logger="polydistill.progress"):
        started = time.time()
        train_classifier(tiny_model(), toy_set(160, 1), toy_set(60, 2), settings(), tmp_path, PAD,
                         loss_function=slow_loss, task="tiny student")
        ended = time.time()
    records = [record for record in caplog.records if record.name == "polydistill.progress"]
    times = [started, *(record.created for record in records)]
    assert len(records) >= 4 and ended - records[-1].created < 0.2
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) < INTERVAL + 0.5, "a gap longer than the interval"
    matches = [LINE.match(record.getMessage()) for record in records]
    assert all(matches), [record.getMessage() for record, match in zip(records, matches, strict=True) if not match]
    assert [int(match.group(1)) for match in matches][-1] == 60
    assert any(match.group(2) for match in matches), "no line showed the validation macro-F1 per language"


def test_progress_reaches_a_non_terminal_stderr_once(tmp_path: Path) -> None:
    """As in `dvc repro > log`: the core's lines reach stderr through Prefect's console handler, each once."""
    script = ("from flows.common import show_core_logs\n"
              "from polydistill.progress import Progress\n"
              "show_core_logs()\n"
              "with Progress('scoring', 10, unit='text') as shown:\n"
              "    shown.update(10, {'kept': 1.0})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[1])
    lines = [line for line in result.stderr.splitlines() if "polydistill.progress - scoring:" in line]
    assert result.returncode == 0, result.stderr
    assert len(lines) == 1 and "text 10/10 (100%), kept 1.0000, elapsed 0:00, ETA 0:00" in lines[0]


def test_clock_formats() -> None:
    assert (clock(5), clock(65), clock(3725), clock(float("nan"))) == ("0:05", "1:05", "1:02:05", "?")
    assert Progress("x", 4).line().startswith("x: step 0/4 (0%), elapsed 0:00, ETA ?")
