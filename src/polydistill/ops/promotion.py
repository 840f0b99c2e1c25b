"""Promotion, rollback and status of each language's student: the champion alias moves only under the registry
lock, with the champion and its history read inside it, and only through the gate (polydistill.ops.gate) unless the
operator forces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from polydistill.ops.gate import GateDecision, GateSettings, ScoredVersion, ValidationRows, gate_decision, macro_f1
from polydistill.ops.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    champion_history,
    history_in_step,
    registry_lock,
    set_champion,
    student_model_name,
)
from polydistill.ops.tracking import connect, quiet_model_logging

log = logging.getLogger(__name__)

TEACHER_VALIDATION_TAG = "teacher_validation_macro_f1"
VALIDATION_HASH_TAG = "validation_sha256"
SCORE_TAG_PREFIX = "validation_macro_f1."  # + the first 16 hex digits of the rows' sha256: a cached score


@dataclass
class PromotionResult:
    """What promote or rollback did to one language's champion."""

    lang: str
    version: str
    previous_champion: str | None
    champion: str | None
    promoted: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------------------- scoring


class VersionScorer:
    """Scores registered versions of one student on the validation rows, each at most once per call, in the
    label order of the first version scored; caches each version's macro-F1 on these rows as a version tag."""

    def __init__(self, client: Any, name: str, rows: ValidationRows, serving: Mapping[str, Any]) -> None:
        self.client, self.name, self.rows, self.serving = client, name, rows, serving
        self.label_names: list[str] | None = None
        self.scored: dict[str, ScoredVersion] = {}

    @property
    def score_tag(self) -> str:
        return SCORE_TAG_PREFIX + self.rows.sha256[:16]

    def codes(self) -> Any:
        return self.rows.codes(self.label_names or [])

    def score(self, version: str) -> ScoredVersion:
        """The version's probabilities on the rows (its student loaded from the registry as it is served)."""
        import mlflow

        from polydistill.model.runtime import TextClassifier, for_runtime

        if version not in self.scored:
            with quiet_model_logging():
                components = mlflow.transformers.load_model(f"models:/{self.name}/{version}",
                                                            return_type="components")
            classifier = TextClassifier(components["tokenizer"],
                                        for_runtime(components["model"], self.serving["runtime"]),
                                        int(self.serving["max_length"]))
            names = classifier.label_names
            self.label_names = self.label_names or names
            probabilities = classifier.probabilities(self.rows.texts, int(self.serving["batch_size"]))
            columns = [names.index(label) for label in self.label_names]
            self.scored[version] = ScoredVersion(version, probabilities[:, columns])
            self.client.set_model_version_tag(self.name, version, self.score_tag,
                                              f"{macro_f1(self.codes(), self.scored[version].probabilities):.6f}")
        return self.scored[version]

    def cached_macro_f1(self, version: str) -> float:
        tags = self.client.get_model_version(self.name, version).tags
        if self.score_tag in tags:
            return float(tags[self.score_tag])
        return macro_f1(self.codes(), self.score(version).probabilities)

    def best(self, versions: list[str]) -> ScoredVersion | None:
        """The version with the highest validation macro-F1 among `versions` (ties: the latest)."""
        if not versions:
            return None
        ranked = sorted(versions, key=lambda version: (self.cached_macro_f1(version), int(version)))
        return self.score(ranked[-1])


def teacher_macro_f1(client: Any, name: str, version: str, rows: ValidationRows) -> float | None:
    """The teacher's validation macro-F1 recorded at registration, when it was recorded for these very rows."""
    tags = client.get_model_version(name, version).tags
    if tags.get(VALIDATION_HASH_TAG) != rows.sha256 or TEACHER_VALIDATION_TAG not in tags:
        return None
    return float(tags[TEACHER_VALIDATION_TAG])


def run_gate(client: Any, name: str, version: str, history: list[str], rows: ValidationRows,
             settings: Mapping[str, Any]) -> GateDecision:
    """Score the challenger and every past champion on the validation rows and apply the gate."""
    scorer = VersionScorer(client, name, rows, settings["router"])
    challenger = scorer.score(version)
    best = scorer.best(sorted(set(history) - {version}, key=int))
    return gate_decision(scorer.codes(), challenger, teacher_macro_f1(client, name, version, rows), best,
                         GateSettings.from_params(settings["gate"]))


