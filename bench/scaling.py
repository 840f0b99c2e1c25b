"""Benchmark 10: scaling out: the teacher in 1 vs 2 processes, then a projection to more languages and workers.

Measured here: the real teacher fine-tuned for `steps` steps on the default teacher set, in one process with 2
threads and in 2 data-parallel processes with 1 thread each (the same global batch), interleaved; wall and CPU time.
On 2 cores this measures the cost of data parallelism (gradient exchange, duplicated work), not a speed-up.

Projected: wall time and CPU-hours of a whole run for more languages on more workers, from the stage durations of
the last full pipeline run that Prefect recorded in this workspace (each stage flow's run time; per-language stages
per language; for soft_labels and evaluate also the share of their time spent in per-language tasks, the part that
fans out, from their latest run with such tasks).
Assumptions are stated in the result's notes.
"""

from __future__ import annotations

import math
import resource
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import REPO_ROOT, load_project_params, require, timed

SIZES = {"quick": {"steps": 10, "repeats": 1}, "full": {"steps": 60, "repeats": 2}}
LANGUAGES, WORKERS = (5, 20, 100), (1, 8, 32)
CORES_PER_WORKER = 2  # each worker is a machine like this one; every stage runs with 2 threads
NETWORK_BYTES_PER_SECOND = 1.25e9  # 10 GbE between workers, for the teacher's gradient exchange
FULL_TEACHER_MIN_SECONDS = 300  # a train_teacher flow run shorter than this resumed a finished run (no training)
PAGE, RECORDED_RUNS_READ = 200, 2000  # Prefect's page limit; how far back the stage runs are looked for
FIXED_STAGES = ("fetch", "prepare", "validate", "balance", "unlabelled", "transfer", "pretrained")
FANNED_PARTS = {"soft_labels": "soft-labels-language", "evaluate": "evaluate-language"}  # stage: its language task
SERIAL_STAGES = ("baseline", "register")  # one flow for all languages; registration serial by design


def run(quick: bool) -> dict[str, Any]:
    sizes = SIZES["quick" if quick else "full"]
    stages = recorded_stage_seconds()  # first: it fails fast without a recorded full run
    teacher = measure_teacher(sizes["steps"], sizes["repeats"])
    return summarise(teacher, stages, sizes)


def measure_teacher(steps: int, repeats: int) -> dict[int, list[dict[str, float]]]:
    """Per process count (1, 2): `repeats` runs of `steps` teacher steps, the order alternating between repeats."""
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for repeat in range(repeats):
        for processes in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            runs[processes].append(time_teacher(processes, steps))
    return runs


