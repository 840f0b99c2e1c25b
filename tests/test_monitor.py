"""Monitoring of served traffic: the inference log (WAL, concurrent writers), text features, drift tests and the
report. Thresholds come from params.yaml `monitor`."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import wait_for_deployment
from harness import REPO_ROOT
from prefect.settings import PREFECT_API_URL, temporary_settings
from race_workers import append_to_inference_log, open_fresh_logs
from transformers import AutoTokenizer

from polydistill.config import load_params
from polydistill.ops.inference_log import (
    FEATURES,
    InferenceLog,
    language_confidences,
    read_log,
    text_features,
    unknown_shares,
)
from polydistill.ops.monitor import MonitorSettings, monitor_traffic, served_versions
from polydistill.ops.monitor_report import write_report
from polydistill.ops.router import language_detector
from tasks.monitor import trigger_pipeline_task

LABELS = ["negative", "positive"]
LANGUAGES = ["en", "zh"]  # the fixture languages with enough held-out rows for min_rows
DETECTOR = language_detector(["en", "sl", "zh"])


@pytest.fixture(scope="module")
def settings() -> MonitorSettings:
    return MonitorSettings.from_params(load_params(REPO_ROOT / "params.yaml")["monitor"])


@pytest.fixture(scope="module")
def halves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixture corpus split in two at random: a training split and held-out rows."""
    corpus = pd.read_json(REPO_ROOT / "tests/fixtures/corpus.jsonl", lines=True)
    held_out = np.random.default_rng(0).random(len(corpus)) < 0.5
    return corpus[~held_out].reset_index(drop=True), corpus[held_out].reset_index(drop=True)


@pytest.fixture(scope="module")
def tokenizers(tiny_students: dict[str, Path]) -> dict[str, object]:
    return {lang: AutoTokenizer.from_pretrained(tiny_students["en"]) for lang in LANGUAGES}


def log_answers(path: Path, rows: pd.DataFrame, tokenizers: dict, keep_text: bool = False) -> pd.DataFrame:
    """Record rows (text, lang, label) as the router's answers, as one request per language; read the log back."""
    log = InferenceLog(path, keep_text)
    for lang, group in rows.groupby("lang"):
        answers = [{"lang": lang, "status": "ok", "label": label, "score": 0.8, "student_version": "3"}
                   for label in group["label"]]
        log.record(group["text"].tolist(), answers, tokenizers, DETECTOR)
    return read_log(path)


def test_text_features_count_scripts_unknown_pieces_and_language_confidence(tokenizers: dict) -> None:
    features = text_features("Hotel 很好!", unknown_share=None, lang_confidence=None)
    assert features == {"chars": 9, "latin_share": 5 / 7, "han_share": 2 / 7, "other_script_share": 0.0,
                        "unknown_share": None, "lang_confidence": None}
    assert text_features("123 !", None, None)["latin_share"] == 0.0
    assert text_features("Фильм", None, None)["other_script_share"] == 1.0
    seen, unseen = unknown_shares(tokenizers["en"], ["The film was good", "Ѐѓї ԱԲԳ ⴰⴱⴳ"])
    assert seen == 0.0 and unseen >= 0.5  # every letter run unknown; the word-boundary pieces are known
    english, slovene = language_confidences(DETECTOR, ["The film was really good, I loved it.",
                                                       "Film je bil res dober, priporočam ga."], "sl")
    assert english < 0.1 < 0.9 < slovene


def test_the_log_keeps_a_hash_and_text_only_when_allowed(tmp_path: Path, halves: tuple, tokenizers: dict) -> None:
    rows = halves[1][halves[1]["lang"] == "en"].head(5)
    hashed = log_answers(tmp_path / "hashed.db", rows, tokenizers)
    assert hashed["text"].isna().all() and hashed["text_sha256"].str.len().eq(64).all()
    assert set(FEATURES) <= set(hashed.columns) and hashed["request_id"].nunique() == 1
    kept = log_answers(tmp_path / "kept.db", rows, tokenizers, keep_text=True)
    assert kept["text"].tolist() == rows["text"].tolist()
    assert served_versions(kept) == {"en": "3"}


