"""Benchmarks 11-15 and 17: student settings compared over seeds, the default chosen on validation.

Each variant overrides some of params.yaml's distill settings. For each language, variant and seed the default
students are distilled (both the KD and the CE-only student) and scored as served on validation and test. The choice
per language is the variant with the best KD validation macro-F1 averaged over seeds, unless it beats the variant that
matches params.yaml by less than one seed sd (the larger of the two), which is noise: then the default stays. Test is
reported beside it and never read by the choice.

- class_weights (benchmark 11): distill.class_weights none / inverse_sqrt / inverse, on es (34% negative), the one
  language whose classes are clearly skewed.
- vocabulary (benchmark 12): the students' vocabulary ranked with and without the word frequency list
  (distill.student.vocabulary.word_prior_tokens), on the languages whose vocabulary the list changes (es, id, sl).
- hidden (benchmark 13): distill.hidden_loss_weight 0 / 0.1 / 1 for the narrow students, on every language.
- kd_weight (14) and steps (15): zh's KD weight alpha; a cap on en's and zh's steps.
- attention (benchmark 17): distill.attention_loss_weight 0 / 1 for the narrow students, on every language.

The loss-term ablations (13, 17) run one seed; a language whose one-seed choice leaves params.yaml's variant is run
again over three seeds before anything is chosen there.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pandas as pd

from bench.adaptive import choose, held_out_splits, macro_f1
from bench.common import REPO_ROOT, load_project_params
from bench.seeds import pipeline_paths
from polydistill.model.distill import DistillSettings, distill_language
from polydistill.model.runtime import probabilities_from_model
from polydistill.model.soft_labels import SoftLabelSettings

VARIANTS = ("kd", "ce")
Overrides = dict[str, Any]  # dotted distill setting -> value


def with_overrides(settings: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """A deep copy of the distill settings with dotted keys (e.g. student.vocabulary.word_prior_tokens) set."""
    changed = copy.deepcopy(settings)
    for dotted, value in overrides.items():
        *parents, name = dotted.split(".")
        section = changed
        for parent in parents:
            section = section[parent]
        section[name] = value
    return changed


def default_variant(variants: dict[str, Overrides], settings: dict[str, Any]) -> str:
    """The variant whose overrides params.yaml already holds."""
    matching = [name for name, overrides in variants.items() if with_overrides(settings, overrides) == settings]
    if len(matching) != 1:
        raise ValueError(f"exactly one variant must match params.yaml, got {matching}")
    return matching[0]


def seed_scores(name: str, lang: str, variant: str, overrides: Overrides, seed: int, params: dict[str, Any],
                epochs: int | None, splits: dict[str, pd.DataFrame], gold: dict[str, Any]) -> dict[str, Any]:
    """Distil one language with one variant and seed: each student's macro-F1 on validation and test, as served."""
    settings = with_overrides(params["distill"], overrides)
    settings["train"]["seed"] = seed
    if epochs:
        settings["train"]["epochs"] = epochs
    paths = pipeline_paths(lang, REPO_ROOT / ".cache/bench" / name / variant / str(seed))
    report = distill_language(lang, paths, DistillSettings.from_params(settings),
                              SoftLabelSettings.from_params(params["soft_labels"]), params["data"]["labels"])
    runtime = params["registry"]["router"]["runtime"]
    scores: dict[str, Any] = {student: {split: macro_f1(probabilities_from_model(
        paths["output"] / student, frame["text"].tolist(), settings["train"]["max_length"],
        settings["train"]["eval_batch_size"], settings["threads"], runtime), gold[split])
        for split, frame in splits.items()} for student in VARIANTS}
    scores["segmented_as_teacher"] = report["segmentation"]["test"]["identical_share"]
    last_evaluation = report["kd"]["history"][-1]
    scores["kd_training"] = {"seconds": last_evaluation["seconds"], "steps": last_evaluation["step"]}
    return scores


