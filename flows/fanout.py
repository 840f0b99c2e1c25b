"""Per-language fan-out on Dask through Prefect, at two levels, with DVC recording what the workers wrote.

With `executor.kind: dask` (or `polydistill run --executor dask [--address tcp://…]`) the pipeline flow runs:
1. `dvc repro` of every stage upstream of the fan-out stages (DVC decides what is stale);
2. the command dvc.yaml gives each stale fan-out stage (`python -m flows.distill <lang>`) as a Prefect task on a
   DaskTaskRunner: a LocalCluster of `executor.workers` processes with one thread each, or the scheduler at
   `executor.address`, whose workers must see the project at the same path with the same environment. Stages are
   submitted longest first (the language with the most transfer rows), so the longest never starts last while
   another worker idles; each runs with `distill.threads` torch threads and passive OpenMP waits;
3. `dvc commit` of those stages: DVC hashes what the workers wrote and records it in dvc.lock as `dvc repro` would;
4. `dvc repro` of the rest. Inside it, with `executor.language_tasks`, the stages whose work splits by language
   (soft_labels: the teacher's pass over each language's rows; evaluate: each language's test-set quality) submit
   one Prefect task per language to the same kind of task runner (`per_language`; the pipeline passes its executor
   to them in the environment), then finish serially: the soft-label folder is written from all languages' scores,
   and latency and throughput are measured one language after another, never while workers compete for the cores.
   Otherwise the same tasks run one after another in the stage's own thread. Each task fixes its torch and BLAS
   thread counts from params, so both ways compute the same bits on the fixture (tests/test_pipeline_dvc.py) and
   the same soft labels and evaluation quality on the real corpus (README, Scaling out).

Why this route: `dvc repro` holds the repository lock, so two repros cannot share a workspace, and `dvc exp run
--queue` runs whole experiments in copies rather than the stages of one run. Running each stage's own command keeps
one code path: with the same `distill.threads`, every student is bit-identical to a serial `dvc repro`'s.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import Task, flow, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from polydistill.cli import QUIET_PROGRESS
from polydistill.config import load_params, project_root
from tasks.placement import logged_placement

OUTPUT_TAIL_CHARS = 4000
EXECUTORS = ("serial", "dask")
EXECUTOR_VARIABLES = {"kind": "POLYDISTILL_EXECUTOR", "address": "POLYDISTILL_DASK_ADDRESS"}
TRANSFER_REPORT = "metrics/transfer.json"  # the transfer stage's rows per language: the fan-out's cost estimate
# Fanned-out stages share the cores, each with its own threads: an OpenMP thread waiting for work sleeps rather than
# spins (the user's own OMP_WAIT_POLICY wins). The policy changes timing, never results.
SHARED_CORES_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


class FanOutStageFailed(RuntimeError):
    """A fanned-out stage's command failed; the message carries its output's end."""


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor section of params.yaml (with the CLI's overrides)."""

    kind: str
    address: str | None
    workers: int
    stages: str
    language_tasks: bool  # soft_labels' and evaluate's per-language tasks on the workers too (dask only)

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> ExecutorSettings:
        settings = cls(**{name: section[name] for name in cls.__dataclass_fields__})
        if settings.kind not in EXECUTORS:
            raise ValueError(f"executor.kind '{settings.kind}': use one of {', '.join(EXECUTORS)}")
        return settings

    @property
    def fans_out_language_tasks(self) -> bool:
        """Whether soft_labels and evaluate submit their per-language tasks to Dask workers."""
        return self.kind == "dask" and self.language_tasks


def executor_settings(section: dict[str, Any], kind: str | None = None,
                      address: str | None = None) -> ExecutorSettings:
    """params.yaml `executor`, overridden by `kind` and `address`, else by the variables the pipeline flow passes to
    the stages it runs (EXECUTOR_VARIABLES)."""
    overrides = {name: value for name, value in (("kind", kind or os.environ.get(EXECUTOR_VARIABLES["kind"])),
                                                 ("address", address or os.environ.get(EXECUTOR_VARIABLES["address"])))
                 if value}
    return ExecutorSettings.from_params({**section, **overrides})


def executor_environment(settings: ExecutorSettings) -> dict[str, str]:
    """The variables that carry `settings` to the stage flows a `dvc repro` starts."""
    return {EXECUTOR_VARIABLES["kind"]: settings.kind,
            **({EXECUTOR_VARIABLES["address"]: settings.address} if settings.address else {})}


