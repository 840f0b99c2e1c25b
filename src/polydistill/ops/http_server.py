"""polydistill's HTTP server for the router: `mlflow models serve`'s contract on a shorter path, and a new champion
swapped in without a restart.

The registered router version is loaded as MLflow loads it (mlflow.pyfunc.load_model of a models:/ URI), and its
StudentRouter answers each request through `answer`, the method its pyfunc `predict` wraps. What MLflow's scoring
server adds per request is left out: parsing JSON into a pandas frame, the signature check, frames in and out, and
serialising a frame (about 3.5 ms of a one-text request on 2 cores, BENCHMARKS.md benchmark 2). The router checks
every request itself (text a non-empty string within the size limits, lang a configured language), so what reaches
the students is the same.

Contract, as `mlflow models serve`'s: GET /ping and /health answer 200 once the model is loaded; POST /invocations
takes JSON with one of `dataframe_records` (a list of rows), `dataframe_split` ({"columns", "data"}) or `inputs` /
`instances` (rows or columns), each row a text and an optional lang, and answers {"predictions": [row...]}; a bad
request gets HTTP 400 with {"error_code", "message"}. GET /model names the router version being served.

With a watch interval the server follows the alias: when it moves, the new version is loaded beside the old one,
new requests go to it, and the old one's inference threads stop once its last request is answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

log = logging.getLogger("polydistill.ops.http_server")  # also when run as __main__

SERVERS = ("polydistill", "mlflow")
INPUT_KEYS = ("dataframe_records", "dataframe_split", "inputs", "instances")


def bad_request(message: str) -> MlflowException:
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    return MlflowException(message, error_code=BAD_REQUEST)


def records_of(payload: Any) -> list[dict[str, Any]]:
    """The request's rows, from whichever of INPUT_KEYS the JSON body uses (exactly one)."""
    keys = [key for key in INPUT_KEYS if isinstance(payload, dict) and key in payload]
    if len(keys) != 1:
        raise bad_request(f"the JSON body needs exactly one of {list(INPUT_KEYS)}, got "
                          f"{list(payload) if isinstance(payload, dict) else type(payload).__name__}")
    value = payload[keys[0]]
    if keys[0] == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
                or not isinstance(value.get("data"), list):
            raise bad_request("dataframe_split needs 'columns' (a list) and 'data' (a list of rows)")
        return [dict(zip(value["columns"], row, strict=False)) if isinstance(row, list) else row
                for row in value["data"]]
    if isinstance(value, dict):  # columns: {"text": [...], "lang": [...]}
        columns = {name: column if isinstance(column, list) else [column] for name, column in value.items()}
        count = max((len(column) for column in columns.values()), default=0)
        if any(len(column) != count for column in columns.values()):
            raise bad_request("every column needs the same number of values")
        return [{name: column[row] for name, column in columns.items()} for row in range(count)]
    return value


def request_rows(payload: Any) -> tuple[list[Any], list[Any]]:
    """Texts and langs (None when absent) of a parsed JSON body, or a 400 saying what is wrong with it."""
    records = records_of(payload)
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise bad_request("expected rows as JSON objects with a 'text' field")
    if records and not any("text" in record for record in records):
        raise bad_request(f"missing column 'text' (got columns {sorted({key for r in records for key in r})})")
    return [record.get("text") for record in records], [record.get("lang") for record in records]


class ServedRouter:
    """The router version being served. `swap` puts another in its place while requests keep being answered: each
    request borrows the current router for its whole run, and a replaced router is closed when its last borrower
    returns it."""

    def __init__(self, name: str, version: str, router: Any) -> None:
        self.name, self.version, self.router = name, version, router
        self.lock = threading.Lock()
        self.borrowers: Counter[int] = Counter()  # id(router) -> requests running on it

    @contextmanager
    def borrowed(self) -> Iterator[Any]:
        with self.lock:
            router = self.router
            self.borrowers[id(router)] += 1
        try:
            yield router
        finally:
            with self.lock:
                self.borrowers[id(router)] -= 1
                retired = router is not self.router and not self.borrowers[id(router)]
            if retired:
                router.close()

    def swap(self, version: str, router: Any) -> None:
        with self.lock:
            old, self.version, self.router = self.router, version, router
            retired = not self.borrowers[id(old)]
        if retired:
            old.close()


