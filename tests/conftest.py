"""Shared test setup: offline environment, paths, and a throw-away copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def fixture_params(languages: list[str]) -> dict:
    """params.yaml pointed at the fixture corpus, with thresholds and sizes that fit it."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update(source="file", path="tests/fixtures/corpus.jsonl", languages=languages)
    params["validate"].update(min_rows_per_language=30, min_rows_per_label=10)
    params["balance"].update(teacher_size=200, transfer_size=150)
    return params


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A copy of the working tree as its own git repository, with params.yaml set for the fixture corpus."""
    copy = tmp_path / "repo"
    for name in repository_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    (copy / "params.yaml").write_text(yaml.safe_dump(fixture_params(["en", "sl", "zh"]), allow_unicode=True),
                                      encoding="utf-8")
    return copy


def pipeline_environment(root: Path) -> dict[str, str]:
    """Environment for running dvc and the flows inside a repository copy."""
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
