"""Stage flow: per-language evaluation of teacher, students and baseline (metrics/<lang>.json, plots, summary)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import evaluate_task


@flow(name="evaluate")
def evaluate_flow() -> list[dict]:
    root, params = stage_context()
    paths = {
        "teacher": root / "models/teacher",
        "tfidf": root / "models/tfidf",
        "teacher_tfidf": root / "models/tfidf" if params["soft_labels"]["ensemble"] else None,
        "soft_labels": root / "data/soft_labels",
        "students": root / "models/students",
        "test": root / "data/prepared/test.parquet",
        "metrics": root / "metrics/evaluate",
        "plots": root / "plots/evaluate",
        "summary": root / "reports/evaluation.md",
    }
    return evaluate_task(params["data"]["languages"], paths, params["evaluate"], params["data"]["labels"],
                         params["soft_labels"]["max_length"], params["distill"]["mode"],
                         params["registry"]["router"]["runtime"])


if __name__ == "__main__":
    run_stage(evaluate_flow)
