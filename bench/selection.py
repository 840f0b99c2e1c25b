"""Benchmark 16: which evaluation a student keeps (distill.train.select_by), compared on validation halves.

Early stopping on macro-F1 picks among 3-5 evaluations scored on 80-130 validation rows for es, id and sl (a standard
error near 0.04), so it can keep an early, unlucky checkpoint (benchmark 7: sl seed 15 kept step 100, id seed 14 step
200 of 438). Each language's students (KD and CE-only) are distilled per seed with every evaluation kept and no early
stopping (select_by last), and every evaluation's validation logits are read back (training.validation_logits). Each
rule is then replayed with params.yaml's patience: it chooses a step on one random half of the language's validation
rows and is scored (macro-F1) on the other half, both ways round, over many random halves. Test is never read. The
students evaluate every RULE_EVAL_EVERY steps, the spacing the rules were compared at (the default run, which keeps
its last step, evaluates less often: there evaluations only record the curves).
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from bench.common import REPO_ROOT, load_project_params
from bench.seeds import mean_sd, pipeline_paths
from polydistill.model.distill import VARIANTS, DistillSettings, distill_language
from polydistill.model.soft_labels import SoftLabelSettings
from polydistill.model.training import SELECTION_RULES, per_language_log_loss, selection_score, validation_logits

SIZES = {"quick": {"seeds": 1, "languages": ["es"], "epochs": 1, "halves": 20},
         "full": {"seeds": 3, "languages": None, "epochs": None, "halves": 200}}
Curve = dict[int, np.ndarray]  # validation logits by step
RULE_EVAL_EVERY = 100  # steps between the evaluations a rule chooses among


def replay(rule: str, curve: Curve, gold: np.ndarray, rows: np.ndarray, patience: int) -> int:
    """The step `rule` keeps when it sees only `rows`, with early stopping after `patience` evaluations without a
    gain, as training.train_classifier does."""
    best_score, best_step, without_gain = float("-inf"), 0, 0
    langs = np.zeros(len(rows), dtype=int)
    for step, logits in curve.items():
        predictions = logits[rows].argmax(axis=1)
        macro_f1 = {"mean": float(f1_score(gold[rows], predictions, average="macro"))}
        log_loss = per_language_log_loss(gold[rows], logits[rows], langs)
        score = selection_score(rule, macro_f1, log_loss, step)
        if score > best_score:
            best_score, best_step, without_gain = score, step, 0
        else:
            without_gain += 1
            if without_gain >= patience:
                break
    return best_step


def held_out_scores(curve: Curve, gold: np.ndarray, patience: int, halves: int, seed: int) -> dict[str, Any]:
    """Per rule: the mean macro-F1 on the other half of the step chosen on one half, and the chosen steps."""
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {rule: [] for rule in SELECTION_RULES}
    steps: dict[str, list[int]] = {rule: [] for rule in SELECTION_RULES}
    for _ in range(halves):
        order = rng.permutation(len(gold))
        first, second = order[:len(gold) // 2], order[len(gold) // 2:]
        for chosen_on, scored_on in ((first, second), (second, first)):
            for rule in SELECTION_RULES:
                step = replay(rule, curve, gold, chosen_on, patience)
                predictions = curve[step][scored_on].argmax(axis=1)
                scores[rule].append(float(f1_score(gold[scored_on], predictions, average="macro")))
                steps[rule].append(step)
    return {rule: {"held_out_macro_f1": statistics.mean(scores[rule]), "mean_step": statistics.mean(steps[rule]),
                   "last_step": max(curve)} for rule in SELECTION_RULES}


def seed_curves(lang: str, seed: int, params: dict[str, Any], epochs: int | None) -> dict[str, tuple[Curve, Any]]:
    """Distil one language at one seed with every evaluation kept; each student's curve and validation label ids."""
    settings = copy.deepcopy(params["distill"])
    settings["train"].update(seed=seed, select_by="last", eval_every=RULE_EVAL_EVERY)
    if epochs:
        settings["train"]["epochs"] = epochs
    paths = pipeline_paths(lang, REPO_ROOT / ".cache/bench/selection" / str(seed))
    report = distill_language(lang, paths, DistillSettings.from_params(settings),
                              SoftLabelSettings.from_params(params["soft_labels"]), params["data"]["labels"])
    curves = {}
    for variant in VARIANTS:
        curve, gold, langs = validation_logits(paths["work"] / report[variant]["run"])
        if set(langs.tolist()) != {lang}:
            raise ValueError(f"{lang} {variant}: validation logits of {sorted(set(langs.tolist()))}")
        curves[variant] = (curve, gold)
    return curves


