"""Prefect task of the students' vocabulary prior: word frequency lists per language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger

from tasks.retry import retry_transient


@task(name="word-frequencies", retries=2, retry_delay_seconds=[5, 20],
      retry_condition_fn=retry_transient)
def word_frequencies_task(settings: dict[str, Any], fetch: dict[str, Any], languages: list[str], output_dir: Path,
                          root: Path) -> dict:
    """Fetch (embedded) or read (a user's file) the languages' word frequency lists into output_dir."""
    from polydistill.data.archives import FetchSettings
    from polydistill.data.word_frequencies import WordFrequencySettings, acquire_word_frequencies

    provenance = acquire_word_frequencies(WordFrequencySettings(**settings), FetchSettings(**fetch), languages,
                                          output_dir, root)
    get_run_logger().info("words per language: %s", provenance["words_per_language"])
    return provenance
