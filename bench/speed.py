"""Benchmark 2: each language's KD student vs the teacher (size, batch-1 latency, batch-32 throughput), interleaved;
plus the champion router served over HTTP by `mlflow models serve` when the registry has one."""

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

from bench.common import REPO_ROOT, format_summary, interleave, load_project_params, paired_ratios, require, target
from polydistill.model.metrics import measure_speed, model_size

sys.path.insert(0, str(REPO_ROOT / "tests"))
from harness import free_port, wait_for_http  # noqa: E402

SIZES = {
    "quick": {"repeats": 2, "latency_repeats": 10, "throughput_texts": 64, "warmup": 2,
              "http_latency_repeats": 10, "http_batches": 2},
    "full": {"repeats": 3, "latency_repeats": None, "throughput_texts": None, "warmup": None,
             "http_latency_repeats": 50, "http_batches": 8},  # None: params.yaml evaluate's value
}
MIN_PARAM_RATIO = 20.0
MIN_THROUGHPUT_RATIO = 10.0
SERVER_START_SECONDS = 240


def speed_settings(sizes: dict[str, Any], evaluate: dict[str, Any]) -> dict[str, Any]:
    """measure_speed arguments: the bench size where set, else the evaluate stage's setting."""
    keys = ("latency_repeats", "throughput_texts", "warmup")
    return {"threads": evaluate["threads"], "max_length": evaluate["max_length"],
            "throughput_batch": evaluate["throughput_batch"],
            **{key: sizes[key] if sizes[key] is not None else evaluate[key] for key in keys}}


def measure(model_dir: Path, texts: list[str], settings: dict[str, Any]) -> Any:
    def call() -> dict[str, float]:
        return measure_speed(model_dir, texts[:settings["throughput_texts"]], settings["threads"],
                             settings["max_length"], settings["latency_repeats"], settings["throughput_batch"],
                             settings["warmup"])
    return call


