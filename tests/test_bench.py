"""The bench package's pure helpers: summaries, ratios, targets, interleaving, FLOP formula, layers, rendering."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.__main__ import parse_arguments  # noqa: E402
from bench.ablations import paired_mean_difference, verdict  # noqa: E402
from bench.adaptive import adaptive_choice, choose  # noqa: E402
from bench.common import (  # noqa: E402
    describe_cpu,
    format_summary,
    interleave,
    load_project_params,
    paired_ratios,
    summarize,
    target,
)
from bench.kd_weight import VARIANTS as KD_WEIGHT_VARIANTS  # noqa: E402
from bench.loop import training_flops  # noqa: E402
from bench.quality import language_row, with_interval  # noqa: E402
from bench.report import markdown_table, render_benchmarks, render_result  # noqa: E402
from bench.selection import held_out_scores, replay  # noqa: E402
from bench.speed import identification  # noqa: E402
from bench.teacher_epochs import needed_retention, preferred_on_validation  # noqa: E402
from bench.variants import default_variant, summarise, with_overrides  # noqa: E402
from bench.vocabulary_cap import smallest_cap  # noqa: E402

MACHINE = {"cpu_model": "Test CPU", "cores": 2, "torch_threads": 2, "load_average_1m": 0.5, "python": "3.11",
           "torch": "2.13.0", "transformers": "5.24.0"}


def test_summary_is_median_min_max() -> None:
    assert summarize([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    with pytest.raises(ValueError):
        summarize([])


def test_ratios_pair_repeats_before_summarising() -> None:
    ratios = paired_ratios([10.0, 12.0, 9.0], [2.0, 3.0, 1.0])
    assert ratios == {"median": 5.0, "min": 4.0, "max": 9.0, "n": 3}
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def test_format_summary_shows_the_range_only_for_repeats() -> None:
    assert format_summary({"median": 5.312, "min": 5.02, "max": 5.6, "n": 3}, ".2f", "x") == "5.31x (5.02–5.60)"
    assert format_summary({"median": 5.312, "min": 5.312, "max": 5.312, "n": 1}, ".1f") == "5.3"


def test_target_margin_sign_follows_the_direction() -> None:
    met = target("a/b", 6.0, 5.0)
    assert met["meets"] and met["margin"] == 1.0 and met["operator"] == ">="
    missed = target("latency", 12.0, 10.0, higher_is_better=False)
    assert not missed["meets"] and missed["margin"] == -2.0 and missed["operator"] == "<="


def test_interleave_rotates_the_order_each_repeat() -> None:
    calls: list[str] = []

    def contender(name: str):
        def call() -> dict:
            calls.append(name)
            return {"index": len(calls)}
        return call

    runs = interleave({name: contender(name) for name in "abc"}, repeats=3)
    assert calls == list("abc" "bca" "cab")
    assert [entry["index"] for entry in runs["a"]] == [1, 6, 8]


def test_training_flops_follow_the_stated_formula() -> None:
    # 6·N·L + 12·n_layers·d·L²
    assert training_flops(1000, 2, 8, 10) == 6 * 1000 * 10 + 12 * 2 * 8 * 100
    assert training_flops(7_000_000, 4, 384, 32) == pytest.approx(6 * 7e6 * 32 + 12 * 4 * 384 * 32**2)
    assert training_flops(1000, 2, 8, 20) > 2 * training_flops(1000, 2, 8, 10)  # attention grows with L²


def test_the_adaptive_choice_is_the_best_validation_mean_with_ties_to_the_default() -> None:
    default, other = (0.7, 2.0), (0.5, 2.0)
    assert choose({default: [0.5, 1.0], other: [0.75, 0.75]}, default) == default  # tie on the mean
    assert choose({default: [0.80, 0.80], other: [0.84, 0.80]}, default) == other


def test_validation_labels_can_change_the_adaptive_choice_and_test_labels_never_do() -> None:
    """Two grid points, two seeds: A is right on validation rows 0-9, B on 10-19; on test the reverse."""
    rng = np.random.default_rng(0)
    gold = {"validation": np.array([0, 1] * 10), "test": np.array([0, 1] * 10)}

    def probabilities(correct_rows: slice, labels: np.ndarray) -> np.ndarray:
        predicted = 1 - labels
        predicted[correct_rows] = labels[correct_rows]
        return np.eye(2)[predicted]

    point_a, point_b = (0.7, 2.0), (0.9, 4.0)
    predictions = {
        point_a: [{"validation": probabilities(slice(0, 12), gold["validation"]),
                   "test": probabilities(slice(10, 20), gold["test"])}] * 2,
        point_b: [{"validation": probabilities(slice(10, 20), gold["validation"]),
                   "test": probabilities(slice(0, 20), gold["test"])}] * 2,
    }
    assert adaptive_choice(predictions, gold, point_a)["chosen"] == point_a
    for _ in range(20):  # any test labels: the choice stays
        shuffled = {**gold, "test": rng.integers(0, 2, size=20)}
        assert adaptive_choice(predictions, shuffled, point_a)["chosen"] == point_a
    flipped = gold["validation"].copy()
    flipped[:12] = 1 - flipped[:12]  # validation labels that A now gets wrong
    assert adaptive_choice(predictions, {**gold, "validation": flipped}, point_a)["chosen"] == point_b


def test_variants_override_dotted_settings_and_exactly_one_matches_params() -> None:
    settings = {"alpha": 0.7, "student": {"vocabulary": {"word_prior_tokens": 100}}}
    changed = with_overrides(settings, {"student.vocabulary.word_prior_tokens": 0, "alpha": 0.5})
    assert changed == {"alpha": 0.5, "student": {"vocabulary": {"word_prior_tokens": 0}}}
    assert settings["student"]["vocabulary"]["word_prior_tokens"] == 100  # a copy
    variants = {"on": {"student.vocabulary.word_prior_tokens": 100}, "off": {"student.vocabulary.word_prior_tokens": 0}}
    assert default_variant(variants, settings) == "on"
    with pytest.raises(ValueError, match="exactly one"):
        default_variant({"a": {"alpha": 0.1}, "b": {"alpha": 0.2}}, settings)


def seed(kd_validation: float, test: float) -> dict:
    """One variant seed's scores as bench.variants.seed_scores returns them."""
    return {"kd": {"validation": kd_validation, "test": test}, "ce": {"validation": 0.5, "test": test},
            "segmented_as_teacher": 0.5, "kd_training": {"seconds": 30.0, "steps": 100}}


