"""Monitoring of served traffic: what the router answered (polydistill.ops.inference_log) against training.

Per language, over the rows logged in the window:
- volume, and the rows not answered (unsupported or unrecognised language, no champion);
- the distribution of the student's confidence (the score of its label);
- drift against the training split, as len(FEATURES) + 1 tests: each logged text feature by a two-sample
  Kolmogorov-Smirnov test, the served label shares by a chi-square goodness-of-fit test against the training shares.
  Each test runs at ``drift_p_value`` divided by the number of tests (Bonferroni: at most that chance of a false
  alarm per language), and must also show an effect worth acting on: a KS statistic (the largest gap between the two
  cumulative distributions) of at least ``drift_effect``, label shares moved by at least ``label_shift`` (total
  variation distance). With thousands of rows a tiny shift is significant but harmless; with a few dozen a large
  gap can be chance. Evidently 0.7 was the alternative: for numeric columns its default is this KS test (Wasserstein
  above 1,000 rows) and for categories chi-square; it adds a large dependency, and its text descriptors need NLTK
  data that is not available offline, so the few lines here run the same tests;
- student–teacher disagreement on a sample of up to ``shadow_rows`` logged texts scored by the teacher (needs the
  raw text in the log: `polydistill serve --log-text`).

A language is flagged when a feature or its label shares drift, or the disagreement exceeds ``max_disagreement``;
languages with fewer than ``min_rows`` answered rows are reported, not tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chisquare, ks_2samp

from polydistill.ops.inference_log import FEATURES, language_confidences, read_log, text_features, unknown_shares

TeacherScorer = Callable[[str, list[str]], np.ndarray]  # (lang, texts) -> probabilities [N, K]


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor section of params.yaml."""

    log: str
    report: str
    window_hours: float
    min_rows: int
    reference_rows: int
    drift_p_value: float
    drift_effect: float
    label_shift: float
    shadow_rows: int
    max_disagreement: float
    trigger_languages: int
    seed: int

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> MonitorSettings:
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})


def read_window(root: Path, settings: MonitorSettings, now: float | None = None) -> tuple[pd.DataFrame, str]:
    """The logged rows of the window, and the window in words."""
    path = root / settings.log
    if settings.window_hours <= 0:
        return read_log(path), "the whole log"
    since = (now if now is not None else time.time()) - settings.window_hours * 3600
    return read_log(path, since), f"the last {settings.window_hours:g} h"


def served_versions(log: pd.DataFrame) -> dict[str, str]:
    """Per language: the student version that answered its most recent logged row."""
    answered = log[log["status"] == "ok"].sort_values("ts")
    return {str(lang): str(rows["student_version"].iloc[-1]) for lang, rows in answered.groupby("lang")}


def reference_features(texts: list[str], lang: str, tokenizer: Any, detector: Any) -> pd.DataFrame:
    """The logged features of training texts: the unknown-piece share from the served student's tokenizer, the
    language confidence from the router's detector."""
    rows = zip(texts, unknown_shares(tokenizer, texts), language_confidences(detector, texts, lang), strict=True)
    return pd.DataFrame([text_features(text, unknown, confidence) for text, unknown, confidence in rows])


def drift_test_level(settings: MonitorSettings) -> float:
    """The level of each of a language's drift tests: Bonferroni over the features and the label shares."""
    return settings.drift_p_value / (len(FEATURES) + 1)


def feature_drift(served: pd.DataFrame, reference: pd.DataFrame, settings: MonitorSettings) -> dict[str, Any]:
    """Per feature: the served and reference means, the KS statistic and p-value, and whether it drifted."""
    result = {}
    for feature in FEATURES:
        test = ks_2samp(served[feature].astype(float), reference[feature].astype(float))
        result[feature] = {"served_mean": float(served[feature].mean()),
                           "training_mean": float(reference[feature].mean()),
                           "ks_statistic": float(test.statistic), "p_value": float(test.pvalue),
                           "drifted": bool(test.pvalue < drift_test_level(settings)
                                           and test.statistic >= settings.drift_effect)}
    return result


def label_shares(labels: pd.Series, names: list[str]) -> dict[str, float]:
    counts = labels.value_counts()
    return {name: float(counts.get(name, 0) / len(labels)) if len(labels) else 0.0 for name in names}


def label_drift(served: pd.Series, training: pd.Series, names: list[str], settings: MonitorSettings) -> dict[str, Any]:
    """Served vs training label shares: total variation distance, chi-square p-value, and whether they drifted."""
    served_shares, training_shares = label_shares(served, names), label_shares(training, names)
    counts = np.array([served_shares[name] * len(served) for name in names])
    expected = np.array([training_shares[name] * len(served) for name in names])
    possible = expected > 0
    p_value = (0.0 if counts[~possible].sum() > 0
               else float(chisquare(counts[possible], expected[possible]).pvalue) if possible.sum() > 1 else 1.0)
    shift = 0.5 * sum(abs(served_shares[name] - training_shares[name]) for name in names)
    return {"served": served_shares, "training": training_shares, "shift": shift, "p_value": p_value,
            "drifted": bool(p_value < drift_test_level(settings) and shift >= settings.label_shift)}


