"""The `polydistill` command line: run the pipeline, predict, explain, promote/rollback, status, serve, monitor,
schedule, MLflow UI, an MLflow tracking server on PostgreSQL.

Commands act on the project in POLYDISTILL_ROOT, else the current directory (its params.yaml, mlflow.db, flows/).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from polydistill.config import load_params, project_root, set_offline_environment

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)

QUIET_PROGRESS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                  "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
SERVER_STOP_GRACE_S = 30  # seconds a stopped model server gets to finish its requests
STATUS_COLUMNS = (("lang", "lang", "{}"), ("champion", "champion", "{}"), ("challenger", "challenger", "{}"),
                  ("macro_f1", "macro-F1", "{:.4f}"), ("retention", "retention", "{:.1%}"),
                  ("weights_mb", "size MB", "{:.1f}"), ("promoted_at", "champion since", "{}"))


@app.callback()
def setup() -> None:
    """Offline environment; no progress bars when the output is not a terminal (they would flood logs)."""
    set_offline_environment()
    if not sys.stdout.isatty():
        for name, value in QUIET_PROGRESS.items():
            os.environ.setdefault(name, value)


def project() -> tuple[Path, dict[str, Any]]:
    root = project_root()
    return root, load_params(root / "params.yaml")


def run_module(root: Path, *arguments: str) -> None:
    """Run `python -m <arguments>` in the project root and exit with its status when it fails."""
    completed = subprocess.run([sys.executable, "-m", *arguments], cwd=root,
                               env={**os.environ, "POLYDISTILL_ROOT": str(root)})
    if completed.returncode != 0:
        raise typer.Exit(completed.returncode)


@app.command()
def run(executor: Annotated[str, typer.Option(help="serial (dvc repro) or dask (the per-language stages at once "
                                                   "on Dask workers); default: params.yaml executor.kind.")] = "",
        address: Annotated[str, typer.Option(help="A Dask scheduler (tcp://host:8786) instead of a local cluster.")
                           ] = "") -> None:
    """Run the whole pipeline once as a Prefect flow: dvc pull (with a remote), dvc repro, dvc push."""
    root, _ = project()
    options = [*(["--executor", executor] if executor else []), *(["--address", address] if address else [])]
    run_module(root, "flows.pipeline", "run", *options)


@app.command()
def predict(texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
            lang: Annotated[str | None, typer.Option(help="Language of every text (default: detect).")] = None
            ) -> None:
    """Classify texts with the champion students (the router picks each text's language unless --lang is given).

    Prints one tab-separated line per text: lang, label, score, student version, text.
    """
    from polydistill.ops import serving

    root, params = project()
    with registry_errors_as_one_line():
        rows = serving.predict(root, params["registry"], texts, lang)
    for text, row in zip(texts, rows, strict=True):
        if row["status"] != "ok":
            typer.echo(f"{row['lang'] or '-'}\t-\t-\t-\t{text}\t({row['status']})")
        else:
            typer.echo(f"{row['lang']}\t{row['label']}\t{row['score']:.4f}\tv{row['student_version']}\t{text}")


@app.command()
def explain(text: Annotated[str, typer.Argument(help="The text to explain.")],
            lang: Annotated[str | None, typer.Option(help="Its language (default: detect among the configured).")]
            = None,
            as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a coloured line.")] = False) -> None:
    """A student's answer for a text and each of its tokens' share in it (integrated gradients).

    Green tokens push towards the answer, red ones away from it, the stronger the colour the larger the share.
    """
    from polydistill.model.explain import explain_text

    root, params = project()
    settings, languages = params["explain"], params["data"]["languages"]
    lang = lang or detected_language(text, languages)
    folder = root / settings["student"].format(lang=lang)
    if lang not in languages or not (folder / "config.json").exists():
        typer.echo(f"no student for '{lang}' at {folder} (languages: {', '.join(languages)}): run `make run` first",
                   err=True)
        raise typer.Exit(1)
    explanation = explain_text(folder, text, settings["max_length"], settings["steps"])
    if as_json:
        typer.echo(json.dumps({"lang": lang, **explanation.as_dict()}, ensure_ascii=False))
        return
    from rich.console import Console

    Console().print(coloured_tokens(explanation))
    typer.echo(f"{lang}\t{explanation.label}\t{explanation.probability:.4f}\t(logit {explanation.logit:+.3f}, "
               f"baseline {explanation.baseline_logit:+.3f}, attributions sum "
               f"{sum(explanation.attributions):+.3f}, gap {explanation.completeness_gap:.3f})")


def detected_language(text: str, languages: list[str]) -> str:
    """The configured language lingua finds in the text; one line and exit status 1 when it finds none."""
    from polydistill.ops.router import iso_code, language_detector

    language = language_detector(languages).detect_language_of(text)
    if language is None:
        typer.echo("language not recognised: give --lang", err=True)
        raise typer.Exit(1)
    return iso_code(language)


def coloured_tokens(explanation: Any) -> Any:
    """The text as the student's tokens, each on a background from red (against) to green (for the answer)."""
    from rich.text import Text

    scale = max((abs(value) for value in explanation.attributions), default=0.0) or 1.0
    line = Text()
    for token, special, value in zip(explanation.tokens, explanation.special, explanation.attributions,
                                     strict=True):
        if special:
            continue
        strength = int(200 * abs(value) / scale)
        colour = f"rgb({55 + strength},55,55)" if value < 0 else f"rgb(55,{55 + strength},55)"
        line.append(token.replace("\u2581", " "), style=f"white on {colour}")
    return line


@contextmanager
def registry_errors_as_one_line() -> Iterator[None]:
    """A registry refusal (no champion, no router, the lock held...) as one line on stderr and exit status 1."""
    from polydistill.ops.registry import RegistryError

    try:
        yield
    except RegistryError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error


def refresh_router(root: Path, params: dict[str, Any]) -> None:
    from polydistill.ops import serving

    version = serving.register_router(root, params["registry"], params["data"]["languages"])
    typer.echo(f"router: version {version}" if version else "router: not built (no language has a champion)")


@app.command()
def promote(lang: Annotated[str, typer.Option(help="Language of the student.")],
            version: Annotated[int | None, typer.Option(help="Version to promote (default: the challenger).")] = None,
            force: Annotated[bool, typer.Option(help="Promote even if the gate refuses.")] = False) -> None:
    """Promote a student version to champion if it passes the gate (exit status 1 when refused)."""
    from polydistill.ops import promotion

    root, params = project()
    with registry_errors_as_one_line():
        result = promotion.promote(root, params["registry"], lang, version, force)
    for reason in result.reasons:
        typer.echo(f"  {reason}")
    if not result.promoted:
        typer.echo(f"{lang}: version {result.version} stays challenger; champion is {result.champion}")
        raise typer.Exit(1)
    typer.echo(f"{lang}: version {result.version} is champion (was {result.previous_champion})")
    with registry_errors_as_one_line():
        refresh_router(root, params)


@app.command()
def rollback(lang: Annotated[str, typer.Option(help="Language of the student.")]) -> None:
    """Make the previous champion champion again (refused when there is none)."""
    from polydistill.ops import promotion

    root, params = project()
    with registry_errors_as_one_line():
        result = promotion.rollback(root, params["registry"], lang)
        typer.echo(f"{lang}: {result.reasons[0]}")
        refresh_router(root, params)


def format_cell(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


@app.command()
def status() -> None:
    """A table of each language's champion and challenger with the champion's macro-F1, retention, size, date."""
    from polydistill.ops import promotion

    root, params = project()
    rows = promotion.status(root, params["registry"], params["data"]["languages"])
    table = [[title for _, title, _ in STATUS_COLUMNS]]
    table += [[format_cell(row[key], pattern) for key, _, pattern in STATUS_COLUMNS] for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(STATUS_COLUMNS))]
    for line in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@app.command()
def serve(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5001,
          server: Annotated[str, typer.Option(help="polydistill (ops/http_server.py: mlflow's contract without its "
                                                   "per-request frames and schema check) or mlflow (mlflow models "
                                                   "serve).")] = "polydistill",
          host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
          watch: Annotated[float, typer.Option(help="Seconds between checks of the router's champion alias; on a "
                                                    "change polydistill's server swaps in the new version, mlflow's "
                                                    "is restarted on it (0: never).")] = 30.0,
          log_inference: Annotated[bool, typer.Option(help="Record every answer in the inference log (params "
                                                           "monitor.log) for `polydistill monitor`.")] = False,
          log_text: Annotated[bool, typer.Option(help="Keep the raw text in the inference log (needed for the "
                                                      "monitor's shadow teacher; off: a SHA-256 only).")] = False
          ) -> None:
    """Serve the champion router over HTTP (POST /invocations), by polydistill's server or mlflow models serve."""
    from polydistill.ops import http_server, inference_log, registry, tracking

    root, params = project()
    settings = params["registry"]
    name = registry.router_model_name(settings["prefix"])
    uri = tracking.tracking_uri(root, settings.get("tracking_uri"))
    environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,  # both: models:/ resolves
                   # against the registry URI, which an earlier mlflow.set_registry_uri may have exported
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    if server not in http_server.SERVERS:
        raise typer.BadParameter(f"--server must be one of {http_server.SERVERS}")
    if log_text and not log_inference:
        raise typer.BadParameter("--log-text needs --log-inference")
    if log_inference:
        environment[inference_log.LOG_ENV] = str(root / params["monitor"]["log"])
        environment[inference_log.TEXT_ENV] = "1" if log_text else "0"
        kept = "kept" if log_text else "not kept"
        typer.echo(f"inference log: {environment[inference_log.LOG_ENV]} (raw text {kept})", err=True)
    client = tracking.connect(root, settings)
    exit_on_sigterm()
    while True:
        with registry_errors_as_one_line():
            version = registry.alias_version(client, name, registry.CHAMPION)
            if version is None:
                raise registry.RegistryError(f"no router to serve ({name} has no champion): run `dvc repro` or "
                                             "`polydistill promote --lang <lang>` first")
        command = http_server.server_command(server, sys.executable, name, version, host, port, watch)
        restart_watch = 0.0 if server == "polydistill" else watch  # polydistill's follows the alias itself
        typer.echo(" ".join(command), err=True)
        process = subprocess.Popen(command, env=environment, start_new_session=True)  # own group: stop_model_server
        try:
            if restart_watch <= 0:
                raise typer.Exit(process.wait())
            while process.poll() is None and not promoted_since(client, name, version, restart_watch):
                pass
            if process.poll() is not None:
                raise typer.Exit(process.returncode)
            typer.echo(f"{name}: champion moved from version {version}; restarting the server", err=True)
        finally:  # also on SIGTERM and Ctrl-C
            stop_model_server(process)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks run (the default would end the process at once)."""
    def exit_now(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_now)


def stop_model_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after the grace period. mlflow starts
    uvicorn as a child that would outlive it and keep the port, so the whole group is stopped."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signum)
        if group_exited(server, SERVER_STOP_GRACE_S):
            break
    server.wait()


def group_exited(server: subprocess.Popen, within_s: float) -> bool:
    """Whether every process in the server's group exits within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        server.poll()  # reaps the group's leader once it has exited
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def promoted_since(client: Any, name: str, version: str, wait_s: float) -> bool:
    """Wait `wait_s` seconds, then whether the router's champion is another version than `version`."""
    from polydistill.ops.registry import CHAMPION, alias_version

    time.sleep(wait_s)
    current = alias_version(client, name, CHAMPION)
    return current is not None and current != version


@app.command()
def monitor(schedule: Annotated[bool, typer.Option(help="Serve a deployment with the cron of params.yaml "
                                                       "monitor.schedule instead of one report now.")] = False) -> None:
    """Report on served traffic (the inference log) against training per language: reports/monitor.html, an
    MLflow run, and the pipeline deployment started when enough languages are flagged."""
    root, _ = project()
    run_module(root, "flows.monitor", "serve" if schedule else "run")


@app.command()
def schedule() -> None:
    """Serve a Prefect deployment of the pipeline with the cron of params.yaml `schedule` (blocks).

    Needs a Prefect server: start one with `prefect server start --host 127.0.0.1` and point PREFECT_API_URL at it
    (http://127.0.0.1:4200/api). Trigger a run now with `prefect deployment run polydistill-pipeline/<deployment>`.
    """
    root, _ = project()
    run_module(root, "flows.pipeline", "serve")


tracking_app = typer.Typer(help="MLflow on a tracking server backed by PostgreSQL (params.yaml tracking_server).",
                           no_args_is_help=True)
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("start")
def tracking_start(port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (default: tracking_server.port).")] = 0
                   ) -> None:
    """Run PostgreSQL and `mlflow server` until interrupted; prints the MLFLOW_TRACKING_URI to use."""
    from polydistill.ops.tracking_server import TrackingServerSettings, tracking_server

    root, params = project()
    settings = TrackingServerSettings.from_params({**params["tracking_server"], **({"port": port} if port else {})})
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops both servers as Ctrl-C does
    with tracking_server(root, settings) as server:
        typer.echo(f"export MLFLOW_TRACKING_URI={server.url}    # in the shells that run the pipeline or serve",
                   err=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            typer.echo("stopping the tracking server and PostgreSQL", err=True)


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
       start: Annotated[bool, typer.Option(help="Start the UI instead of printing the command.")] = False) -> None:
    """Print (or start) the MLflow UI on the project's tracking store (credentials in the URI printed as ***)."""
    from polydistill.ops import tracking

    root, params = project()
    uri = tracking.tracking_uri(root, params["registry"].get("tracking_uri"))
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri, "-h", "127.0.0.1",
               "-p", str(port)]
    typer.echo(" ".join(command).replace(uri, tracking.redact_uri(uri)))
    if start:
        raise typer.Exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    app()
