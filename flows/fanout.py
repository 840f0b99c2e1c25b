"""Per-language fan-out: independent stages of one kind (`distill@<lang>`) run at once on Dask workers through
Prefect, and DVC records what they wrote.

With `executor.kind: dask` (or `polydistill run --executor dask [--address tcp://…]`) the pipeline flow runs:
1. `dvc repro` of every stage upstream of the fan-out stages (serial; DVC decides what is stale);
2. the command dvc.yaml gives each stale fan-out stage (`python -m flows.distill <lang>`) as a Prefect task on a
   DaskTaskRunner: a LocalCluster of `executor.workers` processes with one thread each, or the scheduler at
   `executor.address`, whose workers must see the project at the same path with the same environment;
3. `dvc commit` of those stages: DVC hashes what the workers wrote and records it in dvc.lock as `dvc repro` would;
4. `dvc repro` of the rest (evaluate, register), serially, so that latency and throughput are never measured while
   workers compete for the cores.

Why this route: `dvc repro` holds the repository lock, so two repros cannot share a workspace, and `dvc exp run
--queue` runs whole experiments in copies rather than the stages of one run. Running each stage's own command keeps
one code path: with the same `distill.threads`, every student is bit-identical to a serial `dvc repro`'s.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task

from polydistill.cli import QUIET_PROGRESS

OUTPUT_TAIL_CHARS = 4000
EXECUTORS = ("serial", "dask")


class FanOutStageFailed(RuntimeError):
    """A fanned-out stage's command failed; the message carries its output's end."""


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor section of params.yaml (with the CLI's overrides)."""

    kind: str
    address: str | None
    workers: int
    stages: str

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> ExecutorSettings:
        settings = cls(**{name: section[name] for name in cls.__dataclass_fields__})
        if settings.kind not in EXECUTORS:
            raise ValueError(f"executor.kind '{settings.kind}': use one of {', '.join(EXECUTORS)}")
        return settings


def fan_out_plan(root: Path, prefix: str) -> tuple[list[str], dict[str, str]]:
    """The stages upstream of the fan-out stages (names starting with `prefix`), and each fan-out stage's command."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        fanned = [stage for stage in graph.nodes if stage.addressing.startswith(prefix)]
        upstream = set().union(*(nx.descendants(graph, stage) for stage in fanned))
        return sorted(stage.addressing for stage in upstream), {stage.addressing: stage.cmd for stage in fanned}


def stale_stages(root: Path, stages: list[str], dvc: str) -> list[str]:
    """The stages among `stages` that `dvc status` reports as changed."""
    status = subprocess.run([dvc, "status", "--json", *stages], cwd=root, capture_output=True, text=True, check=True)
    changed = json.loads(status.stdout or "{}")
    return [stage for stage in stages if stage in changed]


@task(name="stage-command")
def stage_command_task(root: str, stage: str, command: str) -> str:
    """Run one stage's dvc.yaml command in the project (on a Dask worker); raise with its output on failure."""
    environment = {**QUIET_PROGRESS, **os.environ, "POLYDISTILL_ROOT": root}
    completed = subprocess.run(command, shell=True, cwd=root, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        raise FanOutStageFailed(f"stage {stage} failed (`{command}`):\n"
                                f"{(completed.stdout + completed.stderr)[-OUTPUT_TAIL_CHARS:]}")
    return stage


@flow(name="fan-out")
def fan_out_flow(root: str, commands: dict[str, str]) -> list[str]:
    """Every command at once on the flow's task runner; the stages that finished, in order."""
    futures = [stage_command_task.submit(root, stage, command) for stage, command in commands.items()]
    return [future.result() for future in futures]


def run_on_dask(root: Path, commands: dict[str, str], settings: ExecutorSettings) -> list[str]:
    """fan_out_flow on a DaskTaskRunner: the scheduler at settings.address, else a LocalCluster of one-thread
    worker processes."""
    from prefect_dask import DaskTaskRunner

    runner = (DaskTaskRunner(address=settings.address) if settings.address else
              DaskTaskRunner(cluster_kwargs={"n_workers": settings.workers, "threads_per_worker": 1,
                                             "processes": True, "dashboard_address": None}))
    return fan_out_flow.with_options(task_runner=runner)(str(root), commands)
