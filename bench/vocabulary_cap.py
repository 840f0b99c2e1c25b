"""Benchmark 18: the vocabulary cap against held-out segmentation and the students' size (no training).

Each language's vocabulary is built from the texts the distill stage builds it from (train, the unlabelled pool and
the transfer set) with params.yaml's priors, at several caps, and scored by ``segmentation_fidelity`` on validation
and test. A cap's cost is the default student's parameters with that many embedding rows (from the committed
distill metrics), against the teacher's (from the evaluate metrics). The smallest cap that segments 90% of the
validation texts as the teacher does is chosen on validation; test is reported. A second table varies the weight of
the word list at the default cap, to show whether ranking the pieces differently would close the gap.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from tokenizers import Tokenizer

from bench.common import QUALITY_TARGETS, REPO_ROOT, load_project_params, require
from bench.seeds import pipeline_paths
from polydistill.data.word_frequencies import read_word_frequencies
from polydistill.model.student import (
    VocabularySettings,
    language_vocabulary,
    load_tokenizer_json,
    segmentation_fidelity,
    trim_tokenizer,
    word_piece_prior,
)

SIZES = {"quick": {"languages": ["es"], "caps": [10_000, 20_000], "word_prior_tokens": [30_000]},
         "full": {"languages": None, "caps": [10_000, 20_000, 30_000, 40_000, 60_000, 80_000],
                  "word_prior_tokens": [30_000, 300_000, 1_000_000]}}
SIZE_TARGET = 20.0  # issue #11: at least 20x fewer parameters than the teacher


def language_texts(lang: str) -> dict[str, list[str]]:
    """The texts a student's vocabulary is built from ("vocabulary", as the distill stage takes them), and the
    validation and test texts it is scored on."""
    paths = pipeline_paths(lang, REPO_ROOT / ".cache/bench/vocabulary_cap")
    frames = {name: pd.read_parquet(require(paths[name], "make run")) for name in
              ("train", "pool", "transfer", "validation", "test")}
    texts = {name: frame.loc[frame["lang"] == lang, "text"] for name, frame in frames.items()}
    vocabulary = pd.concat([texts["train"], texts["pool"], texts["transfer"]]).drop_duplicates().tolist()
    return {"vocabulary": vocabulary, "validation": texts["validation"].tolist(), "test": texts["test"].tolist()}


def parameter_counts(lang: str) -> tuple[int, int, int]:
    """From the committed metrics: the default student's parameters besides its piece embeddings, its width (the
    parameters of one piece) and the teacher's parameters."""
    student = json.loads(require(REPO_ROOT / f"metrics/distill/{lang}.json", "make run").read_text())["student"]
    evaluation = json.loads(require(REPO_ROOT / f"metrics/evaluate/{lang}.json", "make run").read_text())
    other = student["total_params"] - student["vocab_size"] * student["hidden_size"]
    return other, student["hidden_size"], evaluation["efficiency"]["teacher"]["total_params"]


def fidelity(teacher_json: dict[str, Any], teacher: Tokenizer, kept: list[int],
             texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    student = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, kept)))
    return {split: segmentation_fidelity(teacher, student, kept, texts[split]).as_dict()
            for split in ("validation", "test")}


def measure_language(lang: str, sizes: dict[str, Any], settings: VocabularySettings,
                     teacher_json: dict[str, Any]) -> dict[str, Any]:
    """Segmentation per cap (params.yaml's priors) and per word-list weight (params.yaml's cap) for one language."""
    teacher = Tokenizer.from_str(json.dumps(teacher_json))
    texts = language_texts(lang)
    words = read_word_frequencies(REPO_ROOT / "data/word_frequencies", lang)

    def prior(tokens: float) -> dict[int, float] | None:
        if not words or tokens <= 0:
            return None
        return word_piece_prior(teacher_json, words, tokens, settings.capitalised_weight, settings.upper_weight)

    default_prior = prior(settings.word_prior_tokens)
    other_params, per_piece, teacher_params = parameter_counts(lang)
    caps = {}
    for cap in sizes["caps"]:
        kept = language_vocabulary(teacher_json, texts["vocabulary"], cap, settings.teacher_prior, default_prior)
        params = other_params + len(kept) * per_piece
        caps[cap] = {"pieces": len(kept), "params": params, "fewer_params": teacher_params / params,
                     **fidelity(teacher_json, teacher, kept, texts)}
    weights = {}
    for tokens in sizes["word_prior_tokens"]:
        kept = language_vocabulary(teacher_json, texts["vocabulary"], settings.max_pieces, settings.teacher_prior,
                                   prior(tokens))
        weights[tokens] = fidelity(teacher_json, teacher, kept, texts)
    return {"caps": caps, "word_prior_tokens": weights}


