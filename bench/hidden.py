"""Benchmark 13: the hidden-state term for the narrow students (see bench.variants).

KD alone vs KD plus, at two weights, the MSE between each student layer's hidden states, mapped to the teacher's
width by a learned projection (losses.HiddenProjector), and the teacher layer it was built from. The term runs the
12-layer teacher at every step, so the table gives each variant's KD training time beside its effect.
"""

from __future__ import annotations

from typing import Any

from bench.common import load_project_params
from bench.variants import compare

VARIANTS = {"KD": {"hidden_loss_weight": 0.0}, **{f"KD + hidden states × {weight}": {"hidden_loss_weight": weight}
                                                    for weight in (0.1, 1.0)}}
SIZES = {"quick": {"seeds": 1, "languages": ["es"], "epochs": 1},
         "full": {"seeds": 1, "languages": None, "epochs": None}}  # None: every language of params.yaml


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    languages = languages or sizes["languages"] or load_project_params()["data"]["languages"]
    return compare("hidden", "13. Hidden-state matching for the narrow students", VARIANTS, languages, sizes["seeds"],
                   sizes["epochs"])
