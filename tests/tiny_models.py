"""Tiny, real models for tests: a trained Unigram tokenizer in XLM-R layout and a small BERT classifier."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from polydistill.model.student import WORD_BOUNDARY
from polydistill.model.tfidf import TfidfSettings

TINY_TFIDF_SETTINGS = TfidfSettings(analyzer="char_wb", ngram_range=(1, 3), min_df=1, max_features=5000,
                                    c_grid=(1.0,), max_iter=500, cv_folds=2, seed=0)
TINY_POSITIONS = 64  # the tiny encoder's position embeddings: the longest max_length it can read


def xlmr_style_tokenizer(texts: list[str], vocab_size: int) -> dict:
    """Train a Unigram tokenizer and lay it out like XLM-R: <s> <pad> </s> <unk> first, <mask> last."""
    tokenizer = Tokenizer(Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                             unk_token="<unk>", shrinking_factor=0.75)
    tokenizer.train_from_iterator(texts, trainer)
    mask_id = tokenizer.get_vocab_size()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    content = json.loads(tokenizer.to_str())
    content["model"]["vocab"].append(["<mask>", 0.0])
    content["added_tokens"].append({"id": mask_id, "content": "<mask>", "single_word": False, "lstrip": True,
                                    "rstrip": False, "normalized": False, "special": True})
    return content


def tiny_pretrained_encoder(directory: Path, texts: list[str], labels: list[str], vocab_size: int = 300,
                            hidden_size: int = 32, layers: int = 4, seed: int = 0) -> Path:
    """A complete Hugging Face classifier folder (tokenizer included) small enough to train in seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    content = xlmr_style_tokenizer(texts, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(content)), bos_token="<s>", eos_token="</s>",
        cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_max_length=TINY_POSITIONS)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(content["model"]["vocab"]), hidden_size=hidden_size,
                        num_hidden_layers=layers, num_attention_heads=4, intermediate_size=2 * hidden_size,
                        max_position_embeddings=TINY_POSITIONS, pad_token_id=1, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory
