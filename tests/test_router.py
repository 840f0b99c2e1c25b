"""The router model: the champion students of every language behind one pyfunc, in-process and over HTTP."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import (
    REGISTRY_LANGUAGES,
    VENV_BIN,
    free_port,
    prepare_registry_workspace,
    registry_settings,
    wait_for_http,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException

from polydistill.model.runtime import TextClassifier, for_runtime
from polydistill.ops import http_server, inference_log, pipeline_run, promotion, router, serving

MIXED = pd.DataFrame({"text": [
    "The film was a delight from start to finish.",
    "这家酒店的服务非常好，房间也很干净。",
    "Film je bil res dober, priporočam ga vsem prijateljem.",
    "What a boring, predictable and far too long movie.",
    "房间太小了，而且很吵，不会再来了。",
    "Vlada bi morala odstopiti, to je sramota za vse državljane.",
]})
EXPECTED_LANGS = ["en", "zh", "sl", "en", "zh", "sl"]


@pytest.fixture(scope="module")
def router_project(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path,
                   tiny_students: dict[str, Path]) -> Path:
    """Three registered, promoted students and the router built from them."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("router") / "project"
    params = prepare_registry_workspace(root, mlflow_db_template, tiny_students)
    pipeline_run.log_pipeline_run(root, params)
    for lang in REGISTRY_LANGUAGES:
        assert promotion.promote(root, params["registry"], lang).promoted
    assert serving.register_router(root, params["registry"], list(REGISTRY_LANGUAGES)) == "1"
    return root


@pytest.fixture(scope="module")
def loaded_router(router_project: Path) -> object:
    return serving.load_router(router_project, registry_settings())


def test_router_routes_a_mixed_batch_in_process(router_project: Path, loaded_router: object) -> None:
    output = loaded_router.predict(MIXED)
    assert list(output["lang"]) == EXPECTED_LANGS and set(output["status"]) == {"ok"}
    assert set(output["label"]) <= {"negative", "positive"} and output["score"].astype(float).between(0.5, 1).all()
    assert set(output["student_version"]) == {"1"}

    served = registry_settings()["router"]
    for lang in ("en", "zh"):  # each answer is the champion's, run in the serving runtime on the same batch
        parts = mlflow.transformers.load_model(f"models:/polydistill-student-{lang}@champion",
                                               return_type="components")
        student = TextClassifier(parts["tokenizer"], for_runtime(parts["model"], served["runtime"]),
                                 served["max_length"])
        rows = [row for row, expected in enumerate(EXPECTED_LANGS) if expected == lang]
        probabilities = student([MIXED["text"][row] for row in rows])
        assert list(output["label"][rows]) == [student.label_names[index] for index in probabilities.argmax(axis=1)]
        assert output["score"][rows].astype(float).tolist() == pytest.approx(probabilities.max(axis=1).tolist(),
                                                                             abs=1e-6)

    forced = loaded_router.predict(pd.DataFrame({"text": MIXED["text"][:3], "lang": ["zh", None, pd.NA]}))
    assert list(forced["lang"]) == ["zh", "zh", "sl"]


def test_batches_spread_over_the_inference_threads_come_back_in_row_order(loaded_router: object) -> None:
    more = ["Terrible acting and a plot that makes no sense.", "服务态度很差，再也不来了。",
            "Hrana je bila okusna, osebje pa zelo prijazno.", "A warm, funny and clever little film.",
            "早餐很丰富，位置也方便。", "Predolgo sem čakal na odgovor, slaba izkušnja."]
    rows = pd.DataFrame({"text": [*MIXED["text"], *more]})  # four distinct texts per language
    model = loaded_router.unwrap_python_model()
    batch_size, model.batch_size = model.batch_size, 1  # twelve one-text batches over the two threads
    try:
        output = loaded_router.predict(rows)
    finally:
        model.batch_size = batch_size
    for row, (text, lang) in enumerate(zip(rows["text"], output["lang"], strict=True)):
        expected = model.students[lang]([text])[0]  # a one-text batch: the same input wherever it runs
        assert float(output["score"][row]) == pytest.approx(float(expected.max()), abs=1e-6)


