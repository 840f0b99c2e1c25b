"""The router model: the champion students of every language behind one pyfunc, in-process and over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import (
    REGISTRY_LANGUAGES,
    VENV_BIN,
    fixture_params,
    free_port,
    registry_settings,
    wait_for_http,
    write_evaluation,
    write_params,
)
from mlflow.exceptions import MlflowException

from polydistill.ops import registry

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
    root.mkdir()
    params = fixture_params(list(REGISTRY_LANGUAGES))
    params["registry"] = registry_settings()
    write_params(root, params)
    shutil.copy2(mlflow_db_template, root / "mlflow.db")
    for lang, student in tiny_students.items():
        shutil.copytree(student, root / f"models/students/{lang}/kd")
        write_evaluation(root, lang, 0.80, (0.74, 0.86), 0.95)
    registry.log_pipeline_run(root, params)
    for lang in REGISTRY_LANGUAGES:
        assert registry.promote(root, params["registry"], lang).promoted
    assert registry.register_router(root, params["registry"], list(REGISTRY_LANGUAGES)) == "1"
    return root


def test_router_routes_a_mixed_batch_in_process(router_project: Path) -> None:
    settings = registry_settings()
    router = registry.load_router(router_project, settings)
    output = router.predict(MIXED)
    assert list(output["lang"]) == EXPECTED_LANGS
    assert set(output["label"]) <= {"negative", "positive"} and output["score"].between(0.5, 1).all()
    assert set(output["student_version"]) == {"1"}

    direct = {lang: mlflow.pyfunc.load_model(f"models:/polydistill-student-{lang}@champion") for lang in ("en", "zh")}
    for row, lang in ((0, "en"), (1, "zh")):
        expected = direct[lang].predict([MIXED["text"][row]]).iloc[0]
        assert output["label"][row] == expected["label"]
        assert output["score"][row] == pytest.approx(expected["score"], abs=1e-5)

    forced = router.predict(pd.DataFrame({"text": MIXED["text"][:2], "lang": ["zh", None]}))
    assert list(forced["lang"]) == ["zh", "zh"]


def test_router_is_rebuilt_only_when_a_champion_changes(router_project: Path) -> None:
    settings = registry_settings()
    assert registry.register_router(router_project, settings, list(REGISTRY_LANGUAGES)) == "1"


@pytest.mark.parametrize(("frame", "message"), [
    (pd.DataFrame({"text": ["fine", "   "]}), "row 1: text is empty"),
    (pd.DataFrame({"text": ["fine", 42]}, dtype=object), "row 1: text must be a string"),
    (pd.DataFrame({"text": ["fine"], "lang": ["xx"]}), "lang 'xx' is not one of"),
])
def test_router_rejects_bad_requests_in_process(router_project: Path, frame: pd.DataFrame, message: str) -> None:
    router = registry.load_router(router_project, registry_settings())
    with pytest.raises(MlflowException, match=message) as raised:
        router.predict(frame)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.slow
def test_router_serves_over_http_and_answers_bad_requests_with_4xx(router_project: Path) -> None:
    port = free_port()
    environment = {**os.environ, "POLYDISTILL_ROOT": str(router_project), "MLFLOW_TRACKING_URI": ""}
    environment.pop("MLFLOW_TRACKING_URI")
    log_path = router_project / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([str(VENV_BIN / "polydistill"), "serve", "--port", str(port)], env=environment,
                                  stdout=log, stderr=log, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_for_http(f"{base}/ping", 120, server):
            pytest.fail(f"server did not start: {log_path.read_text()}")

        status, body = post(f"{base}/invocations", {"dataframe_records": MIXED.to_dict("records")})
        assert status == 200, body
        assert [row["lang"] for row in body["predictions"]] == EXPECTED_LANGS
        assert all(row["label"] in {"negative", "positive"} and row["student_version"] == "1"
                   for row in body["predictions"])

        status, body = post(f"{base}/invocations", {"dataframe_records": [{"text": ""}]})
        assert status == 400 and "text is empty" in body["message"]
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"lang": "en"}]})
        assert 400 <= status < 500, body
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"text": 7}]})
        assert 400 <= status < 500, body
        status, _ = post(f"{base}/invocations", {"dataframe_records": MIXED.to_dict("records")[:1]})
        assert status == 200, "the server keeps answering after bad requests"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
