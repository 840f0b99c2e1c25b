"""The pipeline flow shares its Prefect API with the stage flows that `dvc repro` starts (`make run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

STAGE = "from prefect import flow\n@flow(name='stage')\ndef stage():\n    return 1\nstage()\n"
PIPELINE = f"""
import os, subprocess, sys
from prefect import flow
from flows.pipeline import shared_api_environment

@flow(name="pipeline")
def pipeline():
    environment = {{**os.environ, **shared_api_environment()}}
    stage = subprocess.run([sys.executable, "-c", {STAGE!r}], env=environment, capture_output=True, text=True)
    print("STAGE OUTPUT", stage.returncode, stage.stdout + stage.stderr, "STAGE END")
    print("STAGE API", environment.get("PREFECT_API_URL"))

pipeline()
"""


def test_stage_flows_report_to_the_pipeline_flows_temporary_server(tmp_path: Path) -> None:
    """With no PREFECT_API_URL the pipeline flow starts a temporary Prefect server; a process it starts gets that
    server's address, so its flow reports there instead of starting a server of its own (~5 s a stage)."""
    environment = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    environment.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(REPO_ROOT))
    finished = subprocess.run([sys.executable, "-c", PIPELINE], cwd=REPO_ROOT, env=environment, capture_output=True,
                              text=True, timeout=300)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-3000:]
    stage_output = output.split("STAGE OUTPUT", 1)[1].split("STAGE END", 1)[0]
    assert stage_output.startswith(" 0 ") and "Finished in state Completed()" in stage_output, stage_output
    assert "Starting temporary server" not in stage_output
    assert output.count("Starting temporary server") == 1
    api = output.split("STAGE API", 1)[1].split()[0]
    assert api.startswith("http://127.0.0.1:") and api.endswith("/api/")