def create_app(served: ServedRouter) -> Any:
    """The ASGI app serving `served`'s current router."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    def error(exception: MlflowException) -> Response:
        return JSONResponse({"error_code": exception.error_code, "message": exception.message},
                            status_code=exception.get_http_status_code())

    def answer(texts: list[Any], langs: list[Any]) -> list[dict[str, Any]]:
        with served.borrowed() as router:
            return router.answer(texts, langs)

    async def ping(_: Request) -> Response:
        return PlainTextResponse("\n")

    async def model(_: Request) -> Response:
        return JSONResponse({"name": served.name, "version": served.version})

    async def invocations(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error_code": "BAD_REQUEST", "message": "send the rows as application/json"},
                                status_code=415)
        try:
            texts, langs = request_rows(json.loads(await request.body()))
            answers = await run_in_threadpool(answer, texts, langs)
        except json.JSONDecodeError as failure:
            return error(bad_request(f"the body is not valid JSON: {failure}"))
        except MlflowException as failure:
            return error(failure)
        return Response(json.dumps({"predictions": answers}), media_type="application/json")

    return Starlette(routes=[Route("/ping", ping), Route("/health", ping), Route("/model", model),
                             Route("/invocations", invocations, methods=["POST"])])


def load_student_router(name: str, version: str) -> Any:
    """The StudentRouter inside router version `version` of `name`, loaded (its load_context run) by MLflow."""
    import mlflow

    router = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    if not all(callable(getattr(router, method, None)) for method in ("answer", "close")):
        raise MlflowException(f"{name} version {version} was built before polydistill's HTTP server: serve it with "
                              "`--server mlflow`, or rebuild the router (`dvc repro` or `polydistill promote`)")
    return router


def follow_alias(served: ServedRouter, client: Any, alias: str, interval_s: float, stop: threading.Event) -> None:
    """Every `interval_s` seconds, swap in the version `alias` points to when it has moved. A failed check or load
    is logged and the current version kept serving."""
    from polydistill.ops.registry import alias_version

    while not stop.wait(interval_s):
        try:
            version = alias_version(client, served.name, alias)
            if version is not None and version != served.version:
                log.info("%s@%s moved from version %s to %s: loading it", served.name, alias, served.version, version)
                previous = served.version
                served.swap(version, load_student_router(served.name, version))
                log.info("serving %s version %s (version %s retired)", served.name, version, previous)
        except Exception:  # noqa: BLE001 - keep answering with the version we have
            log.exception("could not follow %s@%s; still serving version %s", served.name, alias, served.version)


def server_command(server: str, python: str, name: str, version: str, host: str, port: int,
                   watch_s: float) -> list[str]:
    """The command line that serves router `name` from `python`'s environment: polydistill's server serves its
    champion and follows the alias every `watch_s` seconds (0: never); mlflow's serves `version` only."""
    from polydistill.ops.registry import CHAMPION

    if server == "polydistill":
        return [python, "-m", "polydistill.ops.http_server", name, "--alias", CHAMPION, "--host", host,
                "--port", str(port), "--watch", str(watch_s)]
    if server == "mlflow":
        return [str(Path(python).with_name("mlflow")), "models", "serve", "-m", f"models:/{name}/{version}",
                "--env-manager", "local", "-h", host, "-p", str(port)]
    raise ValueError(f"unknown server {server!r}; one of {SERVERS}")


def main(argv: list[str] | None = None) -> None:
    """`python -m polydistill.ops.http_server NAME [--alias A] [--watch S] [--host H] [--port P]`: serve until
    SIGTERM or Ctrl-C (the registry: MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI)."""
    import mlflow
    import uvicorn

    from polydistill.ops.registry import alias_version

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the registered router, e.g. polydistill-router")
    parser.add_argument("--alias", default="champion", help="the alias whose version is served")
    parser.add_argument("--watch", type=float, default=0.0, help="seconds between checks of the alias (0: never)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # this server's own lines; the libraries' INFO chatter stays off
    client = mlflow.MlflowClient()
    version = alias_version(client, arguments.name, arguments.alias)
    if version is None:
        raise SystemExit(f"{arguments.name} has no version with the alias {arguments.alias!r}")
    served = ServedRouter(arguments.name, version, load_student_router(arguments.name, version))
    stop = threading.Event()
    if arguments.watch > 0:
        threading.Thread(target=follow_alias, args=(served, client, arguments.alias, arguments.watch, stop),
                         name="follow-alias", daemon=True).start()
    log.info("serving %s version %s on http://%s:%d", arguments.name, version, arguments.host, arguments.port)
    try:
        uvicorn.run(create_app(served), host=arguments.host, port=arguments.port, log_level="info")
    finally:
        stop.set()


if __name__ == "__main__":
    main()