def validation_rows(root: Path, settings: Mapping[str, Any], lang: str) -> ValidationRows:
    try:
        return ValidationRows.load(Path(root) / settings["gate"]["validation_split"], lang)
    except (FileNotFoundError, ValueError) as error:
        raise RegistryError(str(error)) from error


# ---------------------------------------------------------------------------------------------------- promotion


def promote(root: Path, settings: Mapping[str, Any], lang: str, version: str | int | None = None,
            force: bool = False) -> PromotionResult:
    """Make a version (default: the challenger) champion if it passes the gate, or regardless with force."""
    from mlflow.exceptions import MlflowException

    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    rows = validation_rows(root, settings, lang)
    with registry_lock(client.tracking_uri, settings["lock_timeout_s"]):
        version = str(version) if version is not None else alias_version(client, name, CHALLENGER)
        if version is None:
            raise RegistryError(f"{name} has no challenger; name a version")
        try:
            client.get_model_version(name, version)
        except MlflowException as error:
            raise RegistryError(f"{name} has no version {version}") from error
        champion = alias_version(client, name, CHAMPION)
        if champion == version:
            return PromotionResult(lang, version, champion, champion, False,
                                   [f"version {version} is already champion"])
        history = history_in_step(client, name)
        try:
            decision = run_gate(client, name, version, history, rows, settings)
        except (MlflowException, OSError, ValueError) as error:
            if not force:
                raise RegistryError(f"the gate could not score {name} version {version}: {error}") from error
            decision = GateDecision(False, [f"FAIL: the gate could not score the version: {error}"], float("nan"))
        promoted = decision.promote or force
        reasons = decision.reasons + (["forced by the operator despite the gate"]
                                      if force and not decision.promote else [])
        client.set_model_version_tag(name, version, "gate", "passed" if decision.promote else "refused")
        client.set_model_version_tag(name, version, "gate_reasons", "; ".join(reasons))
        if promoted:
            set_champion(client, name, version, [*history, version])
            client.set_model_version_tag(name, version, "promoted_at", now_iso())
            if alias_version(client, name, CHALLENGER) == version:
                client.delete_registered_model_alias(name, CHALLENGER)
    log.info("%s v%s %s: %s", name, version, "promoted" if promoted else "stays challenger", "; ".join(reasons))
    return PromotionResult(lang, version, champion, version if promoted else champion, promoted, reasons)


def rollback(root: Path, settings: Mapping[str, Any], lang: str) -> PromotionResult:
    """Make the previous champion champion again; refuses when there is none (a champion always remains) and when
    the history does not end at the current champion (the alias was moved outside polydistill)."""
    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    with registry_lock(client.tracking_uri, settings["lock_timeout_s"]):
        history = champion_history(client, name)
        current = alias_version(client, name, CHAMPION)
        if current is None or len(history) < 2:
            raise RegistryError(f"{name} has no previous champion to roll back to (history {history})")
        if history[-1] != current:
            raise RegistryError(f"{name}: the champion history {history} does not end at the champion version "
                                f"{current}; promote the version you want explicitly (`polydistill promote --lang "
                                f"{lang} --version N --force`)")
        previous = history[-2]
        set_champion(client, name, previous, history[:-1])
        client.set_model_version_tag(name, current, "rolled_back_at", now_iso())
        client.set_model_version_tag(name, previous, "promoted_at", now_iso())
    reasons = [f"rolled back from version {current} to version {previous}"]
    log.info("%s: %s", name, reasons[0])
    return PromotionResult(lang, previous, current, previous, True, reasons)


def status(root: Path, settings: Mapping[str, Any], languages: list[str]) -> list[dict[str, Any]]:
    """One row per language: champion and challenger versions, the champion's test macro-F1, retention, size, when."""
    client = connect(root, settings)
    rows = []
    for lang in languages:
        name = student_model_name(settings["prefix"], lang)
        row: dict[str, Any] = {"lang": lang, "champion": alias_version(client, name, CHAMPION),
                               "challenger": alias_version(client, name, CHALLENGER), "macro_f1": None,
                               "retention": None, "weights_mb": None, "promoted_at": None}
        if row["champion"]:
            tags = client.get_model_version(name, row["champion"]).tags
            for key in ("macro_f1", "retention", "weights_mb"):
                row[key] = float(tags[f"metric.{key}"]) if f"metric.{key}" in tags else None
            row["promoted_at"] = tags.get("promoted_at")
        rows.append(row)
    return rows