UNSERVED = ["Le film était vraiment magnifique, je le recommande à tous.",
            "Der Film war langweilig und viel zu lang.",
            "この映画はとても面白かった。"]


def test_text_in_a_language_without_a_student_is_answered_as_unsupported(loaded_router: object) -> None:
    output = loaded_router.predict(pd.DataFrame({"text": [*UNSERVED, "12345", MIXED["text"][0]]}))
    assert list(output["status"]) == ["unsupported language (fr)", "unsupported language (de)",
                                      "unsupported language (ja)", "language not recognised", "ok"]
    assert output["label"][:4].isna().all() and output["student_version"][:4].isna().all()
    assert output["label"][4] in {"negative", "positive"}


CONFIGURED = ["en", "es", "id", "sl", "zh"]


def test_the_screens_false_alarms_are_routed_and_confirmed_foreign_text_is_refused() -> None:
    identifier = router.LanguageIdentifier(CONFIGURED, screen_confidence=0.5, confirm_confidence=0.9)
    false_alarms = ["Pelayanannya lambat dan makanannya dingin.", "Qué día tan bonito, me encanta!"]
    foreign = ["Obrigado pela ajuda, foi muito útil.", "Ovo je bio jako dobar film, preporučujem."]
    for text in false_alarms:  # the 75-language screen alone takes these for Malay and Esperanto
        top = identifier.screen.compute_language_confidence_values(text)[0]
        assert top.value >= 0.5 and router.iso_code(top.language) not in CONFIGURED
    assert identifier.identify(false_alarms + foreign) == [
        ("id", "ok"), ("es", "ok"), (None, "unsupported language (pt)"), (None, "unsupported language (hr)")]


