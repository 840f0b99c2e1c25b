"""Benchmark 3: KD gain and retention, read from the evaluate stage's metrics/evaluate/<lang>.json (no training)."""

from __future__ import annotations

import json
from typing import Any

from bench.common import QUALITY_TARGETS, REPO_ROOT, load_project_params, target

SYSTEMS = (("teacher", "teacher"), ("kd_student", "KD student"), ("ce_student", "CE-only"), ("tfidf", "TF-IDF"))


def with_interval(value: float, low: float, high: float, spec: str = ".3f") -> str:
    """'0.812 [0.790, 0.833]'."""
    return f"{format(value, spec)} [{format(low, spec)}, {format(high, spec)}]"


def language_row(evaluation: dict[str, Any]) -> list[str]:
    """One table row: each system's macro-F1 with its CI, retention and KD gain with theirs."""
    systems, paired = evaluation["systems"], evaluation["paired"]
    cells = [evaluation["lang"], str(evaluation["test_rows"])]
    cells += [with_interval(systems[key]["macro_f1"], systems[key]["macro_f1_ci_low"], systems[key]["macro_f1_ci_high"])
              for key, _ in SYSTEMS]
    retention, gain = paired["retention"], paired["kd_gain"]
    cells.append(with_interval(retention["ratio"], retention["ratio_ci_low"], retention["ratio_ci_high"], ".1%"))
    cells.append(with_interval(gain["difference"], gain["difference_ci_low"], gain["difference_ci_high"], "+.3f"))
    return cells


def run(quick: bool) -> dict[str, Any]:
    """Per-language table and the two targets (same result in quick and full mode: nothing is trained)."""
    languages = load_project_params()["data"]["languages"]
    paths = {lang: REPO_ROOT / f"metrics/evaluate/{lang}.json" for lang in languages}
    found = {lang: json.loads(path.read_text(encoding="utf-8")) for lang, path in paths.items() if path.exists()}
    missing = sorted(set(languages) - set(found))
    result: dict[str, Any] = {"name": "quality", "title": "3. KD gain and retention",
                              "evaluations": {lang: {"systems": {key: {k: value["systems"][key][k] for k in
                                                                       ("macro_f1", "macro_f1_ci_low",
                                                                        "macro_f1_ci_high")}
                                                                 for key, _ in SYSTEMS},
                                                     "paired": value["paired"]} for lang, value in found.items()}}
    if not found:
        result["skipped"] = "no metrics/evaluate/<lang>.json yet: run `make run` first"
        return result
    retentions = {lang: value["paired"]["retention"]["ratio"] for lang, value in found.items()}
    gains = {lang: value["paired"]["kd_gain"]["difference"] for lang, value in found.items()}
    worst = min(retentions, key=retentions.get)
    mean_gain = sum(gains.values()) / len(gains)
    result["tables"] = [{
        "title": "Test macro-F1 with 95% bootstrap CIs; retention = KD / teacher and KD gain = KD − CE-only, paired "
                 "bootstrap over the same test rows",
        "columns": ["lang", "test rows", *(title for _, title in SYSTEMS), "retention", "KD gain"],
        "rows": [language_row(found[lang]) for lang in languages if lang in found]
                + [["mean", "", "", "", "", "", f"{sum(retentions.values()) / len(retentions):.1%}",
                    f"{mean_gain:+.3f}"]],
    }]
    result["targets"] = [target(f"retention, worst language ({worst})", retentions[worst],
                                QUALITY_TARGETS["worst_retention"]),
                         target("KD gain over CE-only, mean over languages (macro-F1)", mean_gain,
                                QUALITY_TARGETS["kd_over_ce_mean"])]
    result["notes"] = ["Read from metrics/evaluate/<lang>.json as the evaluate stage wrote them (its bootstrap "
                       "settings: params.yaml evaluate). The teacher is the stored ensemble (transformer + TF-IDF "
                       "where validation chose a mix)."]
    if missing:
        result["notes"].append(f"No evaluation yet for {', '.join(missing)} (targets over the others only).")
    return result
