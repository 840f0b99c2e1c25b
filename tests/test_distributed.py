"""Data-parallel training (torch distributed, gloo): disjoint shards whose scaled losses make the whole batch's
update, the same step in 2 processes as in 1, the same quality, and a killed 2-process run that resumes exactly."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed_workers import one_step
from harness import FIXTURES
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from polydistill.faults import KILL_AT_VARIABLE
from polydistill.model.distributed import Ranks, launch
from polydistill.model.teacher import fine_tune
from polydistill.model.training import TrainSettings

LABELS = ["negative", "positive"]


@settings_hypothesis(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), world=st.integers(1, 4), weighted=st.booleans(), seed=st.integers(0, 10_000))
def test_shards_are_disjoint_cover_the_batch_and_rebuild_its_mean_loss(size, world, weighted, seed) -> None:
    rng = np.random.default_rng(seed)
    batch = rng.permutation(100)[:size]
    weights = rng.uniform(0.1, 5.0, 100) if weighted else None
    losses = rng.uniform(0.0, 3.0, 100)
    mass = np.ones(100) if weights is None else weights
    averaged = 0.0
    trained: list[int] = []
    for rank in range(world):
        rows, factor = Ranks(rank, world).shard(batch, weights)
        if factor:
            trained.extend(rows.tolist())
        averaged += factor * np.average(losses[rows], weights=mass[rows]) / world  # what DDP's mean gives
    assert sorted(trained) == sorted(batch.tolist()), "shards must be disjoint and cover the batch"
    assert averaged == pytest.approx(np.average(losses[batch], weights=mass[batch]), rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "loss-weighted"])
def test_one_step_in_two_processes_equals_one_step_in_one(weighted: bool) -> None:
    batch = [0, 3, 5, 8, 13, 21, 34]  # odd: the ranks get 4 and 3 rows
    alone = one_step(batch, weighted, Ranks())
    together = launch(one_step, (batch, weighted), processes=2, threads=1)
    assert alone.keys() == together.keys()
    for name in alone:
        assert np.allclose(alone[name], together[name], rtol=0, atol=1e-6), name


def fixture_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixture corpus's en and zh rows, split by a hash of the text into train (3/4) and validation (1/4)."""
    corpus = pd.read_json(FIXTURES / "corpus.jsonl", lines=True)
    corpus = corpus[corpus["lang"].isin(["en", "zh"])].reset_index(drop=True)
    held_out = corpus["text"].map(lambda text: hashlib.sha256(text.encode()).digest()[0] % 4 == 0)
    return corpus[~held_out].reset_index(drop=True), corpus[held_out].reset_index(drop=True)


def teacher_settings(processes: int) -> TrainSettings:
    return TrainSettings(threads=2, processes=processes, max_length=64, batch_size=16, learning_rate=3e-3,
                         warmup_ratio=0.1, epochs=12, weight_decay=0.01, eval_every=10, patience=100,
                         checkpoint_every=5, seed=7, bucket_batches=4, eval_batch_size=32)


def train(tiny_teacher: Path, folder: Path, processes: int) -> dict:
    train_frame, validation_frame = fixture_frames()
    return fine_tune(tiny_teacher, train_frame, validation_frame, folder / "model", folder / "work",
                     teacher_settings(processes), LABELS)


def without_dropout(encoder: Path, folder: Path) -> Path:
    """A copy of `encoder` whose config turns dropout off."""
    shutil.copytree(encoder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_two_processes_reach_the_quality_of_one_at_the_same_global_batch(tiny_teacher: Path, tmp_path: Path) -> None:
    """Dropout off, so that only the split of each batch across ranks differs: with dropout on, the ranks draw other
    masks than one process does and the comparison measures seed noise (on this 72-row validation set up to 0.04)."""
    encoder = without_dropout(tiny_teacher, tmp_path / "encoder")
    one = train(encoder, tmp_path / "one", processes=1)
    two = train(encoder, tmp_path / "two", processes=2)
    assert two["processes"] == 2 and two["steps"] == one["steps"] and two["train_rows"] == one["train_rows"]
    assert one["validation_macro_f1"]["mean"] > 0.8, "the fixture must be learnable for the comparison to mean much"
    assert abs(two["validation_macro_f1"]["mean"] - one["validation_macro_f1"]["mean"]) <= 0.02
    assert (tmp_path / "two/model/model.safetensors").is_file()


def test_a_killed_two_process_run_resumes_to_the_same_weights(tiny_teacher: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    train(tiny_teacher, tmp_path / "straight", processes=2)
    monkeypatch.setenv(KILL_AT_VARIABLE, "train:step@13")  # both ranks die between checkpoints 10 and 15
    with pytest.raises(ChildFailedError):
        train(tiny_teacher, tmp_path / "killed", processes=2)
    monkeypatch.delenv(KILL_AT_VARIABLE)
    assert (tmp_path / "killed/work/checkpoint").is_dir() and not (tmp_path / "killed/model").exists()
    train(tiny_teacher, tmp_path / "killed", processes=2)
    expected = load_file(tmp_path / "straight/model/model.safetensors")
    resumed = load_file(tmp_path / "killed/model/model.safetensors")
    assert all(resumed[name].equal(expected[name]) for name in expected), "resumed weights differ"