def compare_language(lang: str, teacher_dir: Path, student_dir: Path, texts: list[str], settings: dict[str, Any],
                     repeats: int) -> dict[str, Any]:
    """Sizes once, speeds interleaved; ratios teacher/student params and student/teacher throughput."""
    sizes = {"teacher": model_size(teacher_dir), "student": model_size(student_dir)}
    runs = interleave({"teacher": measure(teacher_dir, texts, settings),
                       "student": measure(student_dir, texts, settings)}, repeats)
    throughput = {name: [entry["throughput_texts_per_s"] for entry in runs[name]] for name in runs}
    latency = {name: [entry["latency_ms_median"] for entry in runs[name]] for name in runs}
    return {
        "lang": lang, "sizes": sizes, "runs": runs,
        "param_ratio": sizes["teacher"]["total_params"] / sizes["student"]["total_params"],
        "non_embedding_ratio": sizes["teacher"]["non_embedding_params"] / sizes["student"]["non_embedding_params"],
        "throughput_ratio": paired_ratios(throughput["student"], throughput["teacher"]),
        "latency_ratio": paired_ratios(latency["teacher"], latency["student"]),
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(entry[key] for entry in runs)


def language_rows(comparison: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in ("teacher", "student"):
        size, runs = comparison["sizes"][name], comparison["runs"][name]
        rows.append([comparison["lang"], name, f"{size['total_params']:,}", f"{size['non_embedding_params']:,}",
                     f"{size['weights_mb']:.1f}", f"{median_of(runs, 'latency_ms_median'):.1f}",
                     f"{median_of(runs, 'latency_ms_p90'):.1f}", f"{median_of(runs, 'throughput_texts_per_s'):.0f}"])
    return rows


def champion_router(params: dict[str, Any]) -> tuple[str | None, str]:
    """(tracking URI, why not) of the champion router: URI None with the reason when there is none."""
    from polydistill.ops import registry, tracking

    settings = params["registry"]
    uri = tracking.tracking_uri(REPO_ROOT, settings.get("tracking_uri"))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, f"no MLflow store at {uri} (the register stage has not run)"
    client = tracking.connect(REPO_ROOT, settings)
    name = registry.router_model_name(settings["prefix"])
    if registry.alias_version(client, name, registry.CHAMPION) is None:
        return None, f"the registry has no champion '{name}'"
    return uri, ""


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


def serve_router(uri: str, params: dict[str, Any], port: int, log_path: Path) -> subprocess.Popen:
    """`mlflow models serve` of the champion router on 127.0.0.1:port, once /ping answers."""
    from polydistill.ops import registry

    model = f"models:/{registry.router_model_name(params['registry']['prefix'])}@{registry.CHAMPION}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,  # both: models:/ resolves
                   # against the registry URI, which an earlier mlflow.set_registry_uri may have exported
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model,
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                  env=environment, stdout=log, stderr=log, start_new_session=True)
    if wait_for_http(f"http://127.0.0.1:{port}/ping", SERVER_START_SECONDS, server):
        return server
    if server.poll() is not None:
        raise RuntimeError(f"mlflow models serve exited: {log_path.read_text()[-2000:]}")
    os.killpg(server.pid, signal.SIGTERM)
    raise RuntimeError(f"mlflow models serve did not answer /ping in {SERVER_START_SECONDS} s")


def measure_router(uri: str, params: dict[str, Any], texts: list[str], sizes: dict[str, Any],
                   batch_size: int) -> dict[str, Any]:
    """Batch-1 latency and batch-`batch_size` throughput of the served router (language detection included)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        server = serve_router(uri, params, port, Path(scratch) / "serve.log")
        url = f"http://127.0.0.1:{port}/invocations"
        try:
            post(url, [{"text": texts[0]}])
            latencies = [post(url, [{"text": text}]) * 1000 for text in texts[:sizes["http_latency_repeats"]]]
            batches = [texts[start:start + batch_size] for start in range(0, batch_size * sizes["http_batches"],
                                                                          batch_size)]
            seconds = sum(post(url, [{"text": text} for text in batch]) for batch in batches)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    return {"latency_ms_median": statistics.median(latencies), "latency_ms_p90": float(np.percentile(latencies, 90)),
            "throughput_texts_per_s": sum(len(batch) for batch in batches) / seconds, "batch": batch_size,
            "requests": len(latencies) + len(batches)}


def run(quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    params = load_project_params()
    settings = speed_settings(sizes, params["evaluate"])
    teacher_dir = require(REPO_ROOT / "models/teacher", "make run")
    test = pd.read_parquet(require(REPO_ROOT / "data/prepared/test.parquet", "make run"))
    languages = [lang for lang in params["data"]["languages"]
                 if (REPO_ROOT / f"models/students/{lang}/kd/model.safetensors").exists()]
    if not languages:
        return {"name": "speed", "title": "2. Student vs teacher",
                "skipped": "no models/students/<lang>/kd yet: run `make run` first"}
    comparisons = [compare_language(lang, teacher_dir, REPO_ROOT / f"models/students/{lang}/kd",
                                    test[test["lang"] == lang]["text"].tolist(), settings, sizes["repeats"])
                   for lang in languages]
    rows = [row for comparison in comparisons for row in language_rows(comparison)]
    ratio_rows = [[c["lang"], f"{c['param_ratio']:.1f}x", f"{c['non_embedding_ratio']:.1f}x",
                   format_summary(c["throughput_ratio"], ".2f", "x"), format_summary(c["latency_ratio"], ".2f", "x")]
                  for c in comparisons]
    worst_params = min(comparisons, key=lambda c: c["param_ratio"])
    worst_speed = min(comparisons, key=lambda c: c["throughput_ratio"]["median"])
    result: dict[str, Any] = {
        "name": "speed", "title": "2. Student vs teacher", "config": {**sizes, **settings},
        "comparisons": comparisons,
        "tables": [
            {"title": f"Size and CPU speed ({settings['threads']} threads, tokenisation included, medians of "
                      f"{sizes['repeats']} interleaved repeats; latency over {settings['latency_repeats']} single "
                      f"texts, throughput over {settings['throughput_texts']} test texts at batch "
                      f"{settings['throughput_batch']})",
             "columns": ["lang", "model", "params", "non-embedding params", "weights MB", "latency ms (median)",
                         "latency ms (p90)", "texts/s"], "rows": rows},
            {"title": "Ratios (teacher/student params; student/teacher throughput and latency speed-up, per-repeat "
                      "pairs, median (min–max))",
             "columns": ["lang", "fewer params", "fewer non-embedding params", "throughput ratio",
                         "batch-1 latency speed-up"], "rows": ratio_rows},
        ],
        "targets": [target(f"fewer params, worst language ({worst_params['lang']})", worst_params["param_ratio"],
                           MIN_PARAM_RATIO, unit="x"),
                    target(f"throughput ratio, worst language ({worst_speed['lang']})",
                           worst_speed["throughput_ratio"]["median"], MIN_THROUGHPUT_RATIO, unit="x")],
        "notes": [f"Languages with a KD student: {', '.join(languages)}."],
    }
    add_router(result, params, test, sizes, params["registry"]["router"]["batch_size"])
    return result


def add_router(result: dict[str, Any], params: dict[str, Any], test: pd.DataFrame, sizes: dict[str, Any],
               batch_size: int) -> None:
    """The HTTP figures of the champion router, or a note saying why there are none."""
    uri, reason = champion_router(params)
    if uri is None:
        result["notes"].append(f"Router endpoint not measured: {reason}.")
        return
    texts = test.groupby("lang").head(batch_size * sizes["http_batches"]).sample(frac=1.0, random_state=13)
    router = measure_router(uri, params, texts["text"].tolist(), sizes, batch_size)
    result["router"] = router
    result["tables"].append({
        "title": "Router endpoint over HTTP (mlflow models serve, local env; language detected by lingua; mixed "
                 "languages per request)",
        "columns": ["latency ms batch 1 (median)", "latency ms batch 1 (p90)", f"texts/s at batch {batch_size}",
                    "requests"],
        "rows": [[f"{router['latency_ms_median']:.1f}", f"{router['latency_ms_p90']:.1f}",
                  f"{router['throughput_texts_per_s']:.0f}", router["requests"]]]})
