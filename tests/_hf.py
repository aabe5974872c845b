"""Tiny Hugging Face models and tokenizers for the tests, made from configs (random weights,
nothing downloaded): a word-level tokenizer built with ``tokenizers``, GPT-2, BERT and ViT
saved with ``save_pretrained`` where ``hf:PATH`` loads them."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "far",
    "away",
    "from",
    "big",
    "red",
    "house",
    "in",
    "which",
    "lived",
    "small",
    "old",
    "grey",
    "mouse",
    "who",
    "liked",
    "cheese",
    "very",
    "much",
]
DOCS = [
    "the cat sat on a mat",
    "the dog ran far away from the big red house",
    "a mouse",
    "in which lived a small old grey mouse who liked cheese very much",
    "the red cat",
]


def tokenizer(padding_side: str = "right", *, bert: bool = False):
    """A word-level fast tokenizer over WORDS; BERT's wraps each document in [CLS] ... [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate([*specials, *dict.fromkeys(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token=None if bert else "[SEP]",  # GPT-2's end of text, between packed documents
        padding_side=padding_side,
        model_max_length=64,
    )


def vocab_size() -> int:
    return 4 + len(dict.fromkeys(WORDS))


def gpt2(folder: Path, padding_side: str = "left", layers: int = 3) -> Path:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(1)
    config = GPT2Config(
        n_layer=layers,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=vocab_size(),
        bos_token_id=1,
        eos_token_id=1,
    )
    GPT2Model(config).save_pretrained(folder)
    tokenizer(padding_side).save_pretrained(folder)
    return folder


def bert(folder: Path, padding_side: str = "right") -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(2)
    config = BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=vocab_size(),
        max_position_embeddings=64,
        pad_token_id=1,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer(padding_side, bert=True).save_pretrained(folder)
    return folder


def vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(3)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def corpus(path: Path, docs: list[str] = DOCS) -> Path:
    path.write_text("\n".join(docs[:2]) + "\n\n" + "\n".join(docs[2:]) + "\n")  # a blank line
    return path