def run_at_once(target: Callable[..., None], arguments: list[tuple]) -> None:
    """One spawned process per argument tuple, each given a barrier shared by all as its last argument; every
    process must exit cleanly."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(arguments), timeout=120)
    processes = [context.Process(target=target, args=(*values, barrier)) for values in arguments]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
        assert process.exitcode == 0


def test_concurrent_server_workers_all_land_in_the_wal_log(tmp_path: Path) -> None:
    path, workers, requests, rows = tmp_path / "inference.db", 4, 25, 8
    run_at_once(append_to_inference_log, [(str(path), worker, requests, rows) for worker in range(workers)])
    assert len(read_log(path)) == workers * requests * rows
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_workers_that_open_a_new_log_at_once_all_get_it(tmp_path: Path) -> None:
    """The WAL switch on a new file used to fail one in five such races with "database is locked"."""
    logs = 40
    run_at_once(open_fresh_logs, [(str(tmp_path), logs)] * 4)
    modes = {sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] for path in tmp_path.glob("*.db")}
    assert len(list(tmp_path.glob("*.db"))) == logs and modes == {"wal"}


def test_held_out_rows_are_not_flagged_over_random_draws(tmp_path: Path, halves: tuple, tokenizers: dict,
                                                         settings: MonitorSettings) -> None:
    train, held_out = halves
    for draw in range(10):
        rows = pd.concat([group.sample(n=settings.min_rows + 10, random_state=draw)
                          for _, group in held_out[held_out["lang"].isin(LANGUAGES)].groupby("lang")])
        log = log_answers(tmp_path / f"draw{draw}.db", rows, tokenizers)
        report = monitor_traffic(log, train, tokenizers, DETECTOR, None, LANGUAGES, LABELS, settings)
        assert all(report["languages"][lang]["tested"] for lang in LANGUAGES)
        assert report["flagged_languages"] == [], (draw, {lang: entry["reasons"]
                                                          for lang, entry in report["languages"].items()})
        assert not report["trigger"]


def test_a_drifted_stream_is_flagged_and_triggers(tmp_path: Path, halves: tuple, tokenizers: dict,
                                                  settings: MonitorSettings) -> None:
    train, held_out = halves
    english = held_out[held_out["lang"] == "en"].head(settings.min_rows + 10)
    chinese_as_english = held_out[held_out["lang"] == "zh"].head(settings.min_rows + 10).assign(lang="en")
    drifted = pd.concat([english, chinese_as_english])  # half the "en" traffic is Chinese text
    log = log_answers(tmp_path / "drifted.db", drifted, tokenizers)
    report = monitor_traffic(log, train, tokenizers, DETECTOR, None, LANGUAGES, LABELS, settings)
    entry = report["languages"]["en"]
    assert entry["drift"]["han_share"]["drifted"] and entry["drift"]["latin_share"]["drifted"]
    assert report["flagged_languages"] == ["en"] and report["trigger"] == (settings.trigger_languages == 1)
    assert report["languages"]["zh"] == {"rows": 0, "tested": False, "flagged": False, "reasons": ["no logged rows"]}


def test_text_sent_with_a_wrong_lang_is_flagged(tmp_path: Path, halves: tuple, tokenizers: dict,
                                                settings: MonitorSettings) -> None:
    train, held_out = halves
    english_as_slovene = held_out[held_out["lang"] == "en"].head(settings.min_rows + 10).assign(lang="sl")
    log = log_answers(tmp_path / "wrong-lang.db", english_as_slovene, tokenizers | {"sl": tokenizers["en"]})
    report = monitor_traffic(log, train, tokenizers | {"sl": tokenizers["en"]}, DETECTOR, None, ["en", "sl", "zh"],
                             LABELS, settings)
    drift = report["languages"]["sl"]["drift"]
    assert drift["lang_confidence"]["drifted"] and drift["lang_confidence"]["served_mean"] < 0.2
    assert not drift["latin_share"]["drifted"] and not drift["han_share"]["drifted"]
    assert report["flagged_languages"] == ["sl"]


def test_a_label_shift_is_flagged_and_too_few_rows_are_not_tested(tmp_path: Path, halves: tuple, tokenizers: dict,
                                                                  settings: MonitorSettings) -> None:
    train, held_out = halves
    english = held_out[held_out["lang"] == "en"].head(settings.min_rows + 10).assign(label="positive")
    few = held_out[held_out["lang"] == "zh"].head(settings.min_rows - 1)
    log = log_answers(tmp_path / "shift.db", pd.concat([english, few]), tokenizers)
    report = monitor_traffic(log, train, tokenizers, DETECTOR, None, LANGUAGES, LABELS, settings)
    labels = report["languages"]["en"]["labels"]
    assert labels["drifted"] and labels["served"]["positive"] == 1.0
    assert not any(result["drifted"] for result in report["languages"]["en"]["drift"].values())
    assert not report["languages"]["zh"]["tested"] and "fewer than min_rows" in report["languages"]["zh"]["reasons"][0]


def test_shadow_teacher_disagreement_is_measured_on_logged_text(tmp_path: Path, halves: tuple, tokenizers: dict,
                                                                settings: MonitorSettings) -> None:
    train, held_out = halves
    rows = held_out[held_out["lang"] == "en"].head(settings.min_rows + 10)

    def contrary_teacher(lang: str, texts: list[str]) -> np.ndarray:
        """Gives every logged text the other label than the student did."""
        served = dict(zip(rows["text"], rows["label"], strict=True))
        return np.array([[0.0, 1.0] if served[text] == "negative" else [1.0, 0.0] for text in texts])

    hashed = monitor_traffic(log_answers(tmp_path / "hashed.db", rows, tokenizers), train, tokenizers, DETECTOR,
                             contrary_teacher, LANGUAGES, LABELS, settings)
    assert hashed["languages"]["en"]["shadow"]["disagreement"] is None
    report = monitor_traffic(log_answers(tmp_path / "kept.db", rows, tokenizers, keep_text=True), train, tokenizers,
                             DETECTOR, contrary_teacher, LANGUAGES, LABELS, settings)
    assert report["languages"]["en"]["shadow"] == {"rows": len(rows), "disagreement": 1.0}
    assert report["flagged_languages"] == ["en"]
    html, json_file = write_report({**report, "window": "the whole log"}, tmp_path / "reports/monitor.html")
    assert "FLAGGED" in html.read_text() and json_file.exists()


def test_a_trigger_without_the_served_deployment_says_how_to_serve_it(prefect_server: str) -> None:
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}), \
            pytest.raises(LookupError, match=f"no deployment polydistill-pipeline/nowhere on the Prefect API "
                                             f"\\({prefect_server}\\): serve it with `polydistill schedule`"):
        trigger_pipeline_task.fn("polydistill-pipeline/nowhere", ["en"])


@pytest.mark.slow
def test_the_monitor_is_served_as_a_deployment_with_its_cron(tmp_path: Path, prefect_server: str) -> None:
    schedule = load_params(REPO_ROOT / "params.yaml")["monitor"]["schedule"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "flows.monitor", "serve"], cwd=REPO_ROOT,
                                  env={**os.environ, "POLYDISTILL_ROOT": str(REPO_ROOT),
                                       "PREFECT_API_URL": prefect_server},
                                  stdout=log, stderr=log, start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            deployment = asyncio.run(wait_for_deployment(f"monitor/{schedule['deployment']}", server, log_path))
        assert deployment["crons"] == [schedule["cron"]]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
