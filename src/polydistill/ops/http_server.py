"""polydistill's HTTP server for the router: `mlflow models serve`'s contract on a shorter path.

The registered router version is loaded as MLflow loads it (mlflow.pyfunc.load_model of a models:/ URI), and its
StudentRouter answers each request through `answer`, the method its pyfunc `predict` wraps. What MLflow's scoring
server adds per request is left out: parsing JSON into a pandas frame, the signature check, frames in and out, and
serialising a frame (about 2 ms of a one-text request on 2 cores, BENCHMARKS.md benchmark 2). The router checks
every request itself (text a non-empty string within the size limits, lang a configured language), so what reaches
the students is the same.

Contract, as `mlflow models serve`'s: GET /ping and /health answer 200 once the model is loaded; POST /invocations
takes JSON with one of `dataframe_records` (a list of rows), `dataframe_split` ({"columns", "data"}) or `inputs` /
`instances` (rows or columns), each row a text and an optional lang, and answers {"predictions": [row...]}; a bad
request gets HTTP 400 with {"error_code", "message"}.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

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


def create_app(router: Any) -> Any:
    """The ASGI app serving `router` (a loaded StudentRouter)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    def error(exception: MlflowException) -> Response:
        return JSONResponse({"error_code": exception.error_code, "message": exception.message},
                            status_code=exception.get_http_status_code())

    async def ping(_: Request) -> Response:
        return PlainTextResponse("\n")

    async def invocations(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error_code": "BAD_REQUEST", "message": "send the rows as application/json"},
                                status_code=415)
        try:
            texts, langs = request_rows(json.loads(await request.body()))
            answers = await run_in_threadpool(router.answer, texts, langs)
        except json.JSONDecodeError as failure:
            return error(bad_request(f"the body is not valid JSON: {failure}"))
        except MlflowException as failure:
            return error(failure)
        return Response(json.dumps({"predictions": answers}), media_type="application/json")

    return Starlette(routes=[Route("/ping", ping), Route("/health", ping),
                             Route("/invocations", invocations, methods=["POST"])])


def load_router(model_uri: str) -> Any:
    """The StudentRouter inside a registered router version, loaded (its load_context run) by MLflow."""
    import mlflow

    router = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not callable(getattr(router, "answer", None)):
        raise SystemExit(f"{model_uri} was built before polydistill's HTTP server: serve it with `--server mlflow`, "
                         "or rebuild the router (`dvc repro` or `polydistill promote --lang <lang>`)")
    return router


def server_command(server: str, python: str, model_uri: str, host: str, port: int) -> list[str]:
    """The command line that serves the router `model_uri` with `server` (one of SERVERS) from `python`'s env."""
    if server == "polydistill":
        return [python, "-m", "polydistill.ops.http_server", model_uri, "--host", host, "--port", str(port)]
    if server == "mlflow":
        return [str(Path(python).with_name("mlflow")), "models", "serve", "-m", model_uri, "--env-manager", "local",
                "-h", host, "-p", str(port)]
    raise ValueError(f"unknown server {server!r}; one of {SERVERS}")


def main(argv: list[str] | None = None) -> None:
    """`python -m polydistill.ops.http_server MODEL_URI [--host H] [--port P]`: serve until SIGTERM or Ctrl-C."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uri", help="the router, e.g. models:/polydistill-router@champion")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = load_router(arguments.model_uri)
    log.info("serving %s on http://%s:%d", arguments.model_uri, arguments.host, arguments.port)
    uvicorn.run(create_app(router), host=arguments.host, port=arguments.port, log_level="info")


if __name__ == "__main__":
    main()
