"""Model cards: what a reviewer reads before promoting a student, stored on its registered version.

A card is rendered from the run's own records (metrics/evaluate, metrics/distill, metrics/prepare,
data/raw/provenance.json and the version's lineage tags), never typed by hand, so every figure in it is the one the
pipeline measured. Its known limitations are derived from those figures too (a small test split, a baseline that
scores higher, a domain that is the language's only one, ...). The register stage attaches it after the gate, as the
version's description (shown in the MLflow UI) and as `model_card/<lang>.md` in the version's run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polydistill.ops.tracking import read_json


@dataclass(frozen=True)
class CardSettings:
    """When a card warns (params.yaml registry.model_card)."""

    small_test_rows: int          # fewer test rows: the CIs are wide
    max_ece: float                # a larger expected calibration error: the scores are not probabilities
    segmentation_target: float    # a smaller share of test texts segmented as the teacher does


@dataclass(frozen=True)
class CardFacts:
    """Everything a card states about one language's registered student."""

    lang: str
    model_name: str
    version: str
    evaluation: Mapping[str, Any]
    distilled: Mapping[str, Any]
    split_rows: Mapping[str, Mapping[str, int]]
    sources: list[Mapping[str, Any]]
    lineage: Mapping[str, str]


def card_facts(root: Path, lang: str, model_name: str, version: str, lineage: Mapping[str, str]) -> CardFacts:
    """Collect the facts from the workspace's records of the run that produced the version."""
    provenance_path = root / "data/raw/provenance.json"
    sources = read_json(provenance_path).get("sources", {}) if provenance_path.exists() else {}
    return CardFacts(
        lang=lang, model_name=model_name, version=version,
        evaluation=read_json(root / f"metrics/evaluate/{lang}.json"),
        distilled=read_json(root / f"metrics/distill/{lang}.json"),
        split_rows=read_json(root / "metrics/prepare.json")["rows"].get(lang, {}),
        sources=[source for source in sources.values() if source.get("language") == lang],
        lineage=lineage)


def render_model_card(facts: CardFacts, settings: CardSettings, decision: Mapping[str, Any] | None) -> str:
    """The card as Markdown; `decision` is the gate's (promoted, champion, reasons), None before the gate ran."""
    sections = [f"# {facts.model_name} version {facts.version}: sentiment student for `{facts.lang}`",
                intended_use(facts), data_section(facts), teacher_section(facts), metrics_section(facts),
                efficiency_section(facts), settings_section(facts), limitations_section(facts, settings),
                gate_section(decision)]
    return "\n\n".join(sections) + "\n"


def intended_use(facts: CardFacts) -> str:
    labels = facts.evaluation["systems"]["kd_student"]["label_names"]
    return ("## Intended use\n"
            f"Classifies `{facts.lang}` texts as {' / '.join(labels)}, one label and its probability per text, "
            "served by the polydistill router (`lang` given or detected). Distilled from the multilingual teacher "
            "to be served on CPU. Not for other languages, other label sets, or decisions about individuals without "
            "human review.")


def data_section(facts: CardFacts) -> str:
    domains = sorted({source.get("domain", "not stated") for source in facts.sources}) or ["not stated (own data)"]
    origins = [f"`{source['package']}` {source['version']} (sha256 `{source['sha256'][:12]}…`, licence "
               f"{source.get('licence', 'not stated')})" for source in facts.sources if "package" in source]
    totals = {split: sum(cell.get(split, 0) for cell in facts.split_rows.values())
              for split in ("train", "validation", "test")}
    lineage = ", ".join(f"{key} `{value[:12]}`" for key, value in sorted(facts.lineage.items())
                        if key.endswith(("sha256", "commit", "hash", "fingerprint")))
    transfer = ", ".join(f"{count:,} {kind}" for kind, count in facts.distilled.get("transfer_rows", {}).items())
    return ("## Data\n"
            f"- Domain: {'; '.join(domains)}. In this corpus language and domain are confounded: every `{facts.lang}` "
            "text comes from this domain, so the scores say nothing about other domains.\n"
            f"- Sources: {', '.join(origins) or 'the user corpus'}.\n"
            f"- Labelled rows: {totals['train']:,} train, {totals['validation']:,} validation, {totals['test']:,} test "
            "(near-duplicates kept in one split).\n"
            f"- Transfer set of the KD student: {transfer or 'not recorded'}.\n"
            f"- Lineage: {lineage or 'not recorded'}.")


def teacher_section(facts: CardFacts) -> str:
    teacher = facts.evaluation["efficiency"]["teacher"]
    systems = facts.evaluation["systems"]
    return ("## Teacher\n"
            f"Fine-tuned multilingual encoder ({teacher['num_layers']} layers, width {teacher['hidden_size']}, "
            f"{teacher['total_params']:,} parameters), alone or mixed with the language's TF-IDF model "
            "(`soft_labels.ensemble`) into the teacher whose soft labels the student learned from. Test macro-F1: "
            f"that teacher {systems['teacher']['macro_f1']:.3f}, the transformer alone "
            f"{systems['teacher_transformer']['macro_f1']:.3f}.")