def test_router_is_rebuilt_only_when_a_champion_or_its_build_changes(tmp_path: Path, router_project: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert serving.register_router(router_project, registry_settings(), list(REGISTRY_LANGUAGES)) == "1"
    copy = tmp_path / "project"  # the module's router stays as it is for the other tests
    shutil.copytree(router_project, copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported the module's store
    settings = registry_settings()
    settings["router"] = {**settings["router"], "batch_size": settings["router"]["batch_size"] + 1}
    assert serving.register_router(copy, settings, list(REGISTRY_LANGUAGES)) == "2"
    assert serving.register_router(copy, settings, list(REGISTRY_LANGUAGES)) == "2"


def test_the_router_pins_what_its_runtime_needs(router_project: Path) -> None:
    """The logged router's requirements name onnxruntime and onnx at the installed versions only when its
    students run in onnx_int8."""
    from polydistill.ops import tracking

    assert registry_settings()["router"]["runtime"] == "onnx_int8"
    tracking.connect(router_project, registry_settings())
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/polydistill-router/1")).read_text().split()
    for package in ("onnxruntime", "onnx", "torch", "lingua-language-detector"):
        assert f"{package}=={importlib.metadata.version(package)}" in requirements
    assert "onnxruntime" not in serving.router_requirements("torch_int8")


def test_languages_without_a_champion_are_answered_explicitly(tmp_path: Path, mlflow_db_template: Path,
                                                              tiny_students: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "project"
    params = prepare_registry_workspace(root, mlflow_db_template, tiny_students)
    settings = params["registry"]
    with pytest.raises(promotion.RegistryError, match="no router is registered yet"):
        serving.load_router(root, settings)
    pipeline_run.log_pipeline_run(root, params)
    assert promotion.promote(root, settings, "zh").promoted  # en and sl stay challengers
    assert serving.register_router(root, settings, list(REGISTRY_LANGUAGES)) == "1"
    output = serving.load_router(root, settings).predict(MIXED)
    assert list(output["status"]) == ["no champion for en", "ok", "no champion for sl"] * 2
    assert list(output["student_version"]) == [None, "1", None] * 2


LIMITS = registry_settings()["router"]


@pytest.mark.parametrize(("frame", "message"), [
    (pd.DataFrame({"text": ["fine", "   "]}), "row 1: text is empty"),
    (pd.DataFrame({"text": ["fine", 42]}, dtype=object), "row 1: text must be a string"),
    (pd.DataFrame({"text": ["fine"], "lang": ["xx"]}), "lang 'xx' is not one of"),
    (pd.DataFrame({"text": ["fine"], "lang": [3.5]}), "column lang"),  # refused by the signature
    (pd.DataFrame({"text": ["fine"] * (LIMITS["max_rows"] + 1)}), f"the limit is {LIMITS['max_rows']}"),
    (pd.DataFrame({"text": ["a" * (LIMITS["max_text_chars"] + 1)]}), "row 0: text has"),
])
def test_router_rejects_bad_requests_in_process(loaded_router: object, frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(MlflowException, match=message) as raised:
        loaded_router.predict(frame)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


CELLS = st.one_of(st.none(), st.text(max_size=40), st.integers(), st.floats(), st.booleans(),
                  st.sampled_from(["en", "sl", "zh", "", "xx"]), st.lists(st.integers(), max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"text": CELLS}, optional={"lang": CELLS}), min_size=1, max_size=4))
def test_router_answers_any_request_body_or_refuses_it_with_a_400(loaded_router: object, http_client: object,
                                                                  rows: list[dict]) -> None:
    """Fuzzed request bodies, to the pyfunc and to polydistill's server: an answer for every row or an
    INVALID_PARAMETER_VALUE (HTTP 400), never a crash. The server answers what the router's `answer` does (the
    pyfunc's signature check also refuses some bodies `answer` accepts, e.g. a lang column of nulls only)."""
    response = http_client.post("/invocations", content=json.dumps({"dataframe_records": rows}),  # NaN allowed
                                headers={"Content-Type": "application/json"})
    try:
        expected = loaded_router.unwrap_python_model().answer([row["text"] for row in rows],
                                                              [row.get("lang") for row in rows])
    except MlflowException as error:
        assert error.error_code == "INVALID_PARAMETER_VALUE" and response.status_code == 400, response.text
    else:
        assert response.status_code == 200 and response.json()["predictions"] == expected
    try:
        output = loaded_router.predict(pd.DataFrame(rows))
    except MlflowException as error:
        assert error.error_code == "INVALID_PARAMETER_VALUE"
        return
    assert len(output) == len(rows) and output["status"].notna().all()


@pytest.fixture(scope="module")
def http_client(loaded_router: object) -> Iterator[object]:
    """polydistill's HTTP server app around the module's router, in process."""
    from starlette.testclient import TestClient

    served = http_server.ServedRouter("polydistill-router", "1", loaded_router.unwrap_python_model())
    with TestClient(http_server.create_app(served)) as client:
        yield client


def test_a_replaced_router_is_closed_once_its_last_request_is_answered(router_project: Path) -> None:
    first, second, third = (serving.load_router(router_project, registry_settings()).unwrap_python_model()
                            for _ in range(3))
    served = http_server.ServedRouter("polydistill-router", "1", first)
    served.swap("2", second)  # nothing runs on the first: closed at once
    with pytest.raises(RuntimeError, match="shutdown"):
        first.answer(["A fine film."], ["en"])
    with served.borrowed() as running:
        served.swap("3", third)
        assert running is second and served.version == "3"
        assert running.answer(["A fine film."], ["en"])[0]["status"] == "ok"  # a request under way finishes
    with pytest.raises(RuntimeError, match="shutdown"):
        second.answer(["A fine film."], ["en"])
    with served.borrowed() as running:
        assert running is third and running.answer(["A fine film."], ["en"])[0]["status"] == "ok"


WITH_LANGS = pd.DataFrame({"text": MIXED["text"], "lang": [None, "zh", None, "en", None, "sl"]}, dtype=object)


@pytest.mark.parametrize("body", [
    {"dataframe_records": WITH_LANGS.to_dict("records")},
    {"dataframe_split": WITH_LANGS.to_dict("split", index=False)},
    {"inputs": WITH_LANGS.to_dict("list")},
    {"instances": WITH_LANGS.to_dict("records")},
], ids=["dataframe_records", "dataframe_split", "inputs columns", "instances"])
def test_polydistill_server_answers_each_input_format_as_the_pyfunc_does(loaded_router: object, http_client: object,
                                                                        body: dict) -> None:
    response = http_client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == loaded_router.predict(WITH_LANGS).to_dict("records")
    assert http_client.get("/ping").status_code == http_client.get("/health").status_code == 200
    assert http_client.get("/model").json() == {"name": "polydistill-router", "version": "1"}


@pytest.mark.parametrize(("content", "content_type", "status", "message"), [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"dataframe_records": [{"text": "a"}], "inputs": {"text": ["b"]}}', "application/json", 400, "exactly one"),
    (b'{"rows": [{"text": "a"}]}', "application/json", 400, "exactly one"),
    (b'{"dataframe_records": [{"lang": "en"}]}', "application/json", 400, "missing column 'text'"),
    (b'{"dataframe_records": ["just text"]}', "application/json", 400, "JSON objects"),
    (b'{"dataframe_split": {"data": [["a"]]}}', "application/json", 400, "'columns'"),
    (b'{"inputs": {"text": ["a", "b"], "lang": ["en"]}}', "application/json", 400, "same number"),
    (b'{"dataframe_records": [{"text": "   "}]}', "application/json", 400, "row 0: text is empty"),
    (b'{"dataframe_records": [{"text": "fine", "lang": 3.5}]}', "application/json", 400, "lang 3.5 is not one"),
    (b"text\nfine\n", "text/csv", 415, "application/json"),
])
def test_polydistill_server_refuses_bad_requests_with_a_message(http_client: object, content: bytes,
                                                                content_type: str, status: int, message: str) -> None:
    response = http_client.post("/invocations", content=content, headers={"Content-Type": content_type})
    assert response.status_code == status and message in response.json()["message"], response.text


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def load_run(url: str, clients: int, requests_per_client: int) -> dict[str, float]:
    """Concurrent clients posting the mixed batch (bounded in count; 127.0.0.1 only): p50, p99, errors."""
    import statistics
    import time
    from concurrent.futures import ThreadPoolExecutor

    def one_request(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        status, _ = post(url, {"dataframe_records": MIXED.to_dict("records")})
        return status, (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one_request, range(clients * requests_per_client)))
    latencies = sorted(latency for _, latency in results)
    return {"requests": len(results), "errors": sum(status != 200 for status, _ in results),
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def serve_environment(root: Path) -> dict[str, str]:
    """This process's environment for `polydistill serve` of root's router: its own registry, not an inherited one."""
    return {**{name: value for name, value in os.environ.items() if name != "MLFLOW_TRACKING_URI"},
            "POLYDISTILL_ROOT": str(root)}


@contextmanager
def served_router(root: Path, environment: dict[str, str], port: int,
                  *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`polydistill serve` of root's router on port (its log in root/serve.log); yields the base URL and the CLI's
    process (whose process group is stopped on exit)."""
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(VENV_BIN / "polydistill"), "serve", "--port", str(port), *flags],
                                  env=environment, stdout=log, stderr=log, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_for_http(f"{base}/ping", 180, server):
            pytest.fail(f"server did not start: {log_path.read_text()}")
        yield base, server
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone when the test stopped the CLI itself
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_polydistill_server_swaps_in_a_new_champion_without_dropping_a_request(
        tmp_path: Path, router_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "project"  # the module's router stays version 1 for the other tests
    shutil.copytree(router_project, copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported the module's store
    statuses: list[int] = []
    stop = threading.Event()

    def keep_posting(url: str) -> None:
        while not stop.is_set():
            try:
                statuses.append(post(url, {"dataframe_records": MIXED.to_dict("records")})[0])
            except OSError:  # refused or reset: a dropped request
                statuses.append(0)

    with served_router(copy, serve_environment(copy), free_port(), "--watch", "1") as (base, _):
        assert get_json(f"{base}/model") == {"name": "polydistill-router", "version": "1"}
        client = threading.Thread(target=keep_posting, args=(f"{base}/invocations",))
        client.start()
        try:
            settings = registry_settings()
            settings["router"] = {**settings["router"], "batch_size": settings["router"]["batch_size"] + 1}
            assert serving.register_router(copy, settings, list(REGISTRY_LANGUAGES)) == "2"
            deadline = time.monotonic() + 120
            while get_json(f"{base}/model")["version"] != "2":
                assert time.monotonic() < deadline, (copy / "serve.log").read_text()
                time.sleep(0.5)
            answered_before_swap = len(statuses)
            while len(statuses) < answered_before_swap + 3:  # and it keeps answering on version 2
                time.sleep(0.2)
        finally:
            stop.set()
            client.join(timeout=60)
    assert len(statuses) > 3 and set(statuses) == {200}, statuses
    assert "version 1 retired" in (copy / "serve.log").read_text()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.parametrize("server", http_server.SERVERS)
def test_router_serves_over_http_answers_bad_requests_with_4xx_and_stops_on_sigterm(router_project: Path,
                                                                                     server: str) -> None:
    port = free_port()
    environment = serve_environment(router_project)
    log_path = router_project / "logs/inference.db"  # params monitor.log; each server's answers counted on their own
    logged_before = len(inference_log.read_log(log_path)) if log_path.exists() else 0
    with served_router(router_project, environment, port, "--log-inference", "--server",
                       server) as (base, serve):
        status, body = post(f"{base}/invocations", {"dataframe_records": MIXED.to_dict("records")})
        assert status == 200, body
        assert [row["lang"] for row in body["predictions"]] == EXPECTED_LANGS
        assert all(row["label"] in {"negative", "positive"} and row["student_version"] == "1"
                   for row in body["predictions"])
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"text": text} for text in UNSERVED]})
        assert status == 200 and all(row["status"].startswith("unsupported") for row in body["predictions"]), body

        status, body = post(f"{base}/invocations", {"dataframe_records": [{"text": ""}]})
        assert status == 400 and "text is empty" in body["message"]
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"lang": "en"}]})
        assert 400 <= status < 500, body
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"text": 7}]})
        assert 400 <= status < 500, body
        status, _ = post(f"{base}/invocations", {"dataframe_records": MIXED.to_dict("records")[:1]})
        assert status == 200, "the server keeps answering after bad requests"
        report = load_run(f"{base}/invocations", clients=4, requests_per_client=10)
        print(f"load run, 4 clients x 10 requests of {len(MIXED)} texts: {report}")
        assert report["errors"] == 0 and report["p99_ms"] >= report["p50_ms"] > 0
        logged = inference_log.read_log(log_path).iloc[logged_before:]
        answered = len(MIXED) + len(UNSERVED) + 1 + report["requests"] * len(MIXED)  # the 4xx requests: none
        assert len(logged) == answered and logged["text"].isna().all()
        assert (logged["status"] == "ok").sum() == answered - len(UNSERVED)

        serve.send_signal(signal.SIGTERM)  # the CLI only, as a process manager stopping it would
        assert serve.wait(timeout=60) == 128 + signal.SIGTERM
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the model server it started (mlflow's uvicorn child included) no longer holds the port