def run(quick: bool, languages: list[str] | None = None) -> dict[str, Any]:
    sizes = {**SIZES["quick" if quick else "full"], **({"languages": languages} if languages else {})}
    params = load_project_params()
    languages = sizes["languages"] or params["data"]["languages"]
    base_seed, patience = params["distill"]["train"]["seed"], params["distill"]["train"]["patience"]
    seeds = [base_seed + offset for offset in range(sizes["seeds"])]
    results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for seed in seeds:
        for lang in languages:
            for variant, (curve, gold) in seed_curves(lang, seed, params, sizes["epochs"]).items():
                scored = held_out_scores(curve, gold, patience, sizes["halves"], seed)
                for rule in SELECTION_RULES:
                    results.setdefault(lang, {}).setdefault(variant, {}).setdefault(rule, []).append(scored[rule])
    return summarise(results, seeds, languages, params["distill"]["train"]["select_by"], sizes["halves"])


def summarise(results: dict[str, dict[str, dict[str, list[dict[str, Any]]]]], seeds: list[int],
              languages: list[str], default_rule: str, halves: int) -> dict[str, Any]:
    """Per language and rule: held-out-half macro-F1 of KD and CE-only over seeds, their paired difference, the
    steps kept; the rule with the best KD mean over languages (the default kept unless beaten by more than the
    largest seed sd of the language means)."""
    def held_out(lang: str, variant: str, rule: str) -> list[float]:
        return [seed["held_out_macro_f1"] for seed in results[lang][variant][rule]]

    rows = []
    for lang in languages:
        for rule in SELECTION_RULES:
            kd, ce = held_out(lang, "kd", rule), held_out(lang, "ce", rule)
            steps = [seed["mean_step"] for seed in results[lang]["kd"][rule]]
            rows.append([lang, rule, mean_sd(kd), mean_sd(ce),
                         f"{statistics.mean(a - b for a, b in zip(kd, ce, strict=True)):+.3f}",
                         f"{statistics.mean(steps):.0f} / {results[lang]['kd'][rule][0]['last_step']}"])
    seed_means = {rule: [statistics.mean(held_out(lang, "kd", rule)[index] for lang in languages)
                         for index in range(len(seeds))] for rule in SELECTION_RULES}
    gains = {rule: statistics.mean(statistics.mean(a - b for a, b in zip(held_out(lang, "kd", rule),
                                                                          held_out(lang, "ce", rule), strict=True))
                                   for lang in languages) for rule in SELECTION_RULES}
    for rule in SELECTION_RULES:
        rows.append(["mean", rule, mean_sd(seed_means[rule]), "", f"{gains[rule]:+.3f}", ""])
    means = {rule: statistics.mean(values) for rule, values in seed_means.items()}
    best = max(means, key=means.get)
    noise = max(statistics.stdev(values) for values in seed_means.values()) if len(seeds) > 1 else 0.0
    chosen = best if means[best] - means[default_rule] > noise else default_rule
    return {
        "name": "selection", "title": "16. Which evaluation a student keeps (select_by), on validation halves",
        "seeds": seeds, "results": results, "chosen": chosen,
        "tables": [{"title": f"Macro-F1 on one half of each language's validation rows of the step each rule keeps "
                             f"seeing the other half ({halves} random halves, both ways round, patience as "
                             f"params.yaml), mean ± sd over seeds {seeds}; test not read. KD − CE is the paired "
                             "per-seed difference; steps: mean step kept / last step.",
                    "columns": ["lang", "rule", "KD mean ± sd", "CE-only mean ± sd", "KD − CE", "KD steps"],
                    "rows": rows}],
        "notes": [f"best KD mean over languages: {best} ({means[best]:.4f}) against params.yaml's {default_rule} "
                  f"({means[default_rule]:.4f}); largest seed sd {noise:.4f}: chosen {chosen}",
                  "Each half holds 40-65 rows for es, sl and id: a half-sized sample, so absolute figures sit below "
                  "full-validation ones; the rules are compared on the same halves (paired)."],
    }
