"""Cross-fitting folds: which fold a row belongs to, decided by its id alone."""

from __future__ import annotations

import hashlib


def fold_of(row_id: str, folds: int) -> int:
    """The cross-fitting fold of a row: a hash of its id, so it never depends on other rows or their labels."""
    return int.from_bytes(hashlib.sha256(row_id.encode("utf-8")).digest()[:8], "big") % folds
