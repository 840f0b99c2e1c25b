"""The whole pipeline as one Prefect flow: `dvc pull` (with a remote), `dvc repro`, `dvc push` (with a remote); with
the dask executor the per-language stages run at once on Dask workers first (flows/fanout.py).

DVC decides what is stale; the register stage (last in dvc.yaml) logs to MLflow and runs the promotion gate, so a
stage that fails (a failed validation, say) ends the flow as failed with the stage's message before the registry is
touched.

    python -m flows.pipeline run      # one run now (--executor dask [--address tcp://…] to fan out)
    python -m flows.pipeline serve    # a deployment with the cron of params.yaml `schedule` (needs a Prefect server)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from prefect import flow, task
from prefect.logging import get_run_logger

from flows.common import stage_context
from flows.fanout import (
    EXECUTORS,
    ExecutorSettings,
    executor_environment,
    executor_settings,
    fan_out_plan,
    longest_first,
    run_on_dask,
    stale_stages,
)
from polydistill.cli import QUIET_PROGRESS
from polydistill.config import load_params

OUTPUT_TAIL_LINES = 80
STAGE_FAILURE = re.compile(r"^stage \S+ failed:")


class PipelineStageFailed(RuntimeError):
    """`dvc repro` (or pull/push) ended with an error; the message carries the failing stage's own words."""


def dvc_executable() -> str:
    """The DVC of this Python environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def shared_api_environment() -> dict[str, str]:
    """PREFECT_API_URL of the API this process reports to, when none is set: the stage flows that `dvc` starts then
    report to the pipeline's own (possibly temporary) server instead of each starting one (~5 s a stage)."""
    if os.environ.get("PREFECT_API_URL"):
        return {}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url)}


def dvc_command(root: Path, *arguments: str, extra_environment: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run the DVC CLI in root, echoing its output live; return the exit status and the last lines.

    Its output is a pipe, so progress bars are switched off (unless the environment says otherwise).
    """
    command = [dvc_executable(), *arguments]
    environment = {**QUIET_PROGRESS, **os.environ, "POLYDISTILL_ROOT": str(root), **shared_api_environment(),
                   **(extra_environment or {})}
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    with subprocess.Popen(command, cwd=root, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    return process.returncode, list(tail)


def failure_message(arguments: tuple[str, ...], tail: list[str]) -> str:
    """The failing stage's message (from 'stage X failed:' on) or else the output's last lines."""
    start = next((index for index, line in enumerate(tail) if STAGE_FAILURE.match(line)), max(len(tail) - 20, 0))
    return f"dvc {' '.join(arguments)} failed:\n" + "\n".join(tail[start:])


def checked_dvc(root: Path, *arguments: str, extra_environment: dict[str, str] | None = None) -> None:
    status, tail = dvc_command(root, *arguments, extra_environment=extra_environment)
    if status != 0:
        raise PipelineStageFailed(failure_message(arguments, tail))


def has_remote(root: Path) -> bool:
    """Whether the repository has a DVC remote configured."""
    listing = subprocess.run([dvc_executable(), "remote", "list"], cwd=root, capture_output=True, text=True)
    return bool(listing.stdout.strip())


@task(name="dvc-pull", retries=3, retry_delay_seconds=[10, 30, 90])
def dvc_pull_task(root: Path) -> None:
    """Fetch cached outputs from the remote (missing ones are simply rebuilt by repro)."""
    checked_dvc(root, "pull", "--allow-missing")


@task(name="dvc-repro")
def dvc_repro_task(root: Path, settings: ExecutorSettings, *stages: str) -> None:
    """Bring every stale stage (or `stages` and what they depend on) up to date, the stage flows' per-language
    tasks on the executor of `settings`; stages retry their own transient steps (downloads, registry writes)."""
    checked_dvc(root, "repro", *stages, extra_environment=executor_environment(settings))


@task(name="dvc-commit")
def dvc_commit_task(root: Path, stages: list[str]) -> None:
    """Record what the fanned-out stages wrote in dvc.lock (their outputs hashed and cached)."""
    checked_dvc(root, "commit", "--force", *stages)


def fanned_out_repro(root: Path, settings: ExecutorSettings) -> list[str]:
    """Upstream stages serially, the stale fan-out stages at once on Dask (longest first), then `dvc commit` of them
    (see flows/fanout.py); the caller's `dvc repro` does the rest. Returns the stages that ran on Dask."""
    upstream, commands = fan_out_plan(root, settings.stages)
    if upstream:
        dvc_repro_task(root, settings, *upstream)
    stale = longest_first(root, stale_stages(root, list(commands), dvc_executable()))
    get_run_logger().info("fan-out on Dask (%s): %s", settings.address or f"{settings.workers} local workers",
                          ", ".join(stale) or "nothing stale")
    if stale:
        run_on_dask(root, {stage: commands[stage] for stage in stale}, settings)
        dvc_commit_task(root, stale)
    return stale


@task(name="dvc-push", retries=3, retry_delay_seconds=[10, 30, 90])
def dvc_push_task(root: Path) -> None:
    checked_dvc(root, "push")


@flow(name="polydistill-pipeline")
def pipeline_flow(root: str | None = None, executor: str | None = None, address: str | None = None) -> dict:
    """Pull (with a remote), repro, push (with a remote); the register stage logs and promotes.

    `executor` and `address` override params.yaml `executor`: with dask, the per-language stages fan out first.
    """
    project = Path(root).resolve() if root else stage_context()[0]
    section = load_params(project / "params.yaml")["executor"]
    settings = executor_settings(section, executor, address)
    remote = has_remote(project)
    logger = get_run_logger()
    logger.info("pipeline in %s (DVC remote: %s, executor: %s)", project, "yes" if remote else "none",
                settings.kind)
    if remote:
        dvc_pull_task(project)
    fanned_out = fanned_out_repro(project, settings) if settings.kind == "dask" else []
    dvc_repro_task(project, settings)
    if remote:
        dvc_push_task(project)
    registry_report = project / "metrics/registry.json"
    return {"root": str(project), "remote": remote, "fanned_out": fanned_out,
            "registry": registry_report.read_text(encoding="utf-8") if registry_report.exists() else None}


def serve(root: Path, deployment: str, cron: str, timezone: str) -> None:
    """Serve a deployment of the pipeline with its cron schedule (blocks; runs come from the Prefect server)."""
    from prefect.schedules import Cron

    pipeline_flow.serve(name=deployment, schedule=Cron(cron, timezone=timezone),
                        parameters={"root": str(root)}, print_starting_message=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "serve"])
    parser.add_argument("--executor", choices=EXECUTORS, help="override params.yaml executor.kind")
    parser.add_argument("--address", help="a Dask scheduler (tcp://host:8786) for --executor dask")
    arguments = parser.parse_args()
    action = arguments.action
    root, params = stage_context()
    if action == "serve":
        schedule = params["schedule"]
        serve(root, schedule["deployment"], schedule["cron"], schedule["timezone"])
        return
    state = pipeline_flow(str(root), arguments.executor, arguments.address, return_state=True)
    if state.is_failed():
        print(f"\npipeline failed: {state.message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
