"""The model registry: registered names, aliases, the champion history, the lock that serialises champion changes,
and idempotent registration of a student.

Registered models: `<prefix>-student-<lang>` (one Hugging Face student per language, transformers flavor) and
`<prefix>-router` (see polydistill.ops.serving). Aliases: `challenger` for the newest unpromoted version, `champion`
for the one that serves. The registered model tag `champion_history` is the stack of champion versions that
`rollback` pops; versions are never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polydistill.ops.tracking import folder_sha256, pinned_requirements, quiet_model_logging

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
MODEL_HASH_TAG = "model_sha256"
IDENTITY_TAGS = ("data_sha256", "teacher_fingerprint")  # with the model hash: "the same version" for registration
STUDENT_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors")


class RegistryError(RuntimeError):
    """A registry operation that cannot be carried out (no such version, nothing to roll back to...)."""


def student_model_name(prefix: str, lang: str) -> str:
    return f"{prefix}-student-{lang}"


def router_model_name(prefix: str) -> str:
    return f"{prefix}-router"


# ---------------------------------------------------------------------------------------------------- the lock


def lock_path(uri: str) -> Path:
    """The lock file for a store: beside a SQLite database (shared by every workspace and `dvc exp run --temp`
    copy that uses it), else one per URI in the temp folder (one host)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".lock")
    return Path(tempfile.gettempdir()) / f"polydistill-registry-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"


@contextmanager
def registry_lock(uri: str, timeout_s: float) -> Iterator[None]:
    """Hold the store's champion lock: promote, rollback and the router's alias move run one at a time and read
    the champion inside it."""
    from filelock import FileLock, Timeout

    path = lock_path(uri)
    try:
        with FileLock(path, timeout=timeout_s):
            yield
    except Timeout as error:
        raise RegistryError(f"the registry lock {path} is held by another process (waited {timeout_s} s); "
                            "retry when it finishes") from error


# ---------------------------------------------------------------------------------------------------- aliases


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points to; None when the alias or the registered model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return None
    return str(aliases[alias]) if alias in aliases else None


def champion_history(client: Any, name: str) -> list[str]:
    """The stack of champion versions (oldest first); empty when the model is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
    except MlflowException:
        return []


def history_in_step(client: Any, name: str) -> list[str]:
    """The champion history, with the current champion appended when a crash between the alias move and the
    history write left it out (the alias is the truth: it is what serves)."""
    history, champion = champion_history(client, name), alias_version(client, name, CHAMPION)
    if champion is not None and (not history or history[-1] != champion):
        log.warning("%s: champion history %s did not end at the champion %s; appended it", name, history, champion)
        history = [*history, champion]
    return history


def set_champion(client: Any, name: str, version: str, history: list[str]) -> None:
    """Move the champion alias and record the history stack; call inside registry_lock."""
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


# ---------------------------------------------------------------------------------------------------- registration


def student_signature() -> Any:
    """A student's signature: a column of texts in, label and score out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]))


def registered_version(client: Any, name: str, model_sha256: str, lineage_tags: Mapping[str, str]) -> str | None:
    """The version of `name` holding these exact weights from the same data and teacher, if one exists."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in sorted(versions, key=lambda v: int(v.version)):
        if version.tags.get(MODEL_HASH_TAG) == model_sha256 and all(
                version.tags.get(key) == lineage_tags.get(key) for key in IDENTITY_TAGS):
            return str(version.version)
    return None


def register_student(folder: Path, lang: str, tags: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """Log a Hugging Face student folder (transformers flavor) in the active run as a new version, made
    challenger; or, when the same weights from the same lineage are already registered (a rerun after a failure),
    reuse that version and move no alias."""
    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    client = mlflow.MlflowClient()
    name = student_model_name(prefix, lang)
    model_sha256 = folder_sha256(folder)
    run_id = mlflow.active_run().info.run_id
    existing = registered_version(client, name, model_sha256, tags)
    if existing is not None:
        log.info("%s version %s already holds these weights from the same lineage: reused", name, existing)
        return {"run_id": run_id, "model": name, "version": existing, "reused": True}
    all_tags = {**tags, "run_id": run_id, "lang": lang, "source": str(folder), MODEL_HASH_TAG: model_sha256}
    with quiet_model_logging():
        components = {"model": AutoModelForSequenceClassification.from_pretrained(folder),
                      "tokenizer": AutoTokenizer.from_pretrained(folder)}
        info = mlflow.transformers.log_model(
            components, name="student", task="text-classification",
            pip_requirements=pinned_requirements(STUDENT_REQUIREMENTS), signature=student_signature(),
            input_example=["an example sentence"])
        # tags in the same call that creates the version: a version never exists without its hash and lineage
        version = str(mlflow.register_model(info.model_uri, name, await_registration_for=60, tags=all_tags).version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    log.info("registered %s version %s (challenger)", name, version)
    return {"run_id": run_id, "model": name, "version": version, "reused": False}