def smallest_cap(caps: dict[int, dict[str, Any]], share: float) -> int | None:
    """The smallest cap whose validation texts are segmented as the teacher does at least `share` of the time."""
    return min((cap for cap, entry in caps.items() if entry["validation"]["identical_share"] >= share), default=None)


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    settings = VocabularySettings(**params["distill"]["student"]["vocabulary"])
    teacher_json = load_tokenizer_json(require(REPO_ROOT / "models/teacher/tokenizer.json", "make run"))
    chosen = languages or sizes["languages"] or params["data"]["languages"]
    results = {lang: measure_language(lang, sizes, settings, teacher_json) for lang in chosen}
    return summarise(results, settings, sizes)


def _share(entry: dict[str, float]) -> str:
    return f"{entry['identical_share']:.0%}"


def summarise(results: dict[str, dict[str, Any]], settings: VocabularySettings,
              sizes: dict[str, Any]) -> dict[str, Any]:
    """The cap table, the smallest cap for the segmentation target and the word-list weight table."""
    share = QUALITY_TARGETS["segmentation"]
    cap_rows, needed_rows, weight_rows = [], [], []
    for lang, result in results.items():
        for cap, entry in result["caps"].items():
            cap_rows.append([lang, f"{cap:,}" + (" (default)" if cap == settings.max_pieces else ""),
                             _share(entry["validation"]), _share(entry["test"]),
                             f"{entry['test']['extra_tokens']:+.1%}", f"{entry['test']['unknown_rate']:.2%}",
                             f"{entry['params'] / 1e6:.2f}M", f"{entry['fewer_params']:.1f}x"])
        cap = smallest_cap(result["caps"], share)
        entry = result["caps"].get(cap)
        needed_rows.append([lang, f"{cap:,}" if cap else f"over {max(result['caps']):,}",
                            _share(entry["test"]) if entry else None,
                            f"{entry['fewer_params']:.1f}x" if entry else None])
        for tokens, entry in result["word_prior_tokens"].items():
            weight_rows.append([lang, f"{tokens:,}", _share(entry["validation"]), _share(entry["test"]),
                                f"{entry['test']['extra_tokens']:+.1%}"])
    return {
        "name": "vocabulary_cap", "title": "18. Vocabulary cap and held-out segmentation", "config": sizes,
        "results": results,
        "tables": [
            {"title": "Texts segmented as the teacher does, per cap (params.yaml's priors); the default student's "
                      "parameters with that many pieces and how many fewer than the teacher's",
             "columns": ["lang", "cap", "validation identical", "test identical", "test extra tokens",
                         "test unknown", "student params", "fewer than teacher"], "rows": cap_rows},
            {"title": f"Smallest cap that segments {share:.0%} of validation texts as the teacher does (chosen on "
                      f"validation), its test share and size ratio (target {SIZE_TARGET:.0f}x)",
             "columns": ["lang", "cap", "test identical", "fewer than teacher"], "rows": needed_rows},
            {"title": f"The word list's weight (word_prior_tokens; params.yaml: {settings.word_prior_tokens:,.0f}) "
                      f"at the default cap of {settings.max_pieces:,}",
             "columns": ["lang", "word_prior_tokens", "validation identical", "test identical",
                         "test extra tokens"], "rows": weight_rows},
        ],
        "notes": ["No training: segmentation depends on the vocabulary alone. Student parameters count the embedding "
                  "rows at the default width; the rest of the student is the committed run's."],
    }
