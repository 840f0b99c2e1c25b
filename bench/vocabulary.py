"""Benchmark 12: the students' vocabulary ranked with and without the word frequency list (see bench.variants)."""

from __future__ import annotations

from typing import Any

from bench.variants import compare

PRIOR = "student.vocabulary.word_prior_tokens"
VARIANTS = {"word list": {PRIOR: 100_000}, "no word list": {PRIOR: 0}}
SIZES = {"quick": {"seeds": 2, "languages": ["es"], "epochs": 1},
         "full": {"seeds": 3, "languages": ["es", "id", "sl"], "epochs": None}}


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    return compare("vocabulary", "12. Vocabulary: with and without the word frequency list", VARIANTS,
                   languages or sizes["languages"], sizes["seeds"], sizes["epochs"])