def test_a_variant_is_chosen_on_kd_validation_only() -> None:
    config = {"seeds": 2}
    results = {"es": {"off": [seed(0.70, 0.9), seed(0.72, 0.9)], "on": [seed(0.74, 0.1), seed(0.75, 0.1)]}}
    summary = summarise("x", "x", results, "off", config)
    assert summary["chosen"] == {"es": "on"} and summary["tables"][0]["rows"][1][8] == "30 s (100)"  # +0.035, sd 0.014
    results["es"]["on"] = [seed(0.70, 0.99), seed(0.72, 0.99)]  # a tie on validation, test far better
    summary = summarise("x", "x", results, "off", config)
    assert summary["chosen"] == {"es": "off"} and summary["tables"][0]["rows"][1][6].startswith("+0.090")
    results["es"]["on"] = [seed(0.69, 0.9), seed(0.75, 0.9)]  # +0.010, under its seed sd of 0.042: noise
    assert summarise("x", "x", results, "off", config)["chosen"] == {"es": "off"}
    one_seed = {"es": {variant: seeds[:1] for variant, seeds in results["es"].items()}}
    summary = summarise("x", "x", one_seed, "off", {"seeds": 1})
    assert summary["chosen"] == {"es": "off"} and "one seed" in summary["notes"][0]  # 0.69 < 0.70


def test_a_loss_term_is_rerun_over_more_seeds_only_where_one_seed_left_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.variants as variants

    validation = {1: {"es": {"off": [0.70], "on": [0.76]}, "id": {"off": [0.80], "on": [0.83]},
                      "sl": {"off": [0.80], "on": [0.78]}},
                  3: {"es": {"off": [0.70, 0.72, 0.74], "on": [0.76, 0.75, 0.77]},  # +0.04, sd 0.02: holds
                      "id": {"off": [0.80, 0.84, 0.82], "on": [0.83, 0.81, 0.82]}}}  # +0.00: noise
    calls = []

    def scores(name: str, variant_overrides: dict, languages: list[str], seeds: int, epochs: int | None) -> dict:
        calls.append((languages, seeds))
        return {lang: {variant: [seed(value, 0.8) for value in values]
                       for variant, values in validation[seeds][lang].items()} for lang in languages}

    monkeypatch.setattr(variants, "collect", scores)
    monkeypatch.setattr(variants, "load_project_params",
                        lambda: {"distill": {"weight": 0.0}, "data": {"languages": ["es", "id", "sl"]}})
    summary = variants.compare_loss_term("x", "x", {"off": {"weight": 0.0}, "on": {"weight": 1.0}}, quick=False)
    assert calls == [(["es", "id", "sl"], 1), (["es", "id"], 3)]
    assert summary["chosen"] == {"es": "on", "id": "off", "sl": "off"}
    assert "3 on es, id" in summary["tables"][0]["title"] and "3 seeds" in summary["notes"][0]
    assert summary["tables"][0]["rows"][0][2] == "0.720 ± 0.020"  # es's row holds the three seeds


