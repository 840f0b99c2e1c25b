"""Bring your own data: CSV, JSONL, Parquet and a saved Hugging Face dataset map onto the canonical columns."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from polydistill.data.archives import FetchSettings
from polydistill.data.ingest import CorpusLoadError, DataSettings, acquire_corpus, read_user_corpus

ROWS = [{"review": "Très bon film", "stars": 5, "language": "fr", "key": "a"},
        {"review": "Schrecklich langweilig", "stars": 1, "language": "de", "key": "b"},
        {"review": "とても良い", "stars": 4, "language": "ja", "key": "c"}]
MAPPING = {"columns": {"text": "review", "label": "stars", "lang": "language", "id": "key"},
           "label_map": {"1": "negative", "2": "negative", "4": "positive", "5": "positive"},
           "languages": ["de", "fr", "ja"], "labels": ["negative", "positive"], "hf_name": None, "hf_split": "train"}
EXPECTED = [("a", "Très bon film", "positive", "fr"), ("b", "Schrecklich langweilig", "negative", "de"),
            ("c", "とても良い", "positive", "ja")]


def write(kind: str, root: Path) -> dict:
    frame = pd.DataFrame(ROWS)
    if kind == "csv":
        frame.to_csv(root / "data.csv", index=False)
        return {"source": "file", "path": "data.csv", "format": "auto"}
    if kind == "jsonl":
        (root / "data.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS),
                                         encoding="utf-8")
        return {"source": "file", "path": "data.jsonl", "format": "auto"}
    if kind == "parquet":
        frame.to_parquet(root / "data.parquet")
        return {"source": "file", "path": "data.parquet", "format": "auto"}
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame)}).save_to_disk(str(root / "saved"))
    return {"source": "hf_disk", "path": "saved"}


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "hf_disk"])
def test_user_corpus_maps_columns_and_labels(kind: str, tmp_path: Path) -> None:
    data = DataSettings.from_params({**MAPPING, **write(kind, tmp_path)})
    frame = read_user_corpus(data, tmp_path)
    assert list(zip(frame["id"], frame["text"], frame["label"], frame["lang"])) == EXPECTED


def test_acquire_writes_raw_corpus_and_provenance_with_file_hash(tmp_path: Path) -> None:
    data = DataSettings.from_params({**MAPPING, **write("csv", tmp_path)})
    fetch = FetchSettings(cache_dir="cache", retries=1, backoff_seconds=0.0)  # unused: the corpus is the user's
    provenance = acquire_corpus(data, fetch, tmp_path / "raw", tmp_path)
    assert provenance["rows"] == 3 and len(provenance["sha256"]) == 64
    lines = (tmp_path / "raw/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[2])["text"] == "とても良い"


def test_unknown_format_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(CorpusLoadError, match="cannot tell the format"):
        read_user_corpus(DataSettings.from_params({**MAPPING, "source": "file", "path": "data.txt", "format": "auto"}),
                         tmp_path)
    with pytest.raises(CorpusLoadError, match="does not exist"):
        read_user_corpus(DataSettings.from_params({**MAPPING, "source": "file", "path": "nope.csv", "format": "auto"}),
                         tmp_path)
    with pytest.raises(CorpusLoadError, match="unknown data.source 'web'"):
        DataSettings.from_params({**MAPPING, "source": "web"})
