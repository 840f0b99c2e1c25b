"""Stage flow: per-language evaluation of teacher, students and baseline (metrics/<lang>.json, plots, summary).

One task per language measures quality (on Dask workers with the dask executor, see flows/fanout.py); speed is
measured afterwards in this process, one language at a time.
"""

from prefect import flow

from flows.common import run_stage, stage_context
from flows.fanout import per_language, stage_task_runner
from tasks.model import evaluate_quality_task, evaluate_task


@flow(name="evaluate")
def evaluate_flow() -> list[dict]:
    root, params = stage_context()
    paths = {
        "teacher": root / "models/teacher",
        "fold_teachers": root / "models/fold_teachers",
        "tfidf": root / "models/tfidf",
        "teacher_tfidf": root / "models/tfidf" if params["soft_labels"]["ensemble"] else None,
        "soft_labels": root / "data/soft_labels",
        "students": root / "models/students",
        "test": root / "data/prepared/test.parquet",
        "metrics": root / "metrics/evaluate",
        "plots": root / "plots/evaluate",
        "summary": root / "reports/evaluation.md",
    }
    settings, labels = params["evaluate"], params["data"]["labels"]
    mode, runtime = params["distill"]["mode"], params["registry"]["router"]["runtime"]
    qualities = per_language(evaluate_quality_task, params["data"]["languages"], paths, settings, labels,
                             params["soft_labels"]["max_length"], mode, runtime)
    return evaluate_task(qualities, paths, settings, labels, mode, runtime)


if __name__ == "__main__":
    run_stage(evaluate_flow.with_options(task_runner=stage_task_runner()))
