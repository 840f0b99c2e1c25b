"""Serving: the `<prefix>-router` model that bundles every language's champion student (polydistill.ops.router),
loading it, and predicting with the champions.

The router is built from whichever languages have a champion; the others are answered "no champion for <lang>".
It is rebuilt when a champion changes, and when its build key changes: a hash of the code it ships (router.py,
runtime.py, inference_log.py), the configured languages and the router settings, kept as a version tag.
It is built outside the registry lock (it takes minutes), then its champion alias moves under the lock only if the
champions it bundles are still the champions; otherwise it is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polydistill.ops.registry import (
    CHAMPION,
    STUDENT_REQUIREMENTS,
    RegistryError,
    alias_version,
    history_in_step,
    registry_lock,
    router_model_name,
    set_champion,
    student_model_name,
)
from polydistill.ops.tracking import connect, experiment_id, pinned_requirements, quiet_model_logging

log = logging.getLogger(__name__)

ROUTER_REQUIREMENTS = (*STUDENT_REQUIREMENTS, "pandas", "lingua-language-detector")
BUILD_KEY_TAG = "build_key"


def router_code() -> list[str]:
    """The files the router model ships: its pyfunc, then its code_paths."""
    from polydistill.model import runtime
    from polydistill.ops import inference_log, router

    return [router.__file__, runtime.__file__, inference_log.__file__]


def router_requirements(runtime: str) -> tuple[str, ...]:
    """The packages a router serving its students in `runtime` needs."""
    from polydistill.model.runtime import EXTRA_REQUIREMENTS

    return (*ROUTER_REQUIREMENTS, *EXTRA_REQUIREMENTS.get(runtime, ()))


def build_key(settings: Mapping[str, Any], languages: list[str]) -> str:
    """A hash of what a router version is built from besides its students: shipped code, languages, settings."""
    digest = hashlib.sha256(json.dumps({"languages": languages, "router": settings.get("router", {})},
                                       sort_keys=True).encode())
    for path in router_code():
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def router_signature() -> Any:
    """The router's signature: text and an optional lang in; lang, label, score, student version and status out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text"), ColSpec("string", "lang", required=False)]),
        outputs=Schema([ColSpec("string", "lang"), ColSpec("string", "label"), ColSpec("double", "score"),
                        ColSpec("string", "student_version"), ColSpec("string", "status")]))


def champions(client: Any, prefix: str, languages: list[str]) -> dict[str, str]:
    """Each language's champion version, for the languages that have one."""
    versions = {lang: alias_version(client, student_model_name(prefix, lang), CHAMPION) for lang in languages}
    return {lang: version for lang, version in versions.items() if version is not None}


def bundled_versions(client: Any, name: str, version: str) -> dict[str, str]:
    """The student versions a router version bundles (from its student.<lang> tags)."""
    tags = client.get_model_version(name, version).tags
    return {key.removeprefix("student."): value for key, value in tags.items() if key.startswith("student.")}


def log_router_version(client: Any, settings: Mapping[str, Any], languages: list[str],
                       versions: Mapping[str, str]) -> str:
    """Register a new router version bundling `versions` (no alias moved); returns its version."""
    import mlflow
    import pandas as pd

    from polydistill.ops import router

    name = router_model_name(settings["prefix"])
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = {lang: mlflow.artifacts.download_artifacts(
            f"models:/{student_model_name(settings['prefix'], lang)}/{version}", dst_path=f"{scratch}/{lang}")
            for lang, version in versions.items()}
        config = {"languages": languages, "student_versions": dict(versions), **settings.get("router", {})}
        example = pd.DataFrame({"text": [router.EXAMPLE_TEXTS.get(lang, "example") for lang in versions]})
        with mlflow.start_run(experiment_id=experiment_id(client, settings["experiment"]), run_name="router",
                              tags={"stage": "router"}), quiet_model_logging():
            info = mlflow.pyfunc.log_model(
                name="router", python_model=router.__file__, artifacts=artifacts, model_config=config,
                code_paths=router_code()[1:],
                signature=router_signature(), input_example=example,
                pip_requirements=pinned_requirements(router_requirements(config.get("runtime", "torch_fp32"))))
        tags = {f"student.{lang}": student_version for lang, student_version in versions.items()}
        tags[BUILD_KEY_TAG] = build_key(settings, languages)
        return str(mlflow.register_model(info.model_uri, name, await_registration_for=60, tags=tags).version)


def register_router(root: Path, settings: Mapping[str, Any], languages: list[str]) -> str | None:
    """Bundle the champions into a new `<prefix>-router` version and make it champion.

    Returns the router version (the current one when it already bundles these champions with the same build
    key), or None when no language has a champion yet.
    """
    client = connect(root, settings)
    name = router_model_name(settings["prefix"])
    for _ in range(int(settings["router"]["build_attempts"])):
        versions = champions(client, settings["prefix"], languages)
        if not versions:
            log.warning("router not built: no language has a champion")
            return None
        current = alias_version(client, name, CHAMPION)
        if current and bundled_versions(client, name, current) == versions and \
                client.get_model_version(name, current).tags.get(BUILD_KEY_TAG) == build_key(settings, languages):
            log.info("router %s version %s already bundles the champions %s", name, current, versions)
            return current
        version = log_router_version(client, settings, languages, versions)
        with registry_lock(client.tracking_uri, settings["lock_timeout_s"]):
            if champions(client, settings["prefix"], languages) == versions:
                set_champion(client, name, version, [*history_in_step(client, name), version])
                log.info("router %s version %s bundles %s", name, version, versions)
                return version
        log.warning("a champion changed while router version %s was built; building again", version)
    raise RegistryError(f"champions kept changing during {settings['router']['build_attempts']} router builds; "
                        "run `polydistill promote` or the register stage again when promotions have settled")


def load_router(root: Path, settings: Mapping[str, Any]) -> Any:
    """The champion router as a pyfunc model."""
    import mlflow

    client = connect(root, settings)
    name = router_model_name(settings["prefix"])
    if alias_version(client, name, CHAMPION) is None:
        raise RegistryError(f"no router is registered yet ({name} has no champion): run `dvc repro` (the register "
                            "stage builds it) or `polydistill promote --lang <lang>`")
    with quiet_model_logging():
        return mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")


def predict(root: Path, settings: Mapping[str, Any], texts: list[str], lang: str | None = None) -> list[dict]:
    """Label texts with the champion students: lang's champion when given, else through the champion router."""
    import mlflow
    import pandas as pd

    if lang is None:
        return load_router(root, settings).predict(pd.DataFrame({"text": texts})).to_dict("records")
    client = connect(root, settings)
    name = student_model_name(settings["prefix"], lang)
    version = alias_version(client, name, CHAMPION)
    if version is None:
        raise RegistryError(f"{name} has no champion: promote one with `polydistill promote --lang {lang}`")
    with quiet_model_logging():
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    predictions = model.predict(texts)
    return [{"lang": lang, "label": row.label, "score": float(row.score), "student_version": version,
             "status": "ok"} for row in predictions.itertuples()]


def student_tokenizers(root: Path, settings: Mapping[str, Any], versions: Mapping[str, str]) -> dict[str, Any]:
    """Each language's tokenizer from the registered student version given for it (the version that served)."""
    import mlflow

    connect(root, settings)
    with quiet_model_logging():
        return {lang: mlflow.transformers.load_model(
                    f"models:/{student_model_name(settings['prefix'], lang)}/{version}",
                    return_type="components")["tokenizer"]
                for lang, version in versions.items()}
