"""The distillation transfer set: labelled train rows, then in-language unlabelled text and augmented text.

Each language gets as many rows as temperature sampling (balance.allocate) gives it, and with keep_all_labelled
never fewer than its labelled train rows (each student learns one language alone, so sampling a large language down
only saves time). Its labelled train rows come first, each at most once; the slots they leave free (in small
languages: the repeats the old set was made of) go to unlabelled in-language text, up to a budget, and to augmented
copies of labelled rows (Tang et al. 2019: masking, word replacement, n-gram sampling). Unlabelled and augmented
rows carry no gold label: the teacher labels them. Any of them equal to a validation, test or train text after
normalisation is dropped, so no held-out text reaches the students and no labelled text enters twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polydistill.data.balance import allocate, draw
from polydistill.data.text_key import comparison_key

SOURCES = ("unlabelled", "augmented")
LABELLED, UNLABELLED, AUGMENTED = "labelled", "unlabelled", "augmented"
TRANSFER_FILE, LABELLED_FILE, POOL_FILE = "transfer.parquet", "labelled.parquet", "pool.parquet"
COLUMNS = ["id", "lang", "text", "label", "source", "origin_id"]


@dataclass(frozen=True)
class AugmentSettings:
    """Tang et al. (2019): per word, mask or replace it; then, with a probability, keep only a random n-gram."""

    mask_probability: float
    replace_probability: float
    ngram_probability: float
    ngram_max: int
    mask_token: str
    attempts: int  # draws per needed row before a language's augmentation gives up (all duplicates)


@dataclass(frozen=True)
class TransferSettings:
    """The transfer section of params.yaml."""

    size: int
    alpha: float
    max_repeats: int
    keep_all_labelled: bool
    seed: int
    sources: tuple[str, ...]
    unlabelled_fraction: float
    max_unlabelled_per_language: int
    augment: AugmentSettings

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> TransferSettings:
        unknown = set(section["sources"]) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown transfer.sources {sorted(unknown)}: use a subset of {list(SOURCES)}")
        fields = {key: value for key, value in section.items() if key not in {"sources", "augment"}}
        return cls(**fields, sources=tuple(section["sources"]), augment=AugmentSettings(**section["augment"]))


def words(text: str) -> tuple[list[str], str]:
    """The text's words and the separator to join them: whitespace words, or characters for unspaced scripts."""
    tokens = text.split()
    return (tokens, " ") if len(tokens) > 1 else (list(text.strip()), "")


def augment_text(text: str, vocabulary: list[str], settings: AugmentSettings, rng: np.random.Generator) -> str:
    """One augmented copy: each word masked or replaced by a random in-language word, then maybe an n-gram."""
    tokens, separator = words(text)
    draws = rng.random(len(tokens))
    out = []
    for token, draw_value in zip(tokens, draws):
        if draw_value < settings.mask_probability:
            out.append(settings.mask_token)
        elif draw_value < settings.mask_probability + settings.replace_probability and vocabulary:
            out.append(vocabulary[rng.integers(len(vocabulary))])
        else:
            out.append(token)
    if len(out) > 1 and rng.random() < settings.ngram_probability:
        length = int(rng.integers(1, min(settings.ngram_max, len(out)) + 1))
        start = int(rng.integers(len(out) - length + 1))
        out = out[start:start + length]
    return separator.join(out)


def _row_id(prefix: str, lang: str, text: str) -> str:
    return f"{prefix}-{lang}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def clean_pool(pool: pd.DataFrame, excluded: set[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Unlabelled texts of one language minus those empty after normalisation, equal to labelled or held-out text,
    or repeated. Returns the pool (id, lang, text, source, in_domain) and how many rows each rule dropped."""
    keys = pool["text"].map(comparison_key)
    empty = keys == ""
    overlapping = keys.isin(excluded) & ~empty
    repeated = keys.duplicated() & ~empty & ~overlapping
    kept = pool[~(empty | overlapping | repeated)]
    kept = kept.assign(id=[_row_id("u", lang, text) for lang, text in zip(kept["lang"], kept["text"])])
    dropped = {"empty": int(empty.sum()), "overlaps_labelled_or_held_out": int(overlapping.sum()),
               "repeated": int(repeated.sum())}
    return kept[["id", "lang", "text", "source", "in_domain"]].reset_index(drop=True), dropped


def augmented_rows(labelled: pd.DataFrame, count: int, vocabulary: list[str], excluded: set[str],
                   settings: AugmentSettings, rng: np.random.Generator) -> pd.DataFrame:
    """`count` new augmented texts from labelled rows taken in turn (shuffled), skipping any seen text."""
    order = rng.permutation(len(labelled))
    seen = set(excluded)
    rows = []
    for attempt in range(count * settings.attempts):
        if len(rows) == count:
            break
        origin = labelled.iloc[order[attempt % len(order)]]
        text = augment_text(origin["text"], vocabulary, settings, rng)
        key = comparison_key(text)
        if not key or key in seen:
            continue
        seen.add(key)
        rows.append({"id": f"{origin['id']}~aug{len(rows)}", "lang": origin["lang"], "text": text, "label": None,
                     "source": AUGMENTED, "origin_id": origin["id"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def _in_domain_first(pool: pd.DataFrame, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of `count` pool rows: in-domain rows first (same archives as the labelled data), each group in
    random order."""
    in_domain = pool["in_domain"].to_numpy(dtype=bool)
    order = np.concatenate([rng.permutation(np.flatnonzero(in_domain)), rng.permutation(np.flatnonzero(~in_domain))])
    return order[:count]