def collect(name: str, variants: dict[str, Overrides], languages: list[str], seeds: int,
            epochs: int | None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Scores of every language × variant × seed, seeds counted from params.yaml's."""
    params = load_project_params()
    base_seed = params["distill"]["train"]["seed"]
    results = {}
    for lang in languages:
        splits, gold = held_out_splits(lang, params["data"]["labels"])
        results[lang] = {variant: [seed_scores(name, lang, variant, overrides, seed, params, epochs, splits, gold)
                                   for seed in range(base_seed, base_seed + seeds)]
                         for variant, overrides in variants.items()}
    return results


def compare(name: str, title: str, variants: dict[str, Overrides], languages: list[str], seeds: int,
            epochs: int | None) -> dict[str, Any]:
    """Run every language × variant × seed and summarise (see the module docstring)."""
    default = default_variant(variants, load_project_params()["distill"])
    results = collect(name, variants, languages, seeds, epochs)
    return summarise(name, title, results, default, {"variants": variants, "seeds": seeds, "epochs": epochs,
                                                     "languages": languages})


LOSS_TERM_SIZES = {"quick": {"seeds": 1, "confirm_seeds": 1, "languages": ["es"], "epochs": 1},
                   "full": {"seeds": 1, "confirm_seeds": 3, "languages": None, "epochs": None}}  # None: all


def compare_loss_term(name: str, title: str, variants: dict[str, Overrides], quick: bool,
                      languages: list[str] | None = None) -> dict[str, Any]:
    """compare() at the size of the loss-term ablations (13, 17): one seed on every language (es for one epoch when
    quick, unless `languages` names others). A language whose one-seed choice leaves params.yaml's variant is run
    again with confirm_seeds seeds, and its choice reads their means: a gain under one seed sd keeps the default."""
    sizes = LOSS_TERM_SIZES["quick" if quick else "full"]
    params = load_project_params()
    languages = languages or sizes["languages"] or params["data"]["languages"]
    default = default_variant(variants, params["distill"])
    results = collect(name, variants, languages, sizes["seeds"], sizes["epochs"])
    confirmed = [lang for lang, by_variant in results.items()
                 if choose_beyond_noise(kd_validation(by_variant), default) != default] \
        if sizes["confirm_seeds"] > sizes["seeds"] else []
    if confirmed:
        results.update(collect(name, variants, confirmed, sizes["confirm_seeds"], sizes["epochs"]))
    return summarise(name, title, results, default, {
        "variants": variants, "seeds": sizes["seeds"], "confirm_seeds": sizes["confirm_seeds"],
        "confirmed": confirmed, "epochs": sizes["epochs"], "languages": languages})


def kd_validation(by_variant: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Each variant's KD validation macro-F1 per seed."""
    return {variant: [seed["kd"]["validation"] for seed in seeds] for variant, seeds in by_variant.items()}


def choose_beyond_noise(validation: dict[str, list[float]], default: str) -> str:
    """The best validation mean over seeds (see bench.adaptive.choose), or the default when the best beats it by less
    than the larger seed sd of the two."""
    best = choose(validation, default)
    spread = max(statistics.stdev(validation[best]), statistics.stdev(validation[default])) \
        if len(validation[best]) > 1 else 0.0
    gain = statistics.mean(validation[best]) - statistics.mean(validation[default])
    return best if gain >= spread else default


def training_time(seeds: list[dict[str, Any]]) -> str:
    """Mean seconds and steps of KD training up to its last validation (from the run's history)."""
    seconds = statistics.mean(seed["kd_training"]["seconds"] for seed in seeds)
    steps = statistics.mean(seed["kd_training"]["steps"] for seed in seeds)
    return f"{seconds:,.0f} s ({steps:,.0f})"


def summarise(name: str, title: str, results: dict[str, dict[str, list[dict]]], default: str,
              config: dict[str, Any]) -> dict[str, Any]:
    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else \
            f"{values[0]:.3f}"

    rows, chosen = [], {}
    for lang, by_variant in results.items():
        chosen[lang] = choose_beyond_noise(kd_validation(by_variant), default)
        for variant, seeds in by_variant.items():
            scores = {f"{student} {split}": [seed[student][split] for seed in seeds]
                      for student in VARIANTS for split in ("validation", "test")}
            gain = [seed["kd"]["test"] - base["kd"]["test"] for seed, base in zip(seeds, by_variant[default],
                                                                                    strict=True)]
            rows.append([lang, variant, cell(scores["kd validation"]), cell(scores["kd test"]),
                         cell(scores["ce validation"]), cell(scores["ce test"]),
                         f"{statistics.mean(gain):+.3f} ({min(gain):+.3f} to {max(gain):+.3f})",
                         f"{statistics.mean(seed['segmented_as_teacher'] for seed in seeds):.0%}",
                         training_time(seeds), "chosen" if variant == chosen[lang] else ""])
    return {
        "name": name, "title": title, "config": config, "results": results, "chosen": chosen,
        "tables": [{"title": f"Student macro-F1 per variant, mean ± sd over {seed_counts(config, default)} (as "
                             f"served); the choice reads KD validation only; KD test − {default}'s, paired per seed "
                             "(min to max); test texts segmented as the teacher does; KD training seconds to the "
                             "last validation, mean over seeds",
                    "columns": ["lang", "variant", "KD validation", "KD test", "CE-only validation", "CE-only test",
                                f"KD test − {default}", "segmented as teacher", "KD training (steps)", ""],
                    "rows": rows}],
        "notes": [f"params.yaml holds {default}; validation chooses {chosen} ({choice_rule(config)})."],
    }


def seed_counts(config: dict[str, Any], default: str) -> str:
    """How many seeds the table's means cover, naming the languages confirmed with more."""
    counts = f"{config['seeds']} seed{'s' if config['seeds'] > 1 else ''}"
    if config.get("confirmed"):
        confirmed = ", ".join(config["confirmed"])
        counts += f", {config['confirm_seeds']} on {confirmed} where the one-seed choice left {default}"
    return counts


def choice_rule(config: dict[str, Any]) -> str:
    """The rule that chose, in words."""
    if config["seeds"] > 1:
        return "a gain under one seed sd keeps the default"
    if config.get("confirmed"):
        return (f"one seed: the best validation score; on {', '.join(config['confirmed'])} {config['confirm_seeds']} "
                "seeds, where a gain under one seed sd keeps the default")
    return "one seed: the best validation score, with no sd to tell a gain from noise"
