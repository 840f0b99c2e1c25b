"""Model cards: rendered from the run's records, limitations read off the figures, the gate's decision included."""

from __future__ import annotations

import pytest

from polydistill.ops.model_card import CardFacts, CardSettings, known_limitations, render_model_card

SETTINGS = CardSettings(small_test_rows=300, max_ece=0.1, segmentation_target=0.9)


def system(macro_f1: float, ece: float = 0.05) -> dict:
    return {"macro_f1": macro_f1, "macro_f1_ci_low": macro_f1 - 0.04, "macro_f1_ci_high": macro_f1 + 0.04,
            "accuracy": macro_f1 + 0.01, "macro_recall": macro_f1 - 0.01, "ece": ece, "label_names": ["neg", "pos"],
            "per_class": {"neg": {"recall": 0.61}, "pos": {"recall": 0.93}}}


def facts(kd: float = 0.85, tfidf: float = 0.80, test_rows: int = 1000, ece: float = 0.05,
          segmented: float = 0.95) -> CardFacts:
    evaluation = {
        "test_rows": test_rows, "runtime": "torch_int8",
        "systems": {"kd_student": system(kd, ece), "teacher": system(0.88), "teacher_transformer": system(0.87),
                    "ce_student": system(0.82), "tfidf": system(tfidf)},
        "paired": {"retention": {"ratio": kd / 0.88, "ratio_ci_low": 0.93, "ratio_ci_high": 0.99},
                   "kd_gain": {"difference": kd - 0.82, "difference_ci_low": 0.01, "difference_ci_high": 0.05}},
        "efficiency": {"teacher": {"num_layers": 12, "hidden_size": 384, "total_params": 117_654_530},
                       "kd_student": {"total_params": 5_755_970, "weights_mb": 23.0, "num_layers": 4,
                                      "hidden_size": 192, "vocab_size": 20000, "throughput_texts_per_s": 800.0,
                                      "throughput_batch": 32, "latency_ms_median": 4.6}},
        "summary": {"compression": 20.4, "speedup": 10.6, "latency_speedup": 6.8, "segmented_as_teacher": segmented},
    }
    distilled = {"mode": "shared", "kd_settings": {"alpha": 0.7, "temperature": 2.0},
                 "student": {"kind": "narrow", "layers": [0, 4, 8, 11]},
                 "kd": {"best_validation_macro_f1": 0.86, "best_step": 200, "steps": 315,
                        "selected_by": "macro_f1"},
                 "transfer_rows": {"labelled": 900, "unlabelled": 300}}
    sources = [{"package": "evomsa", "version": "2.0.14", "sha256": "948955df920578c6", "licence": "Apache-2.0",
                "language": "es", "domain": "Spanish tweets"}]
    return CardFacts("es", "polydistill-student-es", "4", evaluation, distilled,
                     {"neg": {"train": 300, "validation": 40, "test": 80}, "pos": {"train": 255, "validation": 40,
                                                                                   "test": 81}},
                     sources, {"data_sha256": "abcdef1234567890", "git_commit": "1c4149b"})


def test_the_card_states_the_measured_figures_and_the_gate() -> None:
    card = render_model_card(facts(), SETTINGS, {"promoted": True, "version": "4", "champion": "4",
                                                 "reasons": ["PASS: validation macro-F1 0.861 ≥ 0.5"]})
    for expected in ("# polydistill-student-es version 4", "Spanish tweets", "`evomsa` 2.0.14",
                     "555 train, 80 validation, 161 test", "| **this student** | 0.850 (0.810-0.890)",
                     "| TF-IDF baseline | 0.800", "Retention of the teacher's macro-F1: 96.6%", "5,755,970 parameters",
                     "α 0.7, temperature 2.0", "kept step 200 of 315 (by macro_f1), validation macro-F1 0.860",
                     "**promoted to champion**", "PASS: validation macro-F1 0.861",
                     "data_sha256 `abcdef123456`"):
        assert expected in card, expected
    assert "Not run yet" in render_model_card(facts(), SETTINGS, None)


@pytest.mark.parametrize(("champion", "verdict"), [("4", "**champion (promoted by an earlier run of the gate)**"),
                                                    ("3", "**refused: stays challenger**")])
def test_a_version_the_gate_did_not_promote_this_time_says_whether_it_is_champion(champion: str,
                                                                                  verdict: str) -> None:
    """A register rerun reuses version 4: the gate does not promote it again, and its card must not call it refused
    when it is the champion."""
    decision = {"promoted": False, "version": "4", "champion": champion,
                "reasons": ["version 4 is already champion" if champion == "4" else "FAIL: below the champion"]}
    assert verdict in render_model_card(facts(), SETTINGS, decision)


@pytest.mark.parametrize(("changes", "warning"), [
    ({"tfidf": 0.90}, "The TF-IDF baseline scores higher on test (0.900 vs 0.850)"),
    ({"test_rows": 160}, "Small test split (160 texts)"),
    ({"ece": 0.2}, "poorly calibrated (ECE 0.200)"),
    ({"segmented": 0.44}, "segments only 44% of test texts"),
])
def test_each_limitation_appears_exactly_when_its_figure_calls_for_it(changes: dict, warning: str) -> None:
    assert not any(warning in item for item in known_limitations(facts(), SETTINGS))
    assert any(warning in item for item in known_limitations(facts(**changes), SETTINGS))


def test_the_domain_confound_and_the_weakest_class_are_always_stated() -> None:
    items = known_limitations(facts(), SETTINGS)
    assert items[0].startswith("Only one domain per language") and "Weakest class: `neg` (recall 0.610)." in items