def test_quality_row_formats_intervals() -> None:
    system = {"macro_f1": 0.8, "macro_f1_ci_low": 0.75, "macro_f1_ci_high": 0.85}
    evaluation = {"lang": "sl", "test_rows": 230,
                  "systems": {name: system for name in ("teacher", "kd_student", "ce_student", "tfidf")},
                  "paired": {"retention": {"ratio": 0.975, "ratio_ci_low": 0.95, "ratio_ci_high": 1.0},
                             "kd_gain": {"difference": 0.012, "difference_ci_low": -0.01, "difference_ci_high": 0.03}}}
    row = language_row(evaluation)
    assert row[:3] == ["sl", "230", "0.800 [0.750, 0.850]"]
    assert row[-2:] == ["97.5% [95.0%, 100.0%]", "+0.012 [-0.010, +0.030]"]
    assert with_interval(1, 0, 2, ".0f") == "1 [0, 2]"


def test_markdown_table_escapes_pipes_and_marks_missing_cells() -> None:
    table = markdown_table(["a", "b"], [["x|y", None]])
    assert table == "| a | b |\n|---|---|\n| x\\|y | – |\n"


def result(name: str, value: float, threshold: float) -> dict:
    return {"name": name, "title": f"{name} title", "mode": "quick", "command": "python -m bench --quick",
            "seconds": 12.0, "finished": "2026-01-01 00:00 UTC",
            "tables": [{"title": "numbers", "columns": ["k", "v"], "rows": [["x", value]]}],
            "targets": [target(f"{name} ratio", value, threshold, unit="x")], "notes": ["a note"],
            "machine": {**MACHINE, "cpu_model": "Other CPU"}}


def test_benchmarks_markdown_has_machine_command_targets_and_sections_in_order() -> None:
    text = render_benchmarks([result("speed", 8.0, 10.0), result("loop", 6.0, 5.0)], MACHINE,
                             "python -m bench --quick")
    assert "Test CPU, 2 cores, torch threads 2" in text and "`python -m bench --quick`" in text
    assert "finished 2026-01-01 00:00 UTC on Other CPU after 12 s." in text  # each section names its machine
    assert "| loop title | loop ratio >= 5x | 6x | meets | +1x |" in text
    assert "| speed title | speed ratio >= 10x | 8x | **misses** | -2x |" in text
    assert text.index("## loop title") < text.index("## speed title")
    assert "- speed ratio: 8x >= 10x — **misses** (margin -2x)" in text


def test_skipped_result_renders_its_reason() -> None:
    skipped = {"name": "quality", "title": "3. KD gain", "skipped": "no metrics yet", "mode": "quick"}
    assert "Skipped: no metrics yet" in render_result(skipped)
    assert "== 3. KD gain ==" in render_result(skipped, markdown=False)


def test_only_selects_known_benchmarks() -> None:
    assert parse_arguments(["--quick", "--only", "loop,speed"]).selected == ["loop", "speed"]
    assert parse_arguments([]).selected == ["loop", "speed", "quality", "sampling", "reruns", "ablations", "seeds",
                                           "transfer_sources", "adaptive", "scaling", "class_weights",
                                           "vocabulary", "hidden", "kd_weight", "steps", "selection", "attention",
                                           "vocabulary_cap", "teacher_epochs",
                                           "teacher_context"]
    with pytest.raises(SystemExit):
        parse_arguments(["--only", "nonsense"])


def test_transfer_source_configurations_keep_the_size_and_drop_one_source_at_a_time() -> None:
    import pandas as pd

    from bench.transfer_sources import CONFIGURATIONS, configuration_sets

    sources = ["labelled"] * 4 + ["unlabelled:news"] * 3 + ["augmented"] * 2
    transfer = pd.DataFrame({"id": [f"r{i}" for i in range(9)], "source": sources, "lang": "es"})
    labelled_only = pd.DataFrame({"id": [f"r{i % 4}" for i in range(9)], "source": "labelled", "lang": "es"})
    sets = configuration_sets(transfer, labelled_only, seed=0)
    assert list(sets) == list(CONFIGURATIONS) and all(len(frame) == 9 for frame in sets.values())
    assert set(sets[CONFIGURATIONS[0]]["source"]) == {"labelled"}
    plus_unlabelled = sets[CONFIGURATIONS[1]]["source"].value_counts().to_dict()
    assert plus_unlabelled == {"labelled": 6, "unlabelled:news": 3}
    assert sets[CONFIGURATIONS[2]]["source"].tolist() == sources


