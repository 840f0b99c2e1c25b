"""Per-language students: a teacher vocabulary trimmed to one language, and a smaller BERT on top of it.

The teacher is a Hugging Face BERT-style sequence classifier folder with a fast Unigram ``tokenizer.json``
(XLM-R conventions). A student folder is a plain Hugging Face folder that AutoTokenizer and
AutoModelForSequenceClassification load offline, with no custom code.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

WORD_BOUNDARY = "\u2581"
XLMR_SPECIAL_TOKENS = {
    "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
}
CONFIG_TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")
TEACHER_TOKEN_IDS_FILE = "teacher_token_ids.json"
LAYER_KEY = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")
WORD_EMBEDDINGS_KEY = "embeddings.word_embeddings.weight"
UNSPACED_SCRIPTS = frozenset({"CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN"})


@dataclass(frozen=True)
class StudentInfo:
    """What was built: where, vocabulary size, parameter counts and the teacher layers copied.

    non_embedding_params excludes the embeddings block (word, position and token-type tables and
    their LayerNorm). ``layers`` are the 0-based teacher layers copied, empty for a scratch student.
    """

    path: Path
    vocab_size: int
    total_params: int
    non_embedding_params: int
    num_layers: int
    hidden_size: int
    layers: tuple[int, ...]


def load_tokenizer_json(tokenizer_json: dict[str, Any] | Path) -> dict[str, Any]:
    """The tokenizer.json content, given either the parsed dict or its path."""
    if isinstance(tokenizer_json, dict):
        return tokenizer_json
    return json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))


def character_class(char: str) -> str:
    """Script of a letter or mark (first word of its Unicode name: LATIN, CJK, HANGUL, ...), else its category.

    Digits, punctuation, symbols and emoji thus fall in classes such as Nd, Po or So.
    """
    category = unicodedata.category(char)
    name = unicodedata.name(char, "")
    if category[0] in "LM" and name:
        return name.split()[0]
    return category


def _single_character(piece: str) -> str | None:
    """The character of a piece that is one character long, with or without the word-boundary prefix."""
    bare = piece[1:] if piece.startswith(WORD_BOUNDARY) and len(piece) > 1 else piece
    return bare if len(bare) == 1 else None


def word_piece_prior(tokenizer_json: dict[str, Any] | Path, words: Sequence[tuple[str, float]], tokens: float,
                     capitalised_weight: float, upper_weight: float) -> Counter[int]:
    """Pseudo-counts of teacher pieces from a word frequency list, summing to ``tokens``.

    Each (lower-case) word counts with its frequency, its Capitalised and UPPER forms with that frequency times
    capitalised_weight and upper_weight. A word is segmented as it appears in running text: after a space, or,
    in an unspaced script (see UNSPACED_SCRIPTS), inside the text, with no word-boundary piece.
    """
    content = load_tokenizer_json(tokenizer_json)
    tokenizer = Tokenizer.from_str(json.dumps(content))
    forms = list(words)
    for word, frequency in words:
        if word[:1].isalpha():
            forms += [(variant, frequency * weight) for variant, weight in
                      ((word[:1].upper() + word[1:], capitalised_weight), (word.upper(), upper_weight))
                      if weight > 0 and variant != word]
    weights: Counter[int] = Counter()
    spaced = [(form, frequency) for form, frequency in forms if not _unspaced(form)]
    for (_form, frequency), encoding in zip(spaced, tokenizer.encode_batch([form for form, _ in spaced],
                                                                           add_special_tokens=False)):
        for index in encoding.ids:
            weights[index] += frequency
    for form, frequency in forms:
        if _unspaced(form):
            normalized = tokenizer.normalizer.normalize_str(form) if tokenizer.normalizer else form
            for token in tokenizer.model.tokenize(normalized):
                weights[token.id] += frequency
    total = sum(weights.values())
    return Counter({index: tokens * weight / total for index, weight in weights.items()}) if total else Counter()


def _unspaced(word: str) -> bool:
    return any(character_class(char) in UNSPACED_SCRIPTS for char in word)


def language_vocabulary(tokenizer_json: dict[str, Any] | Path, texts: Iterable[str],
                        max_pieces: int | None = None, teacher_prior: bool = False,
                        word_prior: Mapping[int, float] | None = None) -> list[int]:
    """Sorted teacher token ids a language needs, judged from its texts.

    Always kept: (1) the special tokens; (2) the bare word-boundary piece and every single-character piece, with
    or without the word-boundary prefix, whose character class (see ``character_class``: the script for letters,
    the Unicode category otherwise) occurs in the texts' pieces, so an unseen word still splits into known
    characters, not <unk>. Then (3) the pieces the texts tokenize into, most frequent first, their counts plus
    the pseudo-counts of word_prior (see ``word_piece_prior``), which also ranks pieces the texts lack; and, with
    teacher_prior, (4) the teacher's other pieces made only of characters the texts use (case-folded), by the
    teacher's own unigram score (its estimate of how common a piece is), until max_pieces (None: no cap, no
    prior of either kind).
    """
    content = load_tokenizer_json(tokenizer_json)
    tokenizer = Tokenizer.from_str(json.dumps(content))
    vocab = content["model"]["vocab"]
    special_ids = {token["id"] for token in content["added_tokens"] if token["special"]}
    texts = list(texts)
    counts: Counter[int] = Counter()
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        counts.update(encoding.ids)
    for index in special_ids:
        counts.pop(index, None)
    seen_classes = {character_class(char) for index in counts for char in vocab[index][0].replace(WORD_BOUNDARY, "")}
    required = set(special_ids)
    for index, (piece, _score) in enumerate(vocab):
        char = _single_character(piece)
        if char == WORD_BOUNDARY or (char is not None and character_class(char) in seen_classes):
            required.add(index)
    ranked = Counter(counts)
    if word_prior and max_pieces is not None:
        ranked.update({index: weight for index, weight in word_prior.items() if index not in special_ids})
    by_frequency = [index for index, _count in sorted(ranked.items(), key=lambda item: (-item[1], item[0]))]
    candidates = by_frequency
    if teacher_prior and max_pieces is not None:
        characters = {char for text in texts for char in text.casefold()}
        in_language = [index for index, (piece, _score) in enumerate(vocab)
                       if index not in ranked and index not in required and piece.replace(WORD_BOUNDARY, "")
                       and all(char in characters for char in piece.replace(WORD_BOUNDARY, "").casefold())]
        candidates = by_frequency + sorted(in_language, key=lambda index: (-vocab[index][1], index))
    budget = len(candidates) if max_pieces is None else max(max_pieces - len(required), 0)
    kept = set(required)
    for index in candidates:
        if len(kept) - len(required) >= budget:
            break
        kept.add(index)
    return sorted(kept)


@dataclass(frozen=True)
class SegmentationFidelity:
    """How a trimmed tokenizer segments texts compared with the teacher's.

    identical_share: texts whose pieces are exactly the teacher's; extra_tokens: student tokens / teacher tokens
    - 1; unknown_rate: share of the student's tokens that are <unk>.
    """

    identical_share: float
    extra_tokens: float
    unknown_rate: float

    def as_dict(self) -> dict[str, float]:
        return {"identical_share": round(self.identical_share, 4), "extra_tokens": round(self.extra_tokens, 4),
                "unknown_rate": round(self.unknown_rate, 5)}


def segmentation_fidelity(teacher_tokenizer: Tokenizer, student_tokenizer: Tokenizer, kept: Sequence[int],
                          texts: Sequence[str], unk_token: str = "<unk>") -> SegmentationFidelity:
    """Compare the student's segmentation of texts (mapped back to teacher ids via kept) with the teacher's."""
    teacher = teacher_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    student = student_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    identical = sum([kept[index] for index in s.ids] == t.ids for s, t in zip(student, teacher))
    teacher_tokens = sum(len(encoding.ids) for encoding in teacher)
    student_tokens = sum(len(encoding.ids) for encoding in student)
    if teacher_tokens == 0:
        raise ValueError("the texts produce no tokens")
    unk_id = student_tokenizer.token_to_id(unk_token)
    unknown = sum(encoding.ids.count(unk_id) for encoding in student)
    return SegmentationFidelity(identical / len(texts), student_tokens / teacher_tokens - 1,
                                unknown / student_tokens)


def student_segmentation(teacher_dir: Path, student_dir: Path, texts: Sequence[str]) -> dict[str, float]:
    """segmentation_fidelity of a student folder's tokenizer against its teacher folder's, as a dict."""
    kept = json.loads((student_dir / TEACHER_TOKEN_IDS_FILE).read_text(encoding="utf-8"))
    return segmentation_fidelity(Tokenizer.from_file(str(teacher_dir / "tokenizer.json")),
                                 Tokenizer.from_file(str(student_dir / "tokenizer.json")), kept, texts).as_dict()


def _remap_post_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> dict[str, Any] | None:
    """A copy of a post-processor with its token ids translated to the trimmed vocabulary."""
    if processor is None:
        return None
    remapped = copy.deepcopy(processor)
    kind = remapped["type"]
    if kind == "TemplateProcessing":
        for special in remapped["special_tokens"].values():
            special["ids"] = [new_id[index] for index in special["ids"]]
    elif kind in {"RobertaProcessing", "BertProcessing"}:
        for field in ("sep", "cls"):
            token, index = remapped[field]
            remapped[field] = [token, new_id[index]]
    elif kind == "Sequence":
        remapped["processors"] = [_remap_post_processor(inner, new_id) for inner in remapped["processors"]]
    elif kind != "ByteLevel":
        raise ValueError(f"post-processor type {kind} is not supported")
    return remapped


def trim_tokenizer(teacher_tokenizer_json: dict[str, Any] | Path, kept_ids: Iterable[int]) -> dict[str, Any]:
    """A Unigram tokenizer.json over the kept teacher pieces, renumbered contiguously in teacher order.

    Scores, normaliser, pre-tokenizer and decoder are unchanged; added tokens, the unknown id, the
    post-processor and padding get the new ids. With ids 0..3 kept, the special tokens keep ids 0..3.
    Text whose teacher segmentation uses only kept pieces is segmented identically (Viterbi over a
    subset of pieces with the same scores cannot find a better path).
    """
    teacher = load_tokenizer_json(teacher_tokenizer_json)
    model = teacher["model"]
    if model["type"] != "Unigram":
        raise ValueError(f"only Unigram tokenizers can be trimmed, got {model['type']}")
    kept = sorted(set(kept_ids))
    new_id = {old: new for new, old in enumerate(kept)}
    missing = [token["content"] for token in teacher["added_tokens"]
               if token["special"] and token["id"] not in new_id]
    if model["unk_id"] not in new_id or missing:
        raise ValueError(f"kept ids must include <unk> and every special token; missing {missing}")
    added_tokens = [{**token, "id": new_id[token["id"]]} for token in teacher["added_tokens"] if token["id"] in new_id]
    padding = teacher.get("padding")
    if padding is not None:
        padding = {**padding, "pad_id": new_id[padding["pad_id"]]}
    return {
        **teacher,
        "added_tokens": added_tokens,
        "padding": padding,
        "post_processor": _remap_post_processor(teacher.get("post_processor"), new_id),
        "model": {**model, "unk_id": new_id[model["unk_id"]], "vocab": [model["vocab"][index] for index in kept]},
    }


def unknown_token_rate(tokenizer: Tokenizer | PreTrainedTokenizerFast, texts: Iterable[str],
                       unk_token: str = "<unk>") -> float:
    """Share of the texts' tokens (special tokens not added) that are the unknown token.

    The tokenizer fuses a run of unknown characters into one <unk>, so a run counts once, as the model sees it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    unk_id = backend.token_to_id(unk_token)
    encodings = backend.encode_batch(list(texts), add_special_tokens=False)
    total = sum(len(encoding.ids) for encoding in encodings)
    if total == 0:
        raise ValueError("the texts produce no tokens")
    return sum(encoding.ids.count(unk_id) for encoding in encodings) / total