def time_teacher(processes: int, steps: int) -> dict[str, float]:
    """Fine-tune the real teacher for `steps` steps in `processes` processes; wall, loop and CPU seconds."""
    from polydistill.model.teacher import fine_tune
    from polydistill.model.training import TrainSettings

    params = load_project_params()
    train = pd.read_parquet(require(REPO_ROOT / "data/balanced/teacher.parquet", "make run"))
    validation = pd.read_parquet(REPO_ROOT / "data/prepared/validation.parquet")
    settings = TrainSettings.from_params({**params["teacher"], "processes": processes, "eval_every": steps,
                                          "checkpoint_every": steps,
                                          "epochs": steps * params["teacher"]["batch_size"] / len(train)})
    cpu_before = cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as scratch:
        seconds, metrics = timed(lambda: fine_tune(REPO_ROOT / "models/pretrained", train, validation,
                                                   Path(scratch) / "teacher", Path(scratch) / "work", settings,
                                                   params["data"]["labels"]))
    loop_seconds = metrics["history"][-1]["seconds"]
    return {"seconds": seconds, "loop_seconds": loop_seconds, "seconds_per_step": loop_seconds / metrics["steps"],
            "cpu_seconds": cpu_seconds() - cpu_before, "steps": metrics["steps"],
            "validation_macro_f1": metrics["validation_macro_f1"]["mean"]}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def recorded_stage_seconds() -> dict[str, Any]:
    """Run times of the last full pipeline run's stage flows, from Prefect: the latest train_teacher run that
    trained (≥ FULL_TEACHER_MIN_SECONDS) and, for every other stage (per language for distill), the completed
    run nearest to it in start time (before it for upstream stages, after it for downstream ones)."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> list[tuple[str, Any]]:
        async with get_client() as client:
            completed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])))
            runs: list[Any] = []
            while len(runs) < RECORDED_RUNS_READ:  # the API returns at most PAGE runs per request
                page = await client.read_flow_runs(flow_run_filter=completed, sort=FlowRunSort.START_TIME_DESC,
                                                   limit=PAGE, offset=len(runs))
                runs.extend(page)
                if len(page) < PAGE:
                    break
            names = {flow_id: (await client.read_flow(flow_id)).name for flow_id in {run.flow_id for run in runs}}
            return [(names[run.flow_id], run) for run in runs]

    runs = anyio.run(read)
    teacher = next((run for name, run in runs if name == "train_teacher"
                    and run.total_run_time.total_seconds() >= FULL_TEACHER_MIN_SECONDS), None)
    if teacher is None:
        raise LookupError("Prefect has no full train_teacher run in this workspace: run `make run` first")
    upstream = {*FIXED_STAGES, "baseline"}
    chosen: dict[str, Any] = {"train_teacher": teacher}
    modelled = {*FIXED_STAGES, *FANNED_PARTS, *SERIAL_STAGES, "distill"}
    for name, run in sorted(runs, key=lambda item: abs((item[1].start_time - teacher.start_time).total_seconds())):
        key = f"distill@{run.parameters['lang']}" if name == "distill" else name
        if name not in modelled or key in chosen or (run.start_time < teacher.start_time) != (name in upstream):
            continue
        chosen[key] = run
    seconds = {key: round(run.total_run_time.total_seconds(), 1) for key, run in sorted(chosen.items())}
    shares = {stage: fanned_share([run for name, run in runs if name == stage], task_name)
              for stage, task_name in FANNED_PARTS.items()}
    for stage, share in shares.items():
        seconds[f"{stage}:languages"] = round(seconds[stage] * share["share"], 1)
    return {"teacher_started": teacher.start_time.strftime("%Y-%m-%d %H:%M UTC"), "seconds": seconds,
            "fanned_shares": shares}


def fanned_share(stage_runs: list[Any], task_name: str) -> dict[str, Any]:
    """The share of a stage's run time spent in its per-language tasks, from its latest run that had them (a
    full run may predate the split; the share carries over to its stage time)."""
    import anyio

    for run in stage_runs:  # newest first
        language_seconds = anyio.run(language_task_seconds, run.id, task_name)
        if language_seconds > 0:
            return {"share": round(language_seconds / run.total_run_time.total_seconds(), 4),
                    "run_started": run.start_time.strftime("%Y-%m-%d %H:%M UTC")}
    raise LookupError(f"Prefect has no run with {task_name} tasks in this workspace: run `make run` first")


async def language_task_seconds(flow_run_id: Any, task_name: str) -> float:
    """The summed run time of a stage flow run's per-language tasks (`task_name`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                            limit=PAGE)
    return sum(task.total_run_time.total_seconds() for task in tasks if task.name.startswith(task_name))


def projection(stage_seconds: dict[str, float], languages: int, workers: int, teacher_efficiency: float,
               teacher_steps: int, gradient_bytes: float, global_batch: int) -> dict[str, float]:
    """Wall and CPU seconds per stage group of one run with `languages` languages on `workers` workers."""
    measured = sorted(key.split("@")[1] for key in stage_seconds if key.startswith("distill@"))
    student = sum(stage_seconds[f"distill@{lang}"] for lang in measured) / len(measured)
    scale, waves = languages / len(measured), math.ceil(languages / workers)
    fanned = {f"{stage} (fanned out)": stage_seconds[f"{stage}:languages"] / len(measured) for stage in FANNED_PARTS}
    serial = {**{f"{stage} (serial part)": stage_seconds[stage] - stage_seconds[f"{stage}:languages"]
                 for stage in FANNED_PARTS},
              **{stage: stage_seconds[stage] for stage in SERIAL_STAGES}}
    teacher_processes = min(workers, global_batch)
    exchange = (0.0 if teacher_processes == 1 else
                teacher_steps * 2 * (teacher_processes - 1) / teacher_processes * gradient_bytes
                / NETWORK_BYTES_PER_SECOND)
    teacher_compute = stage_seconds["train_teacher"] / (1 if teacher_processes == 1 else
                                                        teacher_processes * teacher_efficiency)
    wall = {"data preparation": sum(stage_seconds[stage] for stage in FIXED_STAGES) * scale,
            "teacher": teacher_compute + exchange,
            "students (fanned out)": waves * student,
            **{group: waves * seconds for group, seconds in fanned.items()},
            **{group: seconds * scale for group, seconds in serial.items()}}
    cpu = {**{group: seconds * CORES_PER_WORKER for group, seconds in wall.items()},
           "teacher": teacher_compute * teacher_processes * CORES_PER_WORKER,
           "students (fanned out)": student * languages * CORES_PER_WORKER,
           **{group: seconds * languages * CORES_PER_WORKER for group, seconds in fanned.items()}}
    return {"wall": sum(wall.values()), "cpu": sum(cpu.values()), "bottleneck": max(wall, key=wall.get),
            "bottleneck_share": max(wall.values()) / sum(wall.values())}