def test_a_transfer_set_is_chosen_on_kd_validation_over_seeds_and_test_never_moves_it() -> None:
    from bench.transfer_sources import CONFIGURATIONS, summarise

    def entry(validation: float, test: float) -> dict:
        return {"rows": {"labelled": 3}, "vocab_size": 10, "segmented_as_teacher": 0.5, "kd_macro_f1": test,
                "ce_macro_f1": 0.7, "kd_validation_macro_f1": validation}

    labelled, unlabelled, default = CONFIGURATIONS
    results = {"es": {labelled: [entry(0.80, 0.1), entry(0.82, 0.1)], unlabelled: [entry(0.70, 0.9), entry(0.71, 0.9)],
                      default: [entry(0.75, 0.5), entry(0.76, 0.5)]}}
    summary = summarise(results, seeds=2)
    assert summary["chosen"] == {"es": labelled}  # +0.055 on validation, over one sd (0.014)
    assert summary["tables"][0]["rows"][0][7:11] == ["0.810 ± 0.014", "0.100 ± 0.000", "0.700 ± 0.000", "-0.600"]
    results["es"][labelled] = [entry(0.74, 0.1), entry(0.79, 0.1)]  # +0.010, under its sd of 0.035: noise
    assert summarise(results, seeds=2)["chosen"] == {"es": default}


MEASURED_STAGES = {"fetch": 2, "prepare": 3, "validate": 4, "balance": 1, "unlabelled": 4, "transfer": 12,
                   "pretrained": 7, "baseline": 93, "train_teacher": 985, "soft_labels": 479, "evaluate": 292,
                   "soft_labels:languages": 451, "evaluate:languages": 160, "register": 56,
                   **{f"distill@{lang}": seconds
                      for lang, seconds in zip("abcde", (274, 84, 131, 134, 363), strict=True)}}


@pytest.mark.parametrize("languages", [5, 20, 100])
def test_the_scaling_projection_never_slows_with_workers_and_keeps_serial_stages_serial(languages: int) -> None:
    from bench.scaling import projection

    def project(workers: int) -> dict:
        return projection(MEASURED_STAGES, languages, workers, teacher_efficiency=0.9, teacher_steps=750,
                          gradient_bytes=8.7e7, global_batch=16)

    walls = [project(workers)["wall"] for workers in (1, 2, 8, 32, 128)]
    assert walls == sorted(walls, reverse=True)
    serial_floor = languages / 5 * (93 + 28 + 132 + 56)  # baseline, soft labels' and evaluate's serial parts, register
    assert walls[-1] > serial_floor
    one = project(1)
    assert one["wall"] == pytest.approx(languages / 5 * (33 + 93 + 479 + 292 + 56 + 986) + 985)
    assert one["cpu"] == pytest.approx(2 * one["wall"])  # one 2-core worker, busy throughout


def test_identification_shares_count_each_groups_own_language_and_refusals() -> None:
    groups = {"es": ["Qué día tan bonito, me encanta!", "No me gustó nada, muy mal servicio."],
              "de/nl (not served)": ["Der Film war langweilig und viel zu lang."]}
    found = identification(groups, ["en", "es", "id", "sl", "zh"], {"foreign_confidence": 0.5,
                                                                     "foreign_confirmation": 0.9})["groups"]
    assert found["es"] == {"texts": 2, "routed_to_own": 1.0, "refused": 0.0, "screen_alone_refused": 0.5}
    assert found["de/nl (not served)"] == {"texts": 1, "routed_to_own": 0.0, "refused": 1.0,
                                           "screen_alone_refused": 1.0}


def test_the_kd_weight_variants_set_only_zh_alpha_and_one_is_params() -> None:
    distill = load_project_params()["distill"]
    assert default_variant(KD_WEIGHT_VARIANTS, distill) == f"α {distill['per_language']['zh']['alpha']}"
    for overrides in KD_WEIGHT_VARIANTS.values():  # zh's alpha and nothing else: its temperature stays
        changed = with_overrides(distill, overrides)
        changed["per_language"]["zh"]["alpha"] = distill["per_language"]["zh"]["alpha"]
        assert changed == distill


