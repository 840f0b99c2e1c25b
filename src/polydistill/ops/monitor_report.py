"""The monitor report as a self-contained HTML page and a JSON file (polydistill.ops.monitor builds the report)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from polydistill.ops.inference_log import FEATURES

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
         "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}"
         "td:first-child{text-align:left}.flag{color:#b00020;font-weight:bold}.ok{color:#1b5e20}")


def table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def number(value: float | None, pattern: str = ".3f") -> str:
    return "—" if value is None else format(value, pattern)


def summary_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for lang, entry in report["languages"].items():
        shadow = entry.get("shadow", {})
        rows.append([lang, entry["rows"], entry.get("answered", 0),
                     number(entry.get("labels", {}).get("shift")), number(entry.get("confidence", {}).get("mean")),
                     sum(result["drifted"] for result in entry.get("drift", {}).values()),
                     number(shadow.get("disagreement"), ".1%"), shadow.get("rows", 0),
                     "FLAGGED" if entry["flagged"] else ("ok" if entry["tested"] else "not tested")])
    return rows


def language_section(lang: str, entry: dict[str, Any]) -> str:
    reasons = [escape(reason) for reason in entry["reasons"]]
    verdict = (f"<p class='flag'>{'<br>'.join(reasons)}</p>" if entry["flagged"]
               else f"<p class='ok'>{'; '.join(reasons) or 'no drift, label shift or disagreement'}</p>")
    parts = [f"<h2>{escape(lang)}</h2>", verdict]
    if "labels" in entry:
        labels = entry["labels"]
        parts.append(table(["label", "served share", "training share"],
                           [[name, number(share), number(labels["training"][name])]
                            for name, share in labels["served"].items()]))
    if "drift" in entry:
        parts.append(table(["feature", "served mean", "training mean", "KS statistic", "p-value", "drifted"],
                           [[feature, number(result["served_mean"]), number(result["training_mean"]),
                             number(result["ks_statistic"]), f"{result['p_value']:.2g}", result["drifted"]]
                            for feature, result in entry["drift"].items()]))
    if "confidence" in entry:
        confidence = entry["confidence"]
        parts.append(table(["confidence", "mean", "p10", "p50", "p90"],
                           [["student score", *(number(confidence[key]) for key in ("mean", "p10", "p50", "p90"))]]))
    if entry.get("shadow", {}).get("why"):
        parts.append(f"<p>Shadow teacher: {escape(entry['shadow']['why'])}</p>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The whole report: a summary table, then each language's label shares, feature drift and confidence."""
    settings = report["settings"]
    intro = (f"<p>{report['rows']} logged rows from {escape(report['window'])}; not answered: "
             f"{escape(json.dumps(report['unanswered'])) if report['unanswered'] else 'none'}. Features: "
             f"{', '.join(FEATURES)}; a feature drifts when its KS p-value is below {settings['drift_p_value']} / "
             f"{len(FEATURES)} and its statistic at least {settings['drift_effect']}.</p>")
    trigger = (f"<p class='flag'>{len(report['flagged_languages'])} flagged language(s), at least monitor."
               f"trigger_languages ({settings['trigger_languages']}): pipeline deployment run "
               f"{escape(str(report.get('triggered_run')))}</p>"
               if report["trigger"] else "")
    summary = table(["lang", "rows", "answered", "label shift", "mean confidence", "drifted features",
                     "teacher disagreement", "shadow rows", "verdict"], summary_rows(report))
    sections = "".join(language_section(lang, entry) for lang, entry in report["languages"].items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>polydistill monitor</title>"
            f"<style>{STYLE}</style></head><body><h1>Served traffic vs training</h1>{intro}{trigger}{summary}"
            f"{sections}</body></html>\n")


def write_report(report: dict[str, Any], html_path: Path) -> list[Path]:
    """The HTML page and a JSON file of the same report beside it; returns both paths."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path = html_path.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [html_path, json_path]
