"""Kill -9 at the worst instants of a training run (polydistill.faults), then resume: nothing is lost.

Every kill lands at a named point of the checkpoint or best-model writer, chosen so that each dangerous window is
hit: inside the write, after the old copy is moved aside and before the new one is renamed in, and inside the
removal of the old copy. After each kill the run is restarted; the final weights must be bit-identical to an
uninterrupted run's. The DVC-level version (kills of train_teacher and distill@<lang> stages, then `dvc repro -f`)
is in test_pipeline_dvc.py; `make chaos` runs it on the real default corpus.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from polydistill.durable import COMPLETE_MARKER, intact_directory, new_staging, publish_directory, retired_path
from polydistill.faults import KILL_AT_VARIABLE

WORKER = Path(__file__).with_name("fault_workers.py")
FRESH_INIT, RESUMED_INIT = 0, 99

# (kill point, what the folder looks like right after the kill)
KILLS = [
    ("train:step@13", "between checkpoints"),
    ("checkpoint:writing@2", "staging half written"),
    ("checkpoint:moved-aside@2", "checkpoint only moved aside"),
    ("checkpoint:removing-old@2", "old checkpoint half removed"),
    ("best:moved-aside@1", "best only moved aside"),
    ("best:removing-old@1", "old best half removed"),
]


def train(work_dir: Path, init_seed: int, kill_at: str | None = None) -> subprocess.CompletedProcess:
    environment = {name: value for name, value in os.environ.items() if name != KILL_AT_VARIABLE}
    if kill_at:
        environment[KILL_AT_VARIABLE] = kill_at
    return subprocess.run([sys.executable, str(WORKER), str(work_dir), str(init_seed)], env=environment,
                          capture_output=True, text=True, timeout=300)


def test_runs_killed_at_every_dangerous_instant_resume_to_the_same_weights(tmp_path: Path) -> None:
    straight = train(tmp_path / "straight", FRESH_INIT)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = load_file(tmp_path / "straight/final.safetensors")

    work = tmp_path / "killed"
    for number, (point, window) in enumerate(KILLS):
        killed = train(work, FRESH_INIT if number == 0 else RESUMED_INIT, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr[-3000:]}"
        folder = work / ("best" if point.startswith("best") else "checkpoint")
        if "moved-aside" in point:
            assert not folder.exists() and (retired_path(folder) / COMPLETE_MARKER).exists(), window
        if "removing-old" in point:
            assert not (retired_path(folder) / COMPLETE_MARKER).exists() and retired_path(folder).exists(), window
    resumed = train(work, RESUMED_INIT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    actual = load_file(work / "final.safetensors")
    assert actual.keys() == expected.keys()
    assert all(actual[name].equal(expected[name]) for name in expected), "resumed weights differ"
    assert load_file(work / "best/model.safetensors").keys() == load_file(
        tmp_path / "straight/best/model.safetensors").keys()
    assert all(tensor.equal(load_file(tmp_path / "straight/best/model.safetensors")[name])
               for name, tensor in load_file(work / "best/model.safetensors").items()), "best models differ"


def write_folder(target: Path, content: str) -> None:
    staging = new_staging(target)
    (staging / "a.txt").write_text(content, encoding="utf-8")
    (staging / "b.txt").write_text(content, encoding="utf-8")
    publish_directory(staging, target)


@pytest.mark.parametrize("leftover", ["target missing, old complete", "target complete, old partial",
                                      "target partial, nothing else", "staging partial"])
def test_recovery_keeps_exactly_one_complete_copy(tmp_path: Path, leftover: str) -> None:
    target = tmp_path / "folder"
    write_folder(target, "first")
    retired = retired_path(target)
    if leftover == "target missing, old complete":
        target.rename(retired)
    elif leftover == "target complete, old partial":
        write_folder(retired, "older")
        (retired / COMPLETE_MARKER).unlink()
    elif leftover == "target partial, nothing else":
        (target / COMPLETE_MARKER).unlink()
    else:
        (target.with_name(f".{target.name}.staging")).mkdir()
    recovered = intact_directory(target)
    if leftover == "target partial, nothing else":
        assert recovered is None and not target.exists()
    else:
        assert recovered == target and (target / "a.txt").read_text(encoding="utf-8") == "first"
    assert sorted(path.name for path in tmp_path.iterdir()) == (["folder"] if recovered else [])
