"""Language balance for the teacher's fine-tuning set: temperature sampling, and loss weights on top of it.

Sampling: q_i ∝ n_i^alpha, with a cap on repeats. alpha = 1 keeps natural shares, alpha = 0 gives every language
the same share. No example is drawn more than max_repeats times, so a small language cannot be blown up beyond what
its data supports; the share a capped language cannot take goes to the others in proportion to their targets.

Loss weights (``balance.loss_weights``): a weight per row of the sampled set, the product of a language weight and a
class weight, each given explicitly or derived from the natural counts before sampling (``inverse``: 1/n,
``inverse_sqrt``: 1/√n, ``effective_number``: (1 − β)/(1 − βⁿ), Cui et al. 2019; class counts are counted within
each language). Weights are normalised so their mean over the sampled rows is 1, and stored in a ``weight`` column
that the teacher's loss reads (a weighted mean, see polydistill.model.training). Each language's share of the loss is
then its sampling share × its mean weight; the report states both. A student sees one language, so only class
weights apply to it (``class_row_weights``, params ``distill.class_weights``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

WEIGHTINGS = ("none", "inverse", "inverse_sqrt", "effective_number")


@dataclass(frozen=True)
class LossWeightSettings:
    """params.yaml balance.loss_weights: a weighting scheme (one of WEIGHTINGS) or explicit weights, per language and
    per class; β for effective_number."""

    languages: str | dict[str, float] = "none"
    classes: str | dict[str, float] = "none"
    beta: float = 0.999

    @property
    def active(self) -> bool:
        return self.languages != "none" or self.classes != "none"


@dataclass(frozen=True)
class BalanceSettings:
    """params.yaml balance: temperature sampling of the teacher's fine-tuning set, and its loss weights."""

    seed: int
    alpha: float
    max_repeats: int
    class_balance: bool
    teacher_size: int
    loss_weights: LossWeightSettings

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> BalanceSettings:
        return cls(**{**section, "loss_weights": LossWeightSettings(**section["loss_weights"])})


def derived_weights(counts: dict[str, int], scheme: str | dict[str, float], beta: float) -> dict[str, float]:
    """An unnormalised weight per group: from its natural count by `scheme`, or the explicit mapping given."""
    if isinstance(scheme, dict):
        missing = sorted(set(counts) - set(scheme))
        if missing:
            raise ValueError(f"explicit loss weights lack {missing}")
        return {key: float(scheme[key]) for key in counts}
    formulas = {"none": lambda n: 1.0, "inverse": lambda n: 1.0 / n, "inverse_sqrt": lambda n: n ** -0.5,
                "effective_number": lambda n: (1.0 - beta) / (1.0 - beta ** n)}
    if scheme not in formulas:
        raise ValueError(f"unknown loss weighting '{scheme}': use one of {', '.join(WEIGHTINGS)} or a mapping")
    if scheme == "effective_number" and not 0.0 < beta < 1.0:
        raise ValueError(f"effective_number needs 0 < beta < 1, got {beta}")
    return {key: formulas[scheme](n) for key, n in counts.items()}


def row_weights(sample: pd.DataFrame, population: pd.DataFrame, settings: LossWeightSettings) -> np.ndarray:
    """Per sampled row: language weight × class weight (from the population's natural counts), mean 1 over rows."""
    language = derived_weights(population.groupby("lang").size().to_dict(), settings.languages, settings.beta)
    classes = {lang: derived_weights(rows.groupby("label").size().to_dict(), settings.classes, settings.beta)
               for lang, rows in population.groupby("lang")}
    weights = np.array([language[lang] * classes[lang][label]
                        for lang, label in zip(sample["lang"], sample["label"], strict=True)])
    return weights / weights.mean()


def class_row_weights(labels: pd.Series, population_labels: pd.Series, scheme: str | dict[str, float],
                      beta: float) -> np.ndarray:
    """Per-class loss weights of one language's training rows (a student's), from the population's class counts.

    Labelled rows get their class's weight, normalised to mean 1 over the labelled rows; rows without a label
    (unlabelled or augmented text, NaN) weigh 1, so the mean over all rows is 1 as well.
    """
    classes = derived_weights(population_labels.value_counts().to_dict(), scheme, beta)
    labelled = labels.notna().to_numpy()
    weights = np.ones(len(labels))
    if labelled.any():
        chosen = np.array([classes[label] for label in labels[labelled]])
        weights[labelled] = chosen / chosen.mean()
    return weights


