"""Where and when a fanned-out task ran: one log line per task, the evidence that per-language tasks ran in
separate worker processes at the same time (tests/test_pipeline_dvc.py reads it)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging import get_run_logger

PLACEMENT_LINE = re.compile(r"placement (?P<name>\S+): process (?P<pid>\d+), (?P<start>[\d.]+)-(?P<end>[\d.]+)")


@contextmanager
def logged_placement(name: str) -> Iterator[None]:
    """Log `placement <name>: process <pid>, <start>-<end>` (epoch seconds) once the body has run."""
    started = time.time()
    yield
    get_run_logger().info("placement %s: process %d, %.3f-%.3f", name, os.getpid(), started, time.time())
