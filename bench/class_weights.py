"""Benchmark 11: per-class loss weights for the students (see bench.variants), on es, whose classes are skewed."""

from __future__ import annotations

from typing import Any

from bench.variants import compare

VARIANTS = {scheme: {"class_weights": scheme} for scheme in ("none", "inverse_sqrt", "inverse")}
SIZES = {"quick": {"seeds": 2, "languages": ["es"], "epochs": 1},
         "full": {"seeds": 3, "languages": ["es"], "epochs": None}}


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    return compare("class_weights", "11. Class weights for the students", VARIANTS, languages or sizes["languages"],
                   sizes["seeds"], sizes["epochs"])