def task_runner(settings: ExecutorSettings) -> TaskRunner:
    """Where a flow's submitted tasks run: on a DaskTaskRunner (the scheduler at settings.address, or a LocalCluster
    of one-thread worker processes); for serial, a one-thread pool, which `per_language` leaves unused (it calls the
    tasks in the stage's own thread)."""
    if settings.kind == "serial":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if settings.address:
        return DaskTaskRunner(address=settings.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def stage_executor() -> ExecutorSettings:
    """The project's executor settings as a stage flow sees them (params.yaml, overridden by the environment)."""
    return executor_settings(load_params(project_root() / "params.yaml")["executor"])


def stage_task_runner() -> TaskRunner:
    """The task runner for a stage flow's per-language tasks under the project's executor settings (no Dask cluster
    for a stage whose tasks stay in its own process)."""
    settings = stage_executor()
    return task_runner(settings if settings.fans_out_language_tasks else replace(settings, kind="serial"))


def per_language(language_task: Task, languages: list[str], *arguments: Any) -> list[Any]:
    """`language_task(lang, *arguments)` for every language, results in language order: submitted to the flow's
    (Dask) task runner when the executor fans out language tasks; called one after another in this thread otherwise,
    the thread that then measures speed (after the quality tasks had run in a pool thread, batch-1 latency came out
    slower)."""
    if stage_executor().fans_out_language_tasks:
        futures = [language_task.submit(lang, *arguments) for lang in languages]
        return [future.result() for future in futures]
    return [language_task(lang, *arguments) for lang in languages]


def fan_out_plan(root: Path, prefix: str) -> tuple[list[str], dict[str, str]]:
    """The stages upstream of the fan-out stages (names starting with `prefix`), and each fan-out stage's command,
    in dvc.yaml's order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        fanned = [stage for stage in graph.nodes if stage.addressing.startswith(prefix)]
        upstream = set().union(*(nx.descendants(graph, stage) for stage in fanned))
        return sorted(stage.addressing for stage in upstream), {stage.addressing: stage.cmd for stage in fanned}


def longest_first(root: Path, stages: list[str]) -> list[str]:
    """`stages` in the order to start them: the language with the most transfer rows (TRANSFER_REPORT, written
    upstream) first, since a student's training time grows with them. Longest processing time first: started last,
    the longest stage would set the end while other workers idle. Ties and languages without a count keep their
    order."""
    report = root / TRANSFER_REPORT
    rows = json.loads(report.read_text(encoding="utf-8"))["languages"] if report.exists() else {}
    return sorted(stages, key=lambda stage: -rows.get(stage.rpartition("@")[2], {}).get("rows", 0))


def stale_stages(root: Path, stages: list[str], dvc: str) -> list[str]:
    """The stages among `stages` that `dvc status` reports as changed."""
    status = subprocess.run([dvc, "status", "--json", *stages], cwd=root, capture_output=True, text=True, check=True)
    changed = json.loads(status.stdout or "{}")
    return [stage for stage in stages if stage in changed]


@task(name="stage-command")
def stage_command_task(root: str, stage: str, command: str, environment: dict[str, str]) -> str:
    """Run one stage's dvc.yaml command in the project (on a Dask worker) with `environment`, the pipeline's own,
    not the worker's (a Dask worker holds OMP/MKL/OpenBLAS threads at 1); raise with its output on failure."""
    with logged_placement(stage):
        completed = subprocess.run(command, shell=True, cwd=root, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        raise FanOutStageFailed(f"stage {stage} failed (`{command}`):\n"
                                f"{(completed.stdout + completed.stderr)[-OUTPUT_TAIL_CHARS:]}")
    return stage


def stage_environment(root: str) -> dict[str, str]:
    """The environment a fanned-out stage command runs with: the pipeline's own, quiet progress and passive OpenMP
    waits unless it sets them, the project root."""
    return {**QUIET_PROGRESS, **SHARED_CORES_ENVIRONMENT, **os.environ, "POLYDISTILL_ROOT": root}


@flow(name="fan-out")
def fan_out_flow(root: str, commands: dict[str, str]) -> list[str]:
    """Every command at once on the flow's task runner; the stages that finished, in order."""
    environment = stage_environment(root)
    futures = [stage_command_task.submit(root, stage, command, environment) for stage, command in commands.items()]
    return [future.result() for future in futures]


def run_on_dask(root: Path, commands: dict[str, str], settings: ExecutorSettings) -> list[str]:
    """fan_out_flow on the Dask task runner of `settings`."""
    return fan_out_flow.with_options(task_runner=task_runner(settings))(str(root), commands)
