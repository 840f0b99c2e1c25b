"""Explanations: integrated gradients satisfy completeness, find the one token that decides, and the CLI shows them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import PAD, tiny_model
from typer.testing import CliRunner

from polydistill.cli import app
from polydistill.model.explain import integrated_gradients

CLS, SEP = 0, 2
POSITIVE, NEGATIVE = 7, 8          # the deciding tokens; 10-59 are filler


def sequence(rng: np.random.Generator, decisive: int) -> list[int]:
    filler = rng.integers(10, 60, size=rng.integers(4, 12)).tolist()
    filler.insert(int(rng.integers(0, len(filler) + 1)), decisive)
    return [CLS, *filler, SEP]


def special_mask(ids: list[int]) -> torch.Tensor:
    return torch.tensor([index in (0, len(ids) - 1) for index in range(len(ids))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attributions_sum_to_the_logit_difference(seed: int) -> None:
    """Completeness: Σ attributions = f(x) − f(baseline), within 1% of |f(x) − f(baseline)| (+1e-3)."""
    model = tiny_model(seed)
    ids = sequence(np.random.default_rng(seed), POSITIVE)
    attributions, logit, baseline_logit = integrated_gradients(model, torch.tensor(ids), 1, PAD, special_mask(ids),
                                                               steps=128)
    difference = logit - baseline_logit
    assert abs(attributions.sum() - difference) <= 0.01 * abs(difference) + 1e-3
    assert attributions[0] == attributions[-1] == 0.0, "special tokens are kept in the baseline"


def test_the_token_that_decides_the_label_gets_the_largest_attribution() -> None:
    torch.manual_seed(0)
    model, rng = tiny_model(0), np.random.default_rng(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        labels = rng.integers(0, 2, size=16)
        batch = [sequence(rng, POSITIVE if label else NEGATIVE) for label in labels]
        width = max(map(len, batch))
        input_ids = torch.tensor([ids + [PAD] * (width - len(ids)) for ids in batch])
        loss = model(input_ids=input_ids, attention_mask=(input_ids != PAD).long(),
                     labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for _ in range(5):  # the positive token decides; the negative one only marks its absence, as the baseline does
        ids = sequence(rng, POSITIVE)
        with torch.no_grad():
            assert int(model(input_ids=torch.tensor([ids])).logits.argmax()) == 1, "the model did not learn"
        attributions, _, _ = integrated_gradients(model, torch.tensor(ids), 1, PAD, special_mask(ids), 64)
        assert int(np.argmax(np.abs(attributions))) == ids.index(POSITIVE)


def test_explain_prints_json_and_a_coloured_line(registry_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYDISTILL_ROOT", str(registry_project))
    runner = CliRunner()
    result = runner.invoke(app, ["explain", "A quietly moving film", "--lang", "en", "--json"])
    assert result.exit_code == 0, result.output
    explanation = json.loads(result.stdout)
    assert explanation["lang"] == "en" and explanation["label"] in ("negative", "positive")
    assert len(explanation["tokens"]) == len(explanation["attributions"]) == len(explanation["special"])
    assert explanation["completeness_gap"] <= 0.01 * abs(explanation["logit"] - explanation["baseline_logit"]) + 1e-3
    shown = runner.invoke(app, ["explain", "A quietly moving film", "--lang", "en"])
    assert shown.exit_code == 0 and f"en\t{explanation['label']}" in shown.stdout
    missing = runner.invoke(app, ["explain", "Dober film", "--lang", "fr"])
    assert missing.exit_code == 1 and "no student for 'fr'" in missing.output
