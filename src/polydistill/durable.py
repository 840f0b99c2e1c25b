"""Crash-safe replacement of folders: checkpoints and best models (marked complete), and stage outputs.

A folder is written in full in a staging sibling and fsynced; for the folders a rerun loads, a completion marker is
written too. Replacing moves the old copy aside, renames the staging folder into place and only then removes the
old copy. Whatever instant a kill lands on, one complete copy survives: `intact_directory` finds it (the folder
itself, or the copy moved aside, which it renames back) and removes partial leftovers, so a rerun never loads a
half-written or half-deleted folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from polydistill.faults import kill_point

COMPLETE_MARKER = ".complete"


def staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.staging")


def retired_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def new_staging(target: Path) -> Path:
    """An empty staging folder for `target` (leftovers of an earlier attempt removed)."""
    intact_directory(target)
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_directory(staging: Path, target: Path, kill_prefix: str = "publish") -> None:
    """Mark the fully written `staging` folder complete and make it the new `target` (see replace_directory).

    For folders a rerun loads (checkpoints, the best model): `intact_directory` trusts only marked copies.
    """
    (staging / COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
    replace_directory(staging, target, kill_prefix)


def replace_directory(staging: Path, target: Path, kill_prefix: str = "publish") -> None:
    """Make `staging` the new `target` durably, a complete copy in place at every instant.

    The files are fsynced, the old target moved aside, staging renamed in, then the old copy removed. Stage outputs
    that DVC tracks use this without a completion mark: DVC's own hashes catch a partial output. kill_prefix names
    this writer's kill points (polydistill.faults): <prefix>:staged, <prefix>:moved-aside, <prefix>:removing-old.
    """
    for file in staging.rglob("*"):
        if file.is_file():
            _fsync(file)
    _fsync(staging)
    kill_point(f"{kill_prefix}:staged")
    retired = retired_path(target)
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        _fsync(target.parent)
        kill_point(f"{kill_prefix}:moved-aside")
    staging.rename(target)
    _fsync(target.parent)
    if retired.exists():
        _remove_tree(retired, kill_prefix)


def intact_directory(target: Path) -> Path | None:
    """`target` if a complete copy of it exists after recovery from an interrupted publish, else None.

    A complete copy moved aside is renamed back when `target` is missing or incomplete; incomplete copies and an
    unfinished staging folder are removed.
    """
    retired = retired_path(target)
    if not is_complete(target) and is_complete(retired):
        shutil.rmtree(target, ignore_errors=True)
        retired.rename(target)
        _fsync(target.parent)
    shutil.rmtree(retired, ignore_errors=True)
    shutil.rmtree(staging_path(target), ignore_errors=True)
    if target.exists() and not is_complete(target):
        shutil.rmtree(target)
    return target if target.exists() else None


def _remove_tree(folder: Path, kill_prefix: str) -> None:
    """Remove a retired copy, marker first, so a kill half-way leaves a folder recognisably incomplete."""
    (folder / COMPLETE_MARKER).unlink(missing_ok=True)
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        file.unlink()
        kill_point(f"{kill_prefix}:removing-old")
    shutil.rmtree(folder)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