def confidence_summary(scores: pd.Series) -> dict[str, float]:
    """Mean and deciles 1, 5 and 9 of the student's confidence in its answer."""
    values = scores.astype(float).to_numpy()
    p10, p50, p90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {"mean": float(values.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90)}


def shadow_disagreement(answered: pd.DataFrame, lang: str, scorer: TeacherScorer | None, labels: list[str],
                        settings: MonitorSettings) -> dict[str, Any]:
    """The share of sampled logged texts on which the teacher's label differs from the student's."""
    with_text = answered.dropna(subset=["text"])
    if scorer is None or with_text.empty:
        return {"rows": 0, "disagreement": None,
                "why": "no raw text in the log (serve with --log-text)" if scorer else "no teacher to score with"}
    sample = with_text.sample(n=min(settings.shadow_rows, len(with_text)), random_state=settings.seed)
    teacher = np.asarray(labels)[scorer(lang, sample["text"].tolist()).argmax(axis=1)]
    return {"rows": len(sample), "disagreement": float(np.mean(teacher != sample["label"].to_numpy()))}


def language_report(lang: str, rows: pd.DataFrame, training: pd.DataFrame, reference: pd.DataFrame,
                    scorer: TeacherScorer | None, labels: list[str], settings: MonitorSettings) -> dict[str, Any]:
    """Everything the monitor says about one language's logged rows; `training` holds its training rows."""
    answered = rows[rows["status"] == "ok"]
    report: dict[str, Any] = {"rows": len(rows), "answered": len(answered),
                              "versions": sorted(answered["student_version"].dropna().unique().tolist())}
    report["labels"] = label_drift(answered["label"], training["label"], labels, settings)
    if len(answered) < settings.min_rows:
        report.update(tested=False, flagged=False,
                      reasons=[f"{len(answered)} answered rows, fewer than min_rows {settings.min_rows}: not tested"])
        return report
    report["confidence"] = confidence_summary(answered["score"])
    report["drift"] = feature_drift(answered, reference, settings)
    report["shadow"] = shadow_disagreement(answered, lang, scorer, labels, settings)
    reasons = [f"{feature} drifted (KS {result['ks_statistic']:.3f}, p {result['p_value']:.2g}; served mean "
               f"{result['served_mean']:.3g} vs training {result['training_mean']:.3g})"
               for feature, result in report["drift"].items() if result["drifted"]]
    if report["labels"]["drifted"]:
        reasons.append(f"label shares moved by {report['labels']['shift']:.3f} (p {report['labels']['p_value']:.2g}; "
                       f"served {report['labels']['served']} vs training {report['labels']['training']})")
    disagreement = report["shadow"]["disagreement"]
    if disagreement is not None and disagreement > settings.max_disagreement:
        reasons.append(f"the teacher disagrees with the student on {disagreement:.1%} of "
                       f"{report['shadow']['rows']} sampled texts (limit {settings.max_disagreement:.0%})")
    report.update(tested=True, flagged=bool(reasons), reasons=reasons)
    return report


def monitor_traffic(log: pd.DataFrame, train: pd.DataFrame, tokenizers: Mapping[str, Any], detector: Any,
                    scorer: TeacherScorer | None, languages: list[str], labels: list[str],
                    settings: MonitorSettings) -> dict[str, Any]:
    """The monitor report over logged rows: per configured language, and the rows no language was given for.

    `tokenizers`: each served language's student tokenizer, `detector`: the router's language detector (the
    reference features are computed with them).
    """
    unanswered = log[log["status"] != "ok"]["status"].value_counts().to_dict()
    report: dict[str, Any] = {"settings": asdict(settings), "rows": len(log), "unanswered": unanswered,
                              "languages": {}}
    for lang in languages:
        rows = log[log["lang"] == lang]
        if rows.empty or lang not in tokenizers:
            report["languages"][lang] = {"rows": len(rows), "tested": False, "flagged": False,
                                         "reasons": ["no logged rows"]}
            continue
        training = train[train["lang"] == lang]
        sample = training.sample(n=min(settings.reference_rows, len(training)), random_state=settings.seed)
        reference = reference_features(sample["text"].tolist(), lang, tokenizers[lang], detector)
        report["languages"][lang] = language_report(lang, rows, training, reference, scorer, labels, settings)
    report["flagged_languages"] = [lang for lang, entry in report["languages"].items() if entry["flagged"]]
    report["trigger"] = 0 < settings.trigger_languages <= len(report["flagged_languages"])
    return report