def trainable_gradient_bytes() -> float:
    """Bytes of the teacher's gradient exchanged per step: its trainable parameters (word embeddings frozen when
    teacher.freeze_word_embeddings), 4 bytes each."""
    from safetensors import safe_open

    params = load_project_params()["teacher"]
    count = 0
    with safe_open(str(REPO_ROOT / "models/teacher/model.safetensors"), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118  (safe_open has no __iter__)
            if params["freeze_word_embeddings"] and name.endswith("word_embeddings.weight"):
                continue
            count += math.prod(weights.get_slice(name).get_shape())
    return 4.0 * count


def summarise(teacher: dict[int, list[dict[str, float]]], stages: dict[str, Any], sizes: dict[str, Any]) -> dict:
    one, two = (min(runs, key=lambda run: run["seconds_per_step"]) for runs in (teacher[1], teacher[2]))
    efficiency = one["seconds_per_step"] / two["seconds_per_step"]  # same cores: data parallelism vs threads
    project = load_project_params()
    params = project["teacher"]
    teacher_steps = math.ceil(project["balance"]["teacher_size"] / params["batch_size"] * params["epochs"])
    gradient_bytes = trainable_gradient_bytes()
    teacher_rows = [[f"{processes} × {2 // processes} thread{'s' if processes == 1 else ''}",
                     f"{run['seconds']:.1f}", f"{run['seconds_per_step']:.3f}", f"{run['cpu_seconds']:.0f}",
                     f"{run['validation_macro_f1']:.3f}"]
                    for processes, run in ((1, one), (2, two))]
    measured_rows = [[stage, f"{seconds:.0f}"] for stage, seconds in stages["seconds"].items()]
    projected_rows = []
    for languages in LANGUAGES:
        for workers in WORKERS:
            projected = projection(stages["seconds"], languages, workers, efficiency, teacher_steps,
                                   gradient_bytes, params["batch_size"])
            projected_rows.append([languages, workers, f"{projected['wall'] / 3600:.2f}",
                                   f"{projected['cpu'] / 3600:.2f}",
                                   f"{projected['bottleneck']} ({100 * projected['bottleneck_share']:.0f}%)"])
    return {
        "name": "scaling", "title": "10. Scaling out: the teacher in 2 processes, projected wall time and CPU-hours",
        "config": {**sizes, "teacher_steps_per_run": teacher_steps, "gradient_megabytes": gradient_bytes / 1e6,
                   "cores_per_worker": CORES_PER_WORKER,
                   "network_gigabytes_per_second": NETWORK_BYTES_PER_SECOND / 1e9},
        "teacher": teacher, "stages": stages, "ratios": {"teacher_two_process_efficiency": efficiency},
        "tables": [
            {"title": f"Teacher fine-tuning, {sizes['steps']} steps of the default teacher set, 2 cores "
                      "(wall includes model loading and, for 2 processes, their start)",
             "columns": ["processes", "wall s", "s / step (loop)", "CPU s", "validation macro-F1 (mean)"],
             "rows": teacher_rows},
            {"title": "Measured stage run times (s): the last full teacher run (started "
                      f"{stages['teacher_started']}) and each stage's run nearest to it",
             "columns": ["stage", "seconds"], "rows": measured_rows},
            {"title": "Projected run: wall hours, CPU-hours and the stage that binds",
             "columns": ["languages", "workers", "wall h", "CPU-hours", "bottleneck (share of wall)"],
             "rows": projected_rows}],
        "notes": [
            f"2 data-parallel processes with 1 thread each run a teacher step at {efficiency:.2f}x the speed of one "
            "process with 2 threads on the same 2 cores: that factor is the projection's parallel efficiency per "
            "added process; the gradient exchange between machines is added on top "
            f"({gradient_bytes / 1e6:.0f} MB per step, ring all-reduce at {NETWORK_BYTES_PER_SECOND / 1e9:.2f} GB/s).",
            "Each worker is a 2-core machine like this one. The teacher set stays at balance.teacher_size rows, so "
            "teacher training does not grow with languages; its processes are capped at the global batch size.",
            "Students, the soft-label scoring of each language and each language's evaluation quality fan out "
            "(ceil(languages / workers) waves of the measured mean per language). Serial, growing with the number "
            "of languages on any number of workers: the rest of soft_labels (ensemble weights, writing the "
            "folder), the speed measurements of evaluate (never taken while workers compete), the TF-IDF "
            "baseline (one stage) and registration (serial by design: the registry lock). Data preparation "
            "scales with the number of languages.",
            "Share of the stage in per-language tasks (the part that fans out), from the latest run with them: "
            + ", ".join(f"{stage} {100 * share['share']:.0f}% ({share['run_started']})"
                        for stage, share in stages["fanned_shares"].items()) + ".",
            "The bottleneck column names the largest term of the projected wall time.",
        ],
    }
