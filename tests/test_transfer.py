"""The transfer stage: per-language budgets by source, exclusion of held-out text, augmentation, labelled-only set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from polydistill.data.balance import allocate
from polydistill.data.text_key import comparison_key
from polydistill.data.transfer import (
    AugmentSettings,
    TransferSettings,
    augment_text,
    build_transfer_set,
    compose_transfer,
)

PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))["transfer"]


def transfer_settings(**overrides) -> TransferSettings:
    return TransferSettings.from_params({**PARAMS, **overrides})


def labelled(lang: str, count: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{prefix}-{lang}-{i}" for i in range(count)],
                         "text": [f"{prefix} {lang} text number {i} with some words" for i in range(count)],
                         "label": ["negative" if i % 2 else "positive" for i in range(count)], "lang": lang})


@pytest.fixture
def corpus() -> dict[str, pd.DataFrame]:
    train = pd.concat([labelled("en", 300, "train"), labelled("es", 40, "train")], ignore_index=True)
    held_out = pd.concat([labelled("en", 20, "held"), labelled("es", 10, "held")], ignore_index=True)
    unlabelled = pd.DataFrame({"lang": "es", "source": "news", "in_domain": False,
                               "text": [f"una frase distinta {i}" for i in range(100)]
                               + ["HELD es text number 3, with some words!",  # a held-out text, recased/punctuated
                                  "Train ES text number 5 with some words.",  # a labelled train text
                                  "una frase distinta 7"]})  # a repeat
    unlabelled.loc[90:92, ["source", "in_domain"]] = ["tweets", True]
    return {"train": train, "held_out": held_out, "unlabelled": unlabelled}


def test_sources_fill_each_language_up_to_its_budgets(corpus: dict[str, pd.DataFrame]) -> None:
    settings = transfer_settings(size=400, unlabelled_fraction=0.5, max_unlabelled_per_language=30,
                                 keep_all_labelled=False)
    transfer, pool, report = compose_transfer(corpus["train"], corpus["held_out"], corpus["unlabelled"], settings)
    slots = allocate({"en": 300, "es": 40}, settings.alpha, 400, settings.max_repeats)
    es = report["languages"]["es"]
    assert es["slots"] == slots["es"] and es["labelled"] == 40
    assert es["unlabelled"] == 30  # the per-language cap binds before the fraction (half of the free slots)
    assert es["augmented"] == slots["es"] - 40 - 30
    assert es["rows"] == slots["es"] == int((transfer["lang"] == "es").sum())
    assert report["languages"]["en"]["unlabelled"] == 0 and report["languages"]["en"]["labelled"] == slots["en"]
    assert es["pool"] == 100 and es["pool_dropped"] == {"empty": 0, "overlaps_labelled_or_held_out": 2,
                                                         "repeated": 1}
    assert len(pool) == 100
    assert es["unlabelled_by_source"] == {"news": 27, "tweets": 3}  # in-domain texts first
    unlabelled = transfer[transfer["source"] != "labelled"]
    assert unlabelled["label"].isna().all()
    assert (transfer[transfer["source"] == "labelled"]["id"].isin(corpus["train"]["id"])).all()


@pytest.mark.parametrize("sources", [["unlabelled", "augmented"], []])
def test_keep_all_labelled_gives_a_sampled_down_language_every_labelled_row_once(
        corpus: dict[str, pd.DataFrame], sources: list[str]) -> None:
    counts = {"en": 300, "es": 40}
    sampled = allocate(counts, PARAMS["alpha"], 400, PARAMS["max_repeats"])
    assert sampled["en"] < counts["en"]  # temperature sampling alone drops labelled en rows
    settings = transfer_settings(size=400, keep_all_labelled=True, sources=sources)
    transfer, _pool, report = compose_transfer(corpus["train"], corpus["held_out"], corpus["unlabelled"], settings)
    en = transfer[transfer["lang"] == "en"]
    assert report["languages"]["en"]["slots"] == len(en) == counts["en"]
    assert set(en["source"]) == {"labelled"} and en["id"].is_unique
    assert set(en["id"]) == set(corpus["train"][corpus["train"]["lang"] == "en"]["id"])
    assert report["languages"]["es"]["slots"] == sampled["es"]  # a language above its labelled rows is unchanged
    assert report["rows"] == counts["en"] + sampled["es"]


def test_no_extra_text_equals_a_held_out_text_after_normalisation(corpus: dict[str, pd.DataFrame]) -> None:
    # Augmentation that changes nothing would reproduce train texts; they are skipped, never emitted.
    identity = {**PARAMS["augment"], "mask_probability": 0.0, "replace_probability": 0.0, "ngram_probability": 0.0}
    held_out = pd.concat([corpus["held_out"], corpus["train"][corpus["train"]["lang"] == "es"].iloc[:5]])
    settings = transfer_settings(size=400, augment=identity)
    transfer, _pool, report = compose_transfer(corpus["train"], held_out, corpus["unlabelled"], settings)
    extra = transfer[transfer["source"] != "labelled"]["text"].map(comparison_key)
    assert not extra.isin(set(held_out["text"].map(comparison_key))).any()
    assert report["held_out_overlaps"] == 0
    assert report["languages"]["es"]["augmented"] == 0


def test_labelled_only_repeats_labelled_rows_like_the_sampler(corpus: dict[str, pd.DataFrame]) -> None:
    settings = transfer_settings(size=400, sources=[])
    transfer, _pool, report = compose_transfer(corpus["train"], corpus["held_out"], corpus["unlabelled"], settings)
    assert set(transfer["source"]) == {"labelled"}
    assert transfer.groupby("id").size().max() <= settings.max_repeats
    assert report["languages"]["es"]["rows"] == allocate({"en": 300, "es": 40}, settings.alpha, 400, 3)["es"]


def test_the_stage_writes_both_sets_and_is_deterministic(corpus: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    paths = {}
    for name in ("train", "held_out"):
        paths[name] = tmp_path / f"{name}.parquet"
        corpus[name].to_parquet(paths[name])
    paths["unlabelled"] = tmp_path / "texts.jsonl"
    corpus["unlabelled"].to_json(paths["unlabelled"], orient="records", lines=True, force_ascii=False)
    settings = transfer_settings(size=400)
    for run in ("a", "b"):
        build_transfer_set(paths["train"], [paths["held_out"]], paths["unlabelled"], tmp_path / run,
                           tmp_path / f"{run}.json", settings)
    for name in ("transfer.parquet", "labelled.parquet", "pool.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    report = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert report["labelled_only_rows"] == {lang: entry["rows"] for lang, entry in report["languages"].items()}
    ce_rows = pd.read_parquet(tmp_path / "a/labelled.parquet")
    assert ce_rows["label"].notna().all() and ce_rows["id"].isin(corpus["train"]["id"]).all()


def test_unknown_sources_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown transfer.sources"):
        transfer_settings(sources=["unlabelled", "backtranslation"])


AUGMENT = AugmentSettings(**PARAMS["augment"])


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=2, max_size=20), seed=st.integers(0, 999))
def test_augmentation_keeps_masks_words_or_replacements_in_order(words: list[str], seed: int) -> None:
    vocabulary = ["REPLACED"]
    out = augment_text(" ".join(words), vocabulary, AUGMENT, np.random.default_rng(seed)).split(" ")
    assert 1 <= len(out) <= len(words)
    if len(out) < len(words):
        assert len(out) <= AUGMENT.ngram_max  # an n-gram was sampled
    allowed = set(words) | {AUGMENT.mask_token, "REPLACED"}
    assert set(out) <= allowed


def test_unspaced_text_is_augmented_per_character() -> None:
    no_change = AugmentSettings(**{**PARAMS["augment"], "mask_probability": 1.0, "ngram_probability": 0.0})
    assert augment_text("很好吃", [], no_change, np.random.default_rng(0)) == no_change.mask_token * 3


def test_no_unlabelled_text_leaves_augmentation_to_fill(corpus: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    for name in ("train", "held_out"):
        corpus[name].to_parquet(tmp_path / f"{name}.parquet")
    (tmp_path / "texts.jsonl").write_text("", encoding="utf-8")
    report = build_transfer_set(tmp_path / "train.parquet", [tmp_path / "held_out.parquet"], tmp_path / "texts.jsonl",
                                tmp_path / "out", tmp_path / "report.json", transfer_settings(size=400))
    assert report["languages"]["es"]["unlabelled"] == 0 and report["languages"]["es"]["pool"] == 0
    assert report["languages"]["es"]["augmented"] == report["languages"]["es"]["slots"] - 40
