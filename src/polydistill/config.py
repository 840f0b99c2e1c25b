"""Reading params.yaml and setting the offline environment every stage runs in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",       # no LOAD REPORT at every model load (a new head is expected)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",     # no "Writing model shards" bar at every save
}


def set_offline_environment() -> None:
    """Set the variables that keep Hugging Face, GX and MLflow offline and quiet (existing values win)."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def project_root() -> Path:
    """The project directory: POLYDISTILL_ROOT if set, else the current working directory."""
    return Path(os.environ.get("POLYDISTILL_ROOT", os.getcwd())).resolve()


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Load the whole params.yaml (default: the one in the project root)."""
    params_path = Path(path) if path else project_root() / "params.yaml"
    with open(params_path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def section(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """One stage's section of params.yaml."""
    params = load_params(path)
    if name not in params:
        raise KeyError(f"params.yaml has no section '{name}'")
    return params[name]