def metrics_section(facts: CardFacts) -> str:
    systems, paired = facts.evaluation["systems"], facts.evaluation["paired"]
    rows = ["| system | macro-F1 (95% CI) | accuracy | macro recall | ECE |", "|---|---|---|---|---|"]
    for key, name in (("kd_student", "**this student**"), ("teacher", "teacher (ensemble)"),
                      ("ce_student", "CE-only student"), ("tfidf", "TF-IDF baseline")):
        system = systems[key]
        rows.append(f"| {name} | {system['macro_f1']:.3f} ({system['macro_f1_ci_low']:.3f}-"
                    f"{system['macro_f1_ci_high']:.3f}) | {system['accuracy']:.3f} | {system['macro_recall']:.3f} | "
                    f"{system['ece']:.3f} |")
    retention, gain = paired["retention"], paired.get("kd_gain", {})
    lines = [f"## Metrics (test split, {facts.evaluation['test_rows']} texts, scored as served: "
             f"{facts.evaluation['runtime']})", *rows, "",
             f"Retention of the teacher's macro-F1: {100 * retention['ratio']:.1f}% (paired bootstrap 95% CI "
             f"{100 * retention['ratio_ci_low']:.1f}-{100 * retention['ratio_ci_high']:.1f}%)."]
    if gain:
        lines.append(f"KD gain over the CE-only student: {gain['difference']:+.3f} (95% CI "
                     f"{gain['difference_ci_low']:+.3f} to {gain['difference_ci_high']:+.3f}).")
    return "\n".join(lines)


def efficiency_section(facts: CardFacts) -> str:
    summary, student = facts.evaluation["summary"], facts.evaluation["efficiency"]["kd_student"]
    return ("## Size and speed (2 threads, CPU)\n"
            f"{student['total_params']:,} parameters ({summary['compression']:.1f}x fewer than the teacher), "
            f"{student['weights_mb']:.1f} MB of weights, {student['num_layers']} layers of width "
            f"{student['hidden_size']}, vocabulary {student['vocab_size']:,} pieces. Throughput "
            f"{student['throughput_texts_per_s']:.0f} texts/s at batch {student['throughput_batch']} "
            f"({summary['speedup']:.1f}x the teacher), batch-1 latency {student['latency_ms_median']:.1f} ms median "
            f"({summary['latency_speedup']:.1f}x lower).")


def settings_section(facts: CardFacts) -> str:
    kd, student = facts.distilled.get("kd_settings", {}), facts.distilled["student"]
    return ("## Distillation settings\n"
            f"Mode {facts.distilled['mode']}, α {kd.get('alpha')}, temperature {kd.get('temperature')}; student kind "
            f"{student['kind']}, teacher layers {student['layers']}; kept step {facts.distilled['kd']['best_step']} "
            f"of {facts.distilled['kd']['steps']} (by {facts.distilled['kd']['selected_by']}), validation macro-F1 "
            f"{facts.distilled['kd']['best_validation_macro_f1']:.3f}.")


def limitations_section(facts: CardFacts, settings: CardSettings) -> str:
    return "## Known limitations\n" + "\n".join(f"- {item}" for item in known_limitations(facts, settings))


def known_limitations(facts: CardFacts, settings: CardSettings) -> list[str]:
    """Limitations read off the measured figures; always at least the domain confound."""
    systems, summary = facts.evaluation["systems"], facts.evaluation["summary"]
    kd, tfidf = systems["kd_student"], systems["tfidf"]
    items = ["Only one domain per language was seen (see Data): expect lower scores on other kinds of text."]
    if facts.evaluation["test_rows"] < settings.small_test_rows:
        items.append(f"Small test split ({facts.evaluation['test_rows']} texts): the macro-F1 CI spans "
                     f"{kd['macro_f1_ci_high'] - kd['macro_f1_ci_low']:.2f}; differences below that are noise.")
    if kd["macro_f1"] < tfidf["macro_f1"]:
        items.append(f"The TF-IDF baseline scores higher on test ({tfidf['macro_f1']:.3f} vs {kd['macro_f1']:.3f}).")
    weakest = min(kd["per_class"].items(), key=lambda item: item[1]["recall"])
    items.append(f"Weakest class: `{weakest[0]}` (recall {weakest[1]['recall']:.3f}).")
    if kd["ece"] > settings.max_ece:
        items.append(f"Scores are poorly calibrated (ECE {kd['ece']:.3f}): do not read them as probabilities.")
    if summary["segmented_as_teacher"] < settings.segmentation_target:
        items.append(f"Its trimmed vocabulary segments only {100 * summary['segmented_as_teacher']:.0f}% of test "
                     "texts exactly as the teacher does.")
    return items


def gate_section(decision: Mapping[str, Any] | None) -> str:
    if decision is None:
        return "## Promotion gate\nNot run yet (auto_promote is off): the version stays challenger."
    if decision["promoted"]:
        verdict = "promoted to champion"
    elif decision["champion"] == decision["version"]:
        verdict = "champion (promoted by an earlier run of the gate)"
    else:
        verdict = "refused: stays challenger"
    return "## Promotion gate\n" + f"**{verdict}**\n" + "\n".join(f"- {reason}" for reason in decision["reasons"])


def attach_model_card(root: Path, settings: Mapping[str, Any], lang: str, version: str,
                      decision: Mapping[str, Any] | None) -> str:
    """Render the card of a registered version and store it as its description and as an artifact of its run."""
    from polydistill.ops.registry import student_model_name
    from polydistill.ops.tracking import connect

    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    model_version = client.get_model_version(name, version)
    card = render_model_card(card_facts(root, lang, name, version, model_version.tags),
                             CardSettings(**settings["model_card"]), decision)
    client.update_model_version(name, version, description=card)
    client.log_text(model_version.run_id, card, f"model_card/{lang}.md")
    return card
