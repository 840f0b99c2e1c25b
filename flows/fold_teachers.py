"""Stage flow: the teacher's fold twins, so that no soft label comes from a model fine-tuned on its row
(models/fold_teachers)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.model import fold_teachers_task


@flow(name="fold_teachers")
def fold_teachers_flow() -> dict:
    root, params = stage_context()
    return fold_teachers_task(root / "models/pretrained", root / "data/balanced/teacher.parquet",
                              root / "data/prepared/validation.parquet", root / "models/fold_teachers",
                              root / "metrics/fold_teachers.json", root / ".cache/runs", params["teacher"],
                              params["data"]["labels"], params["fold_teachers"]["folds"])


if __name__ == "__main__":
    run_stage(fold_teachers_flow)