@pytest.mark.parametrize("rule", ["macro_f1", "log_loss", "last"])
def test_a_replayed_rule_keeps_the_step_training_kept(tmp_path: Path, rule: str) -> None:
    from test_training import PAD, settings, tiny_model, toy_set

    from polydistill.model.training import train_classifier, validation_logits

    validation = toy_set(61, 2)
    validation.langs[:] = "en"  # the bench replays one language's curve
    state = train_classifier(tiny_model(), toy_set(160, 1), validation,
                             settings(eval_every=3, patience=2, select_by=rule), tmp_path, PAD)
    curve, gold, _ = validation_logits(tmp_path)
    assert replay(rule, curve, gold, np.arange(len(gold)), patience=2) == state.best_step


def test_held_out_halves_score_each_rule_on_rows_it_did_not_choose_on() -> None:
    gold = np.array([0, 1] * 20)
    right = np.stack([1.0 - gold, gold.astype(float)], axis=1)
    curve = {100: right, 200: -right, 300: right * 0.1}  # step 200 is always wrong
    scores = held_out_scores(curve, gold, patience=4, halves=5, seed=0)
    assert scores["macro_f1"]["held_out_macro_f1"] == 1.0 and scores["macro_f1"]["mean_step"] == 100
    assert scores["log_loss"]["mean_step"] == 100, "confident and right beats unsure and right"
    assert scores["last"]["mean_step"] == 300 and scores["last"]["last_step"] == 300


def test_the_smallest_cap_for_the_segmentation_target_reads_validation_only() -> None:
    def entry(validation: float, test: float) -> dict[str, dict[str, float]]:
        return {"validation": {"identical_share": validation}, "test": {"identical_share": test}}

    caps = {40_000: entry(0.92, 0.85), 10_000: entry(0.50, 0.95), 20_000: entry(0.89, 0.91), 80_000: entry(1.0, 1.0)}
    assert smallest_cap(caps, 0.9) == 40_000
    assert smallest_cap(caps, 0.5) == 10_000
    assert smallest_cap({cap: entry(0.6, 0.99) for cap in caps}, 0.9) is None


def test_the_longer_teacher_is_kept_by_validation_only() -> None:
    def scores(validation: float, test: float) -> dict[str, float]:
        return {"ensemble_validation": validation, "ensemble_test": test}

    results = {"es": {"1 epoch": scores(0.80, 0.70), "2 epochs": scores(0.78, 0.90)},
               "id": {"1 epoch": scores(0.86, 0.80), "2 epochs": scores(0.87, 0.95)}}
    assert preferred_on_validation(results, ["1 epoch", "2 epochs"]) == "1 epoch"  # 0.830 against 0.825
    results["es"]["2 epochs"]["ensemble_validation"] = 0.80
    assert preferred_on_validation(results, ["1 epoch", "2 epochs"]) == "2 epochs"
    assert needed_retention(0.876, 0.879) == pytest.approx(0.9966, abs=1e-4)


def test_shapes_are_compared_on_the_same_resampled_rows_per_language() -> None:
    rng = np.random.default_rng(0)
    gold = {"es": rng.integers(0, 2, 60), "id": rng.integers(0, 2, 90)}
    noisy = {lang: np.where(rng.random(len(labels)) < 0.3, 1 - labels, labels) for lang, labels in gold.items()}
    worse = {lang: np.where(rng.random(len(labels)) < 0.6, 1 - labels, labels) for lang, labels in gold.items()}

    def entries(predicted: dict[str, np.ndarray]) -> dict[str, list[dict]]:
        return {lang: [{"test_predictions": {"onnx_int8": values}}] for lang, values in predicted.items()}

    settings = {"bootstrap_samples": 200, "seed": 1, "confidence": 0.95}
    same = paired_mean_difference(gold, entries(noisy), entries(noisy), "onnx_int8", 2, settings)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}, "identical predictions differ on no resample"
    better = paired_mean_difference(gold, entries(noisy), entries(worse), "onnx_int8", 2, settings)
    assert better["low"] <= better["difference"] <= better["high"] and better["low"] > 0
    lost = paired_mean_difference(gold, entries(worse), entries(noisy), "onnx_int8", 2, settings)
    assert verdict(same, 0.01) == "held" and verdict(lost, 0.01) == "lost"
    assert verdict({"difference": -0.005, "low": -0.03, "high": 0.02}, 0.01) == "undecided"


def test_the_cpu_is_named_with_its_widest_vector_extension() -> None:
    first = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512dq\n"
    second = "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    assert describe_cpu(f"{first}\n{second}") == "AMD EPYC (AVX-512)"
    assert describe_cpu("model name\t: AMD EPYC\nflags\t\t: fpu avx avx2\n") == "AMD EPYC (AVX2)"
    assert describe_cpu("model name\t: Old CPU\nflags\t\t: fpu sse2\n") == "Old CPU"
