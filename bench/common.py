"""Shared bench helpers: paths, repeat summaries and ratios, targets, interleaving, machine facts, result files.

A benchmark's `run(quick)` returns a result dict: name, title, tables (title, columns, rows), targets and notes.
`report.py` turns the stored results into BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
THREADS = 2  # the machine the issue targets: 2 CPU cores
# the students' quality targets (issue #10), judged on one run (benchmark 3) and on the seed mean (benchmark 7)
QUALITY_TARGETS = {"kd_over_tfidf_mean": 0.02, "worst_retention": 0.97, "kd_over_ce_mean": 0.02,
                   "segmentation": 0.90}


def load_project_params() -> dict[str, Any]:
    """The project's params.yaml (bench reads the pipeline's settings; it owns only its sizes)."""
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))


def require(path: Path, produced_by: str) -> Path:
    """The path, or a clear error naming the command that makes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `{produced_by}` first")
    return path


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (n included)."""
    if not values:
        raise ValueError("no values to summarize")
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values)),
            "n": len(values)}


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """Summary of per-repeat ratios numerator[i] / denominator[i] (pairs measured in the same repeat)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    return summarize([top / bottom for top, bottom in zip(numerators, denominators, strict=True)])


def format_summary(summary: dict[str, float], spec: str = ".2f", suffix: str = "") -> str:
    """'median (min–max)' of a summary, e.g. '5.31x (5.02–5.60)'."""
    median, low, high = (format(summary[key], spec) for key in ("median", "min", "max"))
    if summary.get("n", 2) < 2:
        return f"{median}{suffix}"
    return f"{median}{suffix} ({low}–{high})"


def target(name: str, value: float, threshold: float, higher_is_better: bool = True, unit: str = "") -> dict:
    """Whether a measured value meets a target, and the margin (value − threshold, sign = better/worse)."""
    margin = value - threshold if higher_is_better else threshold - value
    return {"name": name, "value": value, "threshold": threshold, "operator": ">=" if higher_is_better else "<=",
            "meets": margin >= 0, "margin": margin, "unit": unit}


def interleave(contenders: dict[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, list[dict]]:
    """Run every contender once per repeat, rotating the order each repeat; each call returns its measurements."""
    names = list(contenders)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(contenders[name]())
    return runs


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call and its return value."""
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def cpu_model() -> str:
    """The CPU model name and its widest vector extension from /proc/cpuinfo (platform.processor() elsewhere).

    Machines sold under one name (an "AMD EPYC" with or without AVX-512) train different teachers, so the vector
    width is part of the machine's name here.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor() or "unknown"
    return describe_cpu(cpuinfo.read_text(encoding="utf-8", errors="replace"))


def describe_cpu(cpuinfo: str) -> str:
    """'<model name> (<widest of AVX-512, AVX2>)' from the text of /proc/cpuinfo."""
    first_processor = cpuinfo.split("\n\n", 1)[0]
    fields = {key.strip(): value.strip()
              for key, value in (line.split(":", 1) for line in first_processor.splitlines() if ":" in line)}
    name = fields.get("model name", "unknown")
    flags = set(fields.get("flags", "").split())
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    return f"{name} ({vector})" if vector else name


def machine_info() -> dict[str, Any]:
    """Cores, torch threads, CPU model, load average, library versions."""
    import torch
    import transformers

    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def write_result(result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """bench/results/<name>.json."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    return path


def read_results(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every stored result, in file-name order."""
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(results_dir.glob("*.json"))]


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