def _student_config(teacher_config: PretrainedConfig, kept: Sequence[int], **overrides: Any) -> PretrainedConfig:
    """The teacher's config (labels and their order included) with the trimmed vocabulary and overrides."""
    config = copy.deepcopy(teacher_config)
    new_id = {old: new for new, old in enumerate(kept)}
    config.vocab_size = len(kept)
    for field in CONFIG_TOKEN_ID_FIELDS:
        old = getattr(config, field, None)
        if old is not None:
            setattr(config, field, new_id.get(old))
    for field, value in overrides.items():
        setattr(config, field, value)
    return config


def _student_state_dict(teacher_state: dict[str, torch.Tensor], kept: Sequence[int],
                        layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Teacher weights for the student: kept embedding rows, chosen layers renumbered 0.., all else as is."""
    new_layer = {old: new for new, old in enumerate(layers)}
    kept_rows = torch.tensor(list(kept))
    state = {}
    for key, tensor in teacher_state.items():
        match = LAYER_KEY.search(key)
        if match:
            teacher_layer = int(match.group(2))
            if teacher_layer not in new_layer:
                continue
            key = f"{key[:match.start(2)]}{new_layer[teacher_layer]}{key[match.end(2):]}"
        elif key.endswith(WORD_EMBEDDINGS_KEY):
            tensor = tensor.index_select(0, kept_rows)
        state[key] = tensor.clone()
    return state


def _count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    total = sum(parameter.numel() for parameter in model.parameters())
    embeddings = sum(parameter.numel() for parameter in model.base_model.embeddings.parameters())
    return total, total - embeddings


def save_student(model: PreTrainedModel, tokenizer_json: dict[str, Any], kept: Sequence[int],
                  output_dir: Path, layers: Sequence[int]) -> StudentInfo:
    """Write model, tokenizer files and the kept teacher ids (student id i = teacher id kept[i])."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    vocabulary = {piece for piece, _score in tokenizer_json["model"]["vocab"]}
    special_tokens = {role: token for role, token in XLMR_SPECIAL_TOKENS.items() if token in vocabulary}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(tokenizer_json)),
        model_max_length=model.config.max_position_embeddings,
        **special_tokens,
    )
    tokenizer.save_pretrained(output_dir)
    (output_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2), encoding="utf-8")
    (output_dir / TEACHER_TOKEN_IDS_FILE).write_text(json.dumps(list(kept)), encoding="utf-8")
    total, non_embedding = _count_parameters(model)
    return StudentInfo(
        path=output_dir, vocab_size=len(kept), total_params=total, non_embedding_params=non_embedding,
        num_layers=model.config.num_hidden_layers, hidden_size=model.config.hidden_size, layers=tuple(layers),
    )


