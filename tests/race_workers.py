"""Worker processes for the registry race tests (spawned, so each has its own MLflow client and SQLite handles).

A barrier is injected between the read of the champion and the alias write (around the gate), so two promotions
really overlap whenever nothing serialises them."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any


def promote_at_barrier(root: str, settings: dict[str, Any], lang: str, version: str, started: Any, barrier: Any,
                       use_lock: bool, results: Queue) -> None:
    """promote(version), waiting at `barrier` after the champion is read; without `use_lock`, no registry lock.

    Both workers first meet at `started` (their imports done), so `barrier` need only outwait the skew of the
    promotion's first steps, not that of the workers' start-up."""
    from polydistill.config import set_offline_environment

    set_offline_environment()
    import mlflow  # noqa: F401  (before the start barrier: promote's own first import of it would add skew)

    from polydistill.ops import promotion

    real_gate = promotion.run_gate

    def gate_after_barrier(*arguments: Any, **keywords: Any) -> Any:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # the other process is blocked on the lock: go on alone
            pass
        return real_gate(*arguments, **keywords)

    promotion.run_gate = gate_after_barrier
    if not use_lock:
        promotion.registry_lock = lambda uri, timeout_s: nullcontext()
    started.wait()
    results.put(promotion.promote(Path(root), settings, lang, version).as_dict())


def append_to_inference_log(path: str, worker: int, requests: int, rows_per_request: int, barrier: Any) -> None:
    """`requests` appends of `rows_per_request` answers each to the inference log, all workers starting at once."""
    from polydistill.ops.inference_log import InferenceLog

    log = InferenceLog(Path(path), keep_text=False)
    barrier.wait()
    for request in range(requests):
        texts = [f"worker {worker} request {request} row {row}" for row in range(rows_per_request)]
        answers = [{"lang": "en", "status": "ok", "label": "positive", "score": 0.9, "student_version": "1"}
                   for _ in texts]
        log.record(texts, answers, {}, detector=None)  # no student tokenizers: no features need one


def open_fresh_logs(directory: str, logs: int, barrier: Any) -> None:
    """Open `logs` new inference logs in turn, every worker opening the same new file at the same moment."""
    from polydistill.ops.inference_log import connect

    for log in range(logs):
        barrier.wait()
        connect(Path(directory) / f"inference-{log}.db").close()
