"""Shared test setup: offline environment, paths, and a throw-away copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tiny_models import tiny_pretrained_encoder

from polydistill.config import set_offline_environment

set_offline_environment()

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VENV_BIN = Path(sys.executable).parent


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
    params["balance"].update(teacher_size=200, transfer_size=150)
    params["baseline"].update(min_df=1, c_grid=[1.0, 4.0])
    quick = {"eval_every": 5, "checkpoint_every": 5, "learning_rate": 1e-3, "batch_size": 8}
    params["teacher"].update(quick, model=str(teacher_dir), epochs=2, freeze_word_embeddings=False)
    params["distill"]["student"]["layers"] = [0, 2]
    params["distill"]["train"].update(quick)
    params["distill"]["independent_teacher"].update(quick)
    params["evaluate"].update(bootstrap_samples=200, latency_repeats=5, throughput_texts=32, warmup=1)
    return params


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained encoder (Unigram tokenizer trained on the fixture corpus, 4-layer BERT)."""
    return tiny_pretrained_encoder(tmp_path_factory.mktemp("tiny") / "encoder", fixture_texts(),
                                   ["negative", "positive"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Prefect server on a free loopback port for every flow the tests start (saves a start per stage)."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    environment = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                               str(port), "--no-ui", "--no-services"], env=environment, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        raise RuntimeError(f"Prefect server did not start: {(home / 'server.log').read_text()}")
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # flows started by the tests report here instead of starting a server
    yield url
    if previous is None:
        os.environ.pop("PREFECT_API_URL")
    else:
        os.environ["PREFECT_API_URL"] = previous
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture
def repo_copy(tmp_path: Path, tiny_teacher: Path, prefect_server: str) -> Path:
    """A copy of the working tree as its own git repository, params.yaml set for the fixture corpus."""
    copy = tmp_path / "repo"
    for name in repository_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (copy / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    write_params(copy, fixture_params(["en", "sl", "zh"], tiny_teacher))
    return copy


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def pipeline_environment(root: Path) -> dict[str, str]:
    """Environment for running dvc and the flows inside a repository copy (against the test Prefect server)."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "POLYDISTILL_ROOT": str(root),
        "PREFECT_HOME": str(root / ".prefect"),
    }


def run_dvc(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Run the venv's dvc in the repository copy and return the finished process (not checked)."""
    return subprocess.run([str(VENV_BIN / "dvc"), *arguments], cwd=root, env=pipeline_environment(root),
                          capture_output=True, text=True, timeout=900)
