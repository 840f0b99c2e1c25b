"""`make chaos`: kill -9 of real stages on the real default corpus, then `dvc repro -f`: the same outputs.

Not part of `make test` (marker `chaos`): it retrains the real stages, a teacher cycle being about 20 minutes on 2
cores. It runs in a clone of this repository that shares its DVC cache, so it needs a finished default run
(`make run`) on the same CPU family as the one that recorded dvc.lock (floating-point kernels differ between
families). CHAOS_STAGES picks the stages (default: distill@es then train_teacher).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, VENV_BIN, locked_outputs, run_dvc

from polydistill.faults import KILL_AT_VARIABLE

KILL_POINTS = {"train_teacher": ["checkpoint:moved-aside@2", "checkpoint:removing-old@1", "best:moved-aside@1"],
               "distill": ["checkpoint:writing@2", "checkpoint:moved-aside@1", "best:removing-old@1"]}
STAGES = os.environ.get("CHAOS_STAGES", "distill@es,train_teacher").split(",")


def clone_with_shared_cache(target: Path) -> Path:
    """A git clone of this repository's HEAD, its DVC outputs checked out from this repository's cache."""
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(target)], check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "cache", "dir", "--local", str(REPO_ROOT / ".dvc/cache")], cwd=target,
                   check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "checkout", "--quiet"], cwd=target, check=True)
    return target


@pytest.mark.chaos
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize("stage", STAGES)
def test_a_real_stage_killed_again_and_again_ends_where_an_uninterrupted_run_ended(tmp_path: Path, stage: str,
                                                                                    prefect_server: str) -> None:
    root = clone_with_shared_cache(tmp_path / "clone")
    expected = locked_outputs(root, [stage])
    for point in KILL_POINTS[stage.split("@")[0]]:
        killed = run_dvc(root, "repro", "-f", "-s", stage, extra_environment={KILL_AT_VARIABLE: point})
        assert killed.returncode != 0, f"{stage} was not killed at {point}"
    resumed = run_dvc(root, "repro", "-f", "-s", stage)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert locked_outputs(root, [stage]) == expected, f"{stage}: outputs differ from the recorded uninterrupted run"
