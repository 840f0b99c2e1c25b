"""Stage flow: word frequency lists that rank each student's trimmed vocabulary (data/word_frequencies)."""

from prefect import flow

from flows.common import run_stage, stage_context
from tasks.vocabulary import word_frequencies_task


@flow(name="word_frequencies")
def word_frequencies_flow() -> dict:
    root, params = stage_context()
    return word_frequencies_task(params["word_frequencies"], params["fetch"], params["data"]["languages"],
                                 root / "data/word_frequencies", root)


if __name__ == "__main__":
    run_stage(word_frequencies_flow)
