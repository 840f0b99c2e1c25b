"""The promotion gate: may a challenger become champion?

Decided on the validation split only (test stays for reporting). The challenger and the best champion the language
has had (every version in its champion history, so a chain of small drops cannot ratchet the quality down) are
scored on the same validation rows; the rules:
- absolute floors: the challenger's validation macro-F1 and its retention (validation macro-F1 / its teacher's,
  recorded at registration for the same rows);
- against the best champion: a macro-F1 drop of at most `max_f1_drop`, and (optionally) a paired bootstrap
  interval of challenger − champion that does not lie entirely below 0.
Pure numbers here; loading and scoring the versions is polydistill.ops.promotion's job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from polydistill.model.metrics import paired_bootstrap_difference


@dataclass(frozen=True)
class GateSettings:
    """params.yaml `registry.gate`."""

    validation_split: str
    min_macro_f1: float
    min_retention: float
    max_f1_drop: float
    refuse_significantly_worse: bool
    bootstrap_samples: int
    confidence: float
    seed: int

    @classmethod
    def from_params(cls, gate: Mapping[str, Any]) -> GateSettings:
        return cls(**{field.name: gate[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class ValidationRows:
    """One language's validation texts and gold labels (ordered by row id) and a sha256 over them."""

    lang: str
    texts: list[str]
    labels: list[str]
    sha256: str

    @classmethod
    def load(cls, path: Path, lang: str) -> ValidationRows:
        if not Path(path).exists():
            raise FileNotFoundError(f"no validation split at {path}: run `dvc repro prepare` first")
        frame = pd.read_parquet(path, columns=["id", "text", "label", "lang"])
        frame = frame[frame["lang"] == lang].sort_values("id", kind="stable")
        if frame.empty:
            raise ValueError(f"the validation split {path} has no rows for {lang!r}")
        digest = hashlib.sha256()
        for row_id, text, label in zip(frame["id"], frame["text"], frame["label"], strict=True):
            digest.update(f"{row_id}\0{text}\0{label}\n".encode())
        return cls(lang, frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist(), digest.hexdigest())

    def codes(self, label_names: list[str]) -> np.ndarray:
        unknown = sorted(set(self.labels) - set(label_names))
        if unknown:
            raise ValueError(f"validation labels {unknown} are not among the model's labels {label_names}")
        index = {name: position for position, name in enumerate(label_names)}
        return np.array([index[label] for label in self.labels])


@dataclass(frozen=True)
class ScoredVersion:
    """A registered version's class probabilities on the validation rows, columns in the gate's label order."""

    version: str
    probabilities: np.ndarray


@dataclass(frozen=True)
class GateDecision:
    """Whether a version may become champion, and every reason checked on the way."""

    promote: bool
    reasons: list[str]
    macro_f1: float


def macro_f1(codes: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro-F1 of the top class against the gold codes (sklearn's convention, as polydistill.model.metrics)."""
    return float(f1_score(codes, probabilities.argmax(axis=1), average="macro"))


def gate_decision(codes: np.ndarray, challenger: ScoredVersion, teacher_macro_f1: float | None,
                  best_champion: ScoredVersion | None, settings: GateSettings) -> GateDecision:
    """Apply the gate to a challenger scored on the validation rows whose gold labels are `codes`."""
    reasons: list[str] = []
    passed = True

    def check(ok: bool, message: str) -> None:
        nonlocal passed
        passed = passed and ok
        reasons.append(("pass: " if ok else "FAIL: ") + message)

    f1 = macro_f1(codes, challenger.probabilities)
    check(f1 >= settings.min_macro_f1, f"validation macro-F1 {f1:.4f} vs minimum {settings.min_macro_f1}")
    if teacher_macro_f1 is None or teacher_macro_f1 <= 0:
        check(False, "no teacher validation macro-F1 recorded for these rows: retention cannot be checked")
    else:
        retention = f1 / teacher_macro_f1
        check(retention >= settings.min_retention,
              f"validation retention {retention:.4f} (teacher {teacher_macro_f1:.4f}) vs minimum "
              f"{settings.min_retention}")
    if best_champion is None:
        reasons.append("no champion yet: absolute minimums only")
        return GateDecision(passed, reasons, f1)
    paired = paired_bootstrap_difference(codes, challenger.probabilities, best_champion.probabilities,
                                         settings.bootstrap_samples, settings.confidence, settings.seed)
    drop = -paired["difference"]
    check(drop <= settings.max_f1_drop,
          f"validation macro-F1 {f1:.4f} vs best champion so far (version {best_champion.version}) "
          f"{paired['macro_f1_b']:.4f}: drop {drop:+.4f}, tolerance {settings.max_f1_drop}")
    if settings.refuse_significantly_worse:
        below = paired["difference_ci_high"] < 0
        check(not below, f"paired {settings.confidence:.0%} interval of challenger − champion "
                         f"[{paired['difference_ci_low']:+.4f}, {paired['difference_ci_high']:+.4f}] "
                         f"{'entirely below 0' if below else 'reaches 0'}")
    return GateDecision(passed, reasons, f1)