def temperature_shares(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Target sampling probabilities q_i = n_i^alpha / sum_j n_j^alpha (languages with no rows get 0)."""
    weights = {key: float(n) ** alpha if n > 0 else 0.0 for key, n in counts.items()}
    total = sum(weights.values())
    if total == 0:
        raise ValueError("cannot sample from groups that are all empty")
    return {key: weight / total for key, weight in weights.items()}


def allocate(counts: dict[str, int], alpha: float, total: int, max_repeats: int) -> dict[str, int]:
    """Integer sample sizes per group summing to `total` (or to every group's cap, if smaller).

    Each group gets total · q_i, but never more than max_repeats · n_i; what a capped group cannot take is
    handed to the uncapped groups in proportion to their shares (water-filling), then rounded by largest remainder.
    """
    if max_repeats < 1:
        raise ValueError("max_repeats must be at least 1")
    caps = {key: n * max_repeats for key, n in counts.items()}
    total = min(total, sum(caps.values()))
    shares = temperature_shares(counts, alpha)
    fixed: dict[str, float] = {}
    while True:
        free = {key: shares[key] for key in counts if key not in fixed}
        remaining = total - sum(fixed.values())
        free_mass = sum(free.values())
        targets = {key: remaining * share / free_mass for key, share in free.items()} if free_mass else {}
        over = {key for key, target in targets.items() if target > caps[key]}
        if not over:
            break
        fixed.update({key: float(caps[key]) for key in over})
    exact = {**fixed, **targets}
    return _round_preserving_total(exact, total, caps)


def _round_preserving_total(exact: dict[str, float], total: int, caps: dict[str, int]) -> dict[str, int]:
    rounded = {key: int(np.floor(value)) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (-(exact[key] - rounded[key]), key))
    for key in by_remainder:
        if sum(rounded.values()) >= total:
            break
        if rounded[key] < caps[key]:
            rounded[key] += 1
    return rounded


def draw(rows: pd.DataFrame, size: int, rng: np.random.Generator) -> pd.DataFrame:
    """`size` rows: every row floor(size/n) times, plus a random subset without replacement for the rest."""
    full_copies, remainder = divmod(size, len(rows))
    picks = np.concatenate([np.tile(np.arange(len(rows)), full_copies),
                            rng.choice(len(rows), size=remainder, replace=False)])
    return rows.iloc[np.sort(picks)]


def sample_balanced(
    frame: pd.DataFrame, total: int, alpha: float, max_repeats: int, class_balance: bool, seed: int
) -> pd.DataFrame:
    """A language-balanced sample of `frame` (columns lang and label), shuffled, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    language_counts = frame.groupby("lang").size().to_dict()
    language_sizes = allocate(language_counts, alpha, total, max_repeats)
    parts = []
    for lang in sorted(language_sizes):
        rows = frame[frame["lang"] == lang]
        label_counts = rows.groupby("label").size().to_dict()
        label_alpha = 0.0 if class_balance else 1.0
        label_sizes = allocate(label_counts, label_alpha, language_sizes[lang], max_repeats)
        for label in sorted(label_sizes):
            parts.append(draw(rows[rows["label"] == label], label_sizes[label], rng))
    sample = pd.concat(parts, ignore_index=True)
    return sample.iloc[rng.permutation(len(sample))].reset_index(drop=True)


def share_report(population: pd.DataFrame, sample: pd.DataFrame, alpha: float) -> dict[str, dict]:
    """Per language: rows available, natural share, target share q, rows sampled, share after, max repeats, mean
    loss weight and share of the loss (share after × mean weight; all weights 1 without a weight column)."""
    available = population.groupby("lang").size()
    sampled = sample.groupby("lang").size().reindex(available.index, fill_value=0)
    target = temperature_shares(available.to_dict(), alpha)
    repeats = sample.groupby(["lang", "id"]).size().groupby("lang").max().reindex(available.index, fill_value=0)
    weights = sample["weight"] if "weight" in sample else pd.Series(1.0, index=sample.index)
    weight_sums = weights.groupby(sample["lang"]).sum().reindex(available.index, fill_value=0.0)
    return {
        lang: {
            "available": int(available[lang]),
            "share_before": round(float(available[lang] / available.sum()), 4),
            "share_target": round(target[lang], 4),
            "sampled": int(sampled[lang]),
            "share_after": round(float(sampled[lang] / max(sampled.sum(), 1)), 4),
            "max_repeats_seen": int(repeats[lang]),
            "mean_loss_weight": round(float(weight_sums[lang] / max(sampled[lang], 1)), 4),
            "loss_share": round(float(weight_sums[lang] / weight_sums.sum()), 4),
        }
        for lang in available.index
    }


def balance_sets(train_path: Path, output_dir: Path, report_path: Path, plot_dir: Path,
                 settings: BalanceSettings) -> dict:
    """Sample the teacher's fine-tuning set from the train split; write it, the report and the plots.

    (The students' transfer sets are the transfer stage's: see polydistill.data.transfer.)
    """
    train = pd.read_parquet(train_path)
    sizes = {"teacher": settings.teacher_size}
    output_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    for offset, (name, size) in enumerate(sizes.items()):
        sample = sample_balanced(train, size, settings.alpha, settings.max_repeats, settings.class_balance,
                                 settings.seed + offset)
        if settings.loss_weights.active:
            sample["weight"] = row_weights(sample, train, settings.loss_weights)
        sample.to_parquet(output_dir / f"{name}.parquet", index=False)
        report[name] = {"rows": len(sample), "languages": share_report(train, sample, settings.alpha)}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_share_plots(report, plot_dir)
    return report


def write_share_plots(report: dict[str, dict], plot_dir: Path) -> None:
    """A CSV for `dvc plots` and a PNG of language shares before and after sampling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {"set": name, "lang": lang, "when": when, "share": stats[f"share_{when}"]}
        for name, entry in report.items()
        for lang, stats in entry["languages"].items()
        for when in ("before", "after")
    ]
    table = pd.DataFrame(rows)
    table.to_csv(plot_dir / "balance_shares.csv", index=False)
    figure, axes = plt.subplots(1, len(report), figsize=(5 * len(report), 3.5), sharey=True)
    for axis, (name, group) in zip(np.atleast_1d(axes), table.groupby("set", sort=False)):
        pivot = group.pivot(index="lang", columns="when", values="share")[["before", "after"]]
        pivot.plot.bar(ax=axis, rot=0, title=f"{name} set: language shares")
        axis.set_ylabel("share of examples")
    figure.tight_layout()
    figure.savefig(plot_dir / "balance_shares.png", dpi=110)
    plt.close(figure)
