"""Test and benchmark harness without side effects: fixture corpus and params, repository copies, local servers.

conftest.py re-exports these for the tests; bench/ imports them directly (importing conftest would change the
environment: it switches to offline mode and drops MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from tiny_models import TINY_POSITIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VENV_BIN = Path(sys.executable).parent
STAGE_LINE = re.compile(r"Running stage '([^']+)'")  # what `dvc repro` prints for each stage it runs


def stages_run(dvc_output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran, in its order."""
    return STAGE_LINE.findall(dvc_output)


def repository_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus local edits would hold."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout
    return [name for name in listing.splitlines() if (REPO_ROOT / name).is_file()]


def fixture_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (FIXTURES / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]


def fixture_params(languages: list[str], teacher_dir: Path | None = None) -> dict:
    """params.yaml pointed at the fixture corpus and a tiny teacher, with sizes and thresholds that fit them."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(source="file", path="tests/fixtures/corpus.jsonl", languages=languages)
    params["validate"].update(min_rows_per_language=30, min_rows_per_label=10)
    params["balance"].update(teacher_size=200)
    params["unlabelled"].update(source="file", path="tests/fixtures/unlabelled.jsonl")
    params["word_frequencies"].update(source="file", path="tests/fixtures/word_frequencies.csv")
    params["transfer"].update(size=300)
    params["baseline"].update(min_df=1, c_grid=[1.0, 4.0])
    quick = {"eval_every": 5, "checkpoint_every": 5, "learning_rate": 1e-3, "batch_size": 8}
    params["teacher"].update(quick, model=str(teacher_dir), epochs=2, freeze_word_embeddings=False)
    params["distill"]["student"]["layers"] = [0, 2]
    params["distill"]["student"]["narrow"].update(hidden_size=16, num_heads=2, intermediate_size=32, sample_texts=64)
    params["distill"]["train"].update(quick)
    params["distill"]["independent_teacher"].update(quick)
    params["evaluate"].update(bootstrap_samples=200, latency_repeats=5, throughput_texts=32, warmup=1, rounds=2)
    params["executor"].update(kind="serial")  # the Dask fan-out has its own test (test_pipeline_dvc.py)
    cap_max_length(params, TINY_POSITIONS)
    return params


def cap_max_length(section: dict, positions: int) -> None:
    """Lower every max_length in a params tree (any stage, any depth) to what a model of `positions` reads."""
    for key, value in section.items():
        if isinstance(value, dict):
            cap_max_length(value, positions)
        elif key == "max_length":
            section[key] = min(value, positions)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen) -> bool:
    """Poll url until it answers (True), the process exits or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            time.sleep(0.5)
    return False


@contextmanager
def running_prefect_server(home: Path, timeout: float = 90) -> Iterator[str]:
    """A real Prefect server on a free loopback port (PREFECT_HOME = home) for the duration; yields its API URL."""
    port = free_port()
    environment = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port), "--no-ui", "--no-services"], env=environment, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/api"
    try:
        if not wait_for_http(f"{url}/health", timeout, server):
            raise RuntimeError(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def copy_repository(target: Path, params: dict) -> Path:
    """The working tree's files as a fresh git repository at target (no dvc.lock), with these params."""
    for name in repository_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, destination)
    (target / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    write_params(target, params)
    return target


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
