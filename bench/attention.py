"""Benchmark 17: the attention-map term for the narrow students (see bench.variants).

KD alone vs KD plus the KL divergence between each student layer's attention distributions and those of the
teacher layer it was built from, averaged over heads (losses.attention_map_loss; the narrow students keep 6 of the
teacher's 12 heads). The term runs the 12-layer teacher at every step, both models in eager attention, so the table
gives each variant's KD training time beside its effect. One weight (1.0, the unit weight of TinyBERT's and MiniLM's
attention terms) and one seed, as the issue asks of ablations, three seeds where that seed's choice leaves KD alone;
the choice reads validation only.
"""

from __future__ import annotations

from typing import Any

from bench.variants import compare_loss_term

VARIANTS = {"KD": {"attention_loss_weight": 0.0}, "KD + attention maps × 1.0": {"attention_loss_weight": 1.0}}


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    return compare_loss_term("attention", "17. Attention-map matching for the narrow students", VARIANTS, quick,
                             languages)
