"""`python -m bench [--quick] [--only NAME[,NAME]]`: run the benchmarks, print their tables, write
bench/results/<name>.json and regenerate BENCHMARKS.md from every stored result."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from datetime import datetime, timezone

from bench.common import REPO_ROOT, THREADS, machine_info, read_results, write_result
from bench.report import ORDER, render_benchmarks, render_result

MODULES = {"loop": "bench.loop", "speed": "bench.speed", "quality": "bench.quality", "sampling": "bench.sampling",
           "reruns": "bench.reruns", "ablations": "bench.ablations", "seeds": "bench.seeds",
           "transfer_sources": "bench.transfer_sources", "adaptive": "bench.adaptive", "scaling": "bench.scaling",
           "class_weights": "bench.class_weights", "vocabulary": "bench.vocabulary", "hidden": "bench.hidden",
           "kd_weight": "bench.kd_weight", "steps": "bench.steps", "selection": "bench.selection",
           "attention": "bench.attention", "vocabulary_cap": "bench.vocabulary_cap",
           "teacher_epochs": "bench.teacher_epochs", "teacher_context": "bench.teacher_context"}
# benchmarks that take --languages
PER_LANGUAGE = ("seeds", "transfer_sources", "ablations", "adaptive", "class_weights", "vocabulary", "hidden",
                "selection", "attention", "vocabulary_cap", "teacher_epochs",
                "teacher_context")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and fewer repeats (under 10 minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(ORDER)}")
    parser.add_argument("--languages", default="",
                        help=f"comma-separated languages for {', '.join(PER_LANGUAGE)} (default: all of params.yaml)")
    arguments = parser.parse_args(argv)
    selected = [name.strip() for name in arguments.only.split(",") if name.strip()] or list(ORDER)
    unknown = sorted(set(selected) - set(MODULES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(ORDER)}")
    arguments.selected = selected
    arguments.languages = [lang.strip() for lang in arguments.languages.split(",") if lang.strip()] or None
    return arguments


def run_one(name: str, quick: bool, command: str, languages: list[str] | None = None) -> dict:
    """Run one benchmark module; a failure becomes a result that says so (the others still run)."""
    started = time.perf_counter()
    try:
        module = importlib.import_module(MODULES[name])
        result = module.run(quick, languages) if name in PER_LANGUAGE else module.run(quick)
    except Exception as error:  # noqa: BLE001  (reported in the result and on stderr)
        traceback.print_exc()
        result = {"name": name, "title": f"{ORDER.index(name) + 1}. {name}", "skipped": f"failed: {error!r}"}
    result.update(mode="quick" if quick else "full", command=command, seconds=time.perf_counter() - started,
                  finished=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return result


def main(argv: list[str]) -> int:
    import torch
    from transformers.utils import logging as transformers_logging

    from polydistill.config import set_offline_environment

    set_offline_environment()
    torch.set_num_threads(THREADS)
    transformers_logging.disable_progress_bar()
    arguments = parse_arguments(argv)
    command = "python -m bench " + shlex.join(argv) if argv else "python -m bench"
    machine = machine_info()
    failed = []
    for name in arguments.selected:
        result = run_one(name, arguments.quick, command.strip(), arguments.languages)
        result["machine"] = machine
        write_result(result)
        print(render_result(result, markdown=False), flush=True)
        if str(result.get("skipped", "")).startswith("failed"):
            failed.append(name)
    (REPO_ROOT / "BENCHMARKS.md").write_text(render_benchmarks(read_results(), machine, command), encoding="utf-8")
    print(f"wrote {REPO_ROOT / 'BENCHMARKS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
