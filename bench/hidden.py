"""Benchmark 13: the hidden-state term for the narrow students (see bench.variants).

KD alone vs KD plus, at two weights, the MSE between each student layer's hidden states, mapped to the teacher's
width by a learned projection (losses.HiddenProjector), and the teacher layer it was built from. The term runs the
12-layer teacher at every step, so the table gives each variant's KD training time beside its effect.
"""

from __future__ import annotations

from typing import Any

from bench.variants import compare_loss_term

VARIANTS = {"KD": {"hidden_loss_weight": 0.0}, **{f"KD + hidden states × {weight}": {"hidden_loss_weight": weight}
                                                    for weight in (0.1, 1.0)}}


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    return compare_loss_term("hidden", "13. Hidden-state matching for the narrow students", VARIANTS, quick, languages)