def language_vocabulary_words(texts: Iterable[str]) -> list[str]:
    """Distinct words (or characters, for unspaced scripts) of a language's texts, in first-seen order."""
    return list(dict.fromkeys(token for text in texts for token in words(text)[0] if re.search(r"\w", token)))


def compose_language(slots: int, labelled: pd.DataFrame, pool: pd.DataFrame, excluded: set[str],
                     settings: TransferSettings, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One language's transfer rows and their counts by source."""
    extra_sources = set(settings.sources)
    labelled_rows = draw(labelled, min(slots, len(labelled)) if extra_sources else slots, rng)
    parts = [labelled_rows.assign(source=LABELLED, origin_id=labelled_rows["id"])[COLUMNS]]
    free = slots - len(labelled_rows)
    unlabelled_count = 0
    if UNLABELLED in extra_sources and free > 0:
        wanted = free if AUGMENTED not in extra_sources else round(free * settings.unlabelled_fraction)
        unlabelled_count = min(len(pool), settings.max_unlabelled_per_language, wanted)
        chosen = pool.iloc[np.sort(_in_domain_first(pool, unlabelled_count, rng))]
        parts.append(chosen.assign(label=None, source=UNLABELLED + ":" + chosen["source"], origin_id=None)[COLUMNS])
    augmented_count = 0
    if AUGMENTED in extra_sources and free - unlabelled_count > 0:
        vocabulary = language_vocabulary_words(pd.concat([labelled["text"], pool["text"]]))
        augmented = augmented_rows(labelled, free - unlabelled_count, vocabulary, excluded, settings.augment, rng)
        augmented_count = len(augmented)
        parts.append(augmented)
    rows = pd.concat(parts, ignore_index=True)
    report = {"slots": slots, "labelled_available": len(labelled), LABELLED: len(labelled_rows),
              UNLABELLED: unlabelled_count, AUGMENTED: augmented_count, "rows": len(rows),
              "unlabelled_by_source": rows[rows["source"].str.startswith(UNLABELLED)]["source"]
              .str.removeprefix(UNLABELLED + ":").value_counts().sort_index().to_dict()}
    return rows, report


def language_slots(labelled_counts: dict[str, int], settings: TransferSettings) -> dict[str, int]:
    """Transfer rows per language: temperature sampling, raised to the labelled rows with keep_all_labelled."""
    slots = allocate(labelled_counts, settings.alpha, settings.size, settings.max_repeats)
    if settings.keep_all_labelled:
        return {lang: max(count, labelled_counts[lang]) for lang, count in slots.items()}
    return slots


def compose_transfer(train: pd.DataFrame, held_out: pd.DataFrame, unlabelled: pd.DataFrame,
                     settings: TransferSettings) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The transfer set (shuffled), the cleaned unlabelled pool of every language, and the report.

    train: labelled rows (id, lang, text, label); held_out: validation and test rows; unlabelled: (lang, text,
    source, in_domain). Deterministic for a seed.
    """
    rng = np.random.default_rng(settings.seed)
    slots = language_slots(train.groupby("lang").size().to_dict(), settings)
    held_out_keys = set(held_out["text"].map(comparison_key))
    excluded = held_out_keys | set(train["text"].map(comparison_key))
    sets, pools, report = [], [], {"languages": {}}
    for lang in sorted(slots):
        pool, dropped = clean_pool(unlabelled[unlabelled["lang"] == lang], excluded)
        rows, counts = compose_language(slots[lang], train[train["lang"] == lang], pool, excluded, settings, rng)
        sets.append(rows)
        pools.append(pool)
        report["languages"][lang] = {**counts, "pool": len(pool), "pool_dropped": dropped}
    transfer = pd.concat(sets, ignore_index=True)
    transfer = transfer.iloc[rng.permutation(len(transfer))].reset_index(drop=True)
    report["rows"] = len(transfer)
    report["held_out_overlaps"] = int(transfer[transfer["source"] != LABELLED]["text"].map(comparison_key)
                                      .isin(held_out_keys).sum())
    return transfer, pd.concat(pools, ignore_index=True), report


def read_unlabelled(path: Path | None) -> pd.DataFrame:
    """The unlabelled stage's texts (lang, text, source, in_domain); none for no path or an empty file."""
    columns = ["lang", "text", "source", "in_domain"]
    if path is None or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns, dtype=str)
    return pd.read_json(path, lines=True, dtype={"text": str})[columns]


def build_transfer_set(train_path: Path, held_out_paths: list[Path], unlabelled_path: Path | None,
                       output_dir: Path, report_path: Path, settings: TransferSettings) -> dict[str, Any]:
    """Write the KD transfer set, the labelled-only set of the same sizes (the CE-only students' data, labelled
    rows repeated as needed), the unlabelled pool and the report. unlabelled_path: JSON lines, or None for none."""
    train = pd.read_parquet(train_path)
    held_out = pd.concat([pd.read_parquet(path) for path in held_out_paths], ignore_index=True)
    unlabelled = read_unlabelled(unlabelled_path)
    transfer, pool, report = compose_transfer(train, held_out, unlabelled, settings)
    labelled, _pool, labelled_report = compose_transfer(train, held_out, unlabelled, replace(settings, sources=()))
    report["labelled_only_rows"] = {lang: entry["rows"] for lang, entry in labelled_report["languages"].items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    transfer.to_parquet(output_dir / TRANSFER_FILE, index=False)
    labelled.to_parquet(output_dir / LABELLED_FILE, index=False)
    pool.to_parquet(output_dir / POOL_FILE, index=False)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
