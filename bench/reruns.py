"""Benchmark 5: incremental reruns. In a temporary copy of the repository set to the fixture configuration (the
tests' fixture corpus and tiny teacher, as tests/conftest.py's fixture_params), the wall time of a full `dvc repro`,
a no-op `dvc repro`, and a rerun after changing only distill.temperature, as ratios of the full run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO_ROOT, format_summary, summarize

sys.path.insert(0, str(REPO_ROOT / "tests"))
from harness import (  # noqa: E402
    VENV_BIN,
    copy_repository,
    fixture_params,
    fixture_texts,
    running_prefect_server,
    stages_run,
    write_params,
)
from tiny_models import tiny_pretrained_encoder  # noqa: E402

LANGUAGES = ["en", "sl", "zh"]
SIZES = {"quick": {"noop_repeats": 1, "temperatures": [3.0]},
         "full": {"noop_repeats": 3, "temperatures": [3.0, 4.0]}}


def repro(root: Path, api_url: str) -> dict[str, Any]:
    """Wall seconds and the stages run by one `dvc repro` in the copy (raises when it fails)."""
    environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                   "POLYDISTILL_ROOT": str(root), "PREFECT_HOME": str(root / ".prefect"), "PREFECT_API_URL": api_url}
    environment.pop("MLFLOW_TRACKING_URI", None)  # the copy's own mlflow.db, never the project's
    started = time.perf_counter()
    finished = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=root, env=environment, capture_output=True,
                              text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"dvc repro failed: {finished.stdout[-3000:]}{finished.stderr[-3000:]}")
    return {"seconds": seconds, "stages": stages_run(finished.stdout)}


def set_temperature(root: Path, temperature: float) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["distill"]["temperature"] = temperature
    write_params(root, params)


def run(quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory(prefix="bench-reruns-") as scratch:
        scratch = Path(scratch)
        teacher = tiny_pretrained_encoder(scratch / "tiny-teacher", fixture_texts(), ["negative", "positive"])
        root = scratch / "repo"
        copy_repository(root, fixture_params(LANGUAGES, teacher))
        (scratch / "prefect").mkdir()
        with running_prefect_server(scratch / "prefect", timeout=120) as api_url:
            full = repro(root, api_url)
            noops = [repro(root, api_url) for _ in range(sizes["noop_repeats"])]
            reruns = []
            for temperature in sizes["temperatures"]:
                set_temperature(root, temperature)
                reruns.append(repro(root, api_url))
    return summarise(full, noops, reruns, sizes)


def summarise(full: dict, noops: list[dict], reruns: list[dict], sizes: dict[str, Any]) -> dict[str, Any]:
    noop = summarize([entry["seconds"] / full["seconds"] for entry in noops])
    rerun = summarize([entry["seconds"] / full["seconds"] for entry in reruns])
    rows = [["full `dvc repro`", f"{full['seconds']:.1f}", "1.00", len(full["stages"])],
            ["no-op `dvc repro`", format_summary(summarize([e["seconds"] for e in noops]), ".1f"),
             format_summary(noop, ".3f"), len(noops[0]["stages"])],
            ["after changing distill.temperature",
             format_summary(summarize([e["seconds"] for e in reruns]), ".1f"), format_summary(rerun, ".3f"),
             f"{len(reruns[0]['stages'])}: {', '.join(reruns[0]['stages'])}"]]
    return {
        "name": "reruns", "title": "5. Incremental reruns (fixture configuration)",
        "config": {**sizes, "languages": LANGUAGES}, "full": full, "noops": noops, "reruns": reruns,
        "ratios": {"noop": noop, "temperature": rerun},
        "tables": [{"title": "Wall time of `dvc repro` in a repository copy (seconds; ratio = time / full run)",
                    "columns": ["run", "seconds", "ratio of full", "stages run"], "rows": rows}],
        "notes": [
            "Uses the fixture configuration, not the default one: the tests' fixture corpus "
            f"(tests/fixtures/corpus.jsonl, languages {', '.join(LANGUAGES)}) and a tiny 4-layer teacher, with "
            "tests/conftest.py's fixture_params sizes; the real teacher would take too long. Each stage's fixed "
            "cost (interpreter, imports, Prefect flow start) therefore weighs more than in the default run.",
            "All stages report to one Prefect server started for the benchmark (as the tests do); without it each "
            "flow starts a temporary server (~10 s more per stage).",
        ],
    }