@dataclass(frozen=True)
class VocabularySettings:
    """How a student's trimmed vocabulary is chosen (see ``language_vocabulary``); None: no cap."""

    max_pieces: int | None = None
    teacher_prior: bool = False
    word_prior_tokens: float = 0.0  # how many tokens of text the word frequency list counts as (0: unused)
    capitalised_weight: float = 0.0
    upper_weight: float = 0.0


def _trimmed_vocabulary(teacher_dir: Path, texts: Iterable[str], vocabulary: VocabularySettings,
                        words: Sequence[tuple[str, float]]) -> tuple[dict[str, Any], list[int]]:
    teacher_tokenizer = load_tokenizer_json(teacher_dir / "tokenizer.json")
    word_prior = (word_piece_prior(teacher_tokenizer, words, vocabulary.word_prior_tokens,
                                   vocabulary.capitalised_weight, vocabulary.upper_weight)
                  if words and vocabulary.word_prior_tokens > 0 else None)
    kept = language_vocabulary(teacher_tokenizer, texts, vocabulary.max_pieces, vocabulary.teacher_prior, word_prior)
    return trim_tokenizer(teacher_tokenizer, kept), kept


def teacher_layer_student(teacher_dir: str | Path, texts: Iterable[str], layers: Sequence[int],
                          vocabulary: VocabularySettings = VocabularySettings(),
                          words: Sequence[tuple[str, float]] = ()
                          ) -> tuple[PreTrainedModel, dict[str, Any], list[int]]:
    """In memory: the student made of teacher parts, its trimmed tokenizer.json and the kept teacher ids.

    ``layers`` are 0-based teacher layers in increasing order; they become student layers 0..len-1.
    Position/type embeddings, LayerNorms, pooler and classifier are copied; labels keep their ids.
    The vocabulary comes from ``texts`` and the language's word frequency list ``words`` (see
    ``language_vocabulary``).
    """
    teacher_dir = Path(teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    num_teacher_layers = teacher.config.num_hidden_layers
    if not layers or list(layers) != sorted(set(layers)) or not 0 <= layers[0] <= layers[-1] < num_teacher_layers:
        raise ValueError(f"layers must be increasing, distinct and within 0..{num_teacher_layers - 1}, got {layers}")
    tokenizer_json, kept = _trimmed_vocabulary(teacher_dir, texts, vocabulary, words)
    config = _student_config(teacher.config, kept, num_hidden_layers=len(layers))
    student = AutoModelForSequenceClassification.from_config(config)
    student.load_state_dict(_student_state_dict(teacher.state_dict(), kept, layers), strict=True)
    return student, tokenizer_json, kept


def build_student_from_teacher(teacher_dir: str | Path, texts: Iterable[str], layers: Sequence[int],
                               output_dir: str | Path,
                               vocabulary: VocabularySettings = VocabularySettings(),
                               words: Sequence[tuple[str, float]] = ()) -> StudentInfo:
    """``teacher_layer_student`` written to output_dir."""
    student, tokenizer_json, kept = teacher_layer_student(teacher_dir, texts, layers, vocabulary, words)
    return save_student(student, tokenizer_json, kept, Path(output_dir), layers)


def build_scratch_student(teacher_dir: str | Path, texts: Iterable[str], hidden_size: int, num_layers: int,
                          num_heads: int, intermediate_size: int, output_dir: str | Path, seed: int,
                          vocabulary: VocabularySettings = VocabularySettings(),
                          words: Sequence[tuple[str, float]] = ()) -> StudentInfo:
    """A smaller, randomly initialised BERT (seeded) on the language's trimmed teacher tokenizer.

    Everything not overridden (labels, positions, activation, dropout) follows the teacher's config.
    """
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    tokenizer_json, kept = _trimmed_vocabulary(teacher_dir, texts, vocabulary, words)
    config = _student_config(teacher_config, kept, hidden_size=hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, intermediate_size=intermediate_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = AutoModelForSequenceClassification.from_config(config)
    return save_student(student, tokenizer_json, kept, output_dir, layers=())
