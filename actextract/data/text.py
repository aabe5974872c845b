"""Text: corpora as samples of token ids, tokenised by the model's own tokenizer.

Specs (``open_text``):

- ``text:FILE``: one document per line of a text file (blank lines skipped; a document's id is
  ``FILE:LINE``), or a ``.jsonl`` file of one JSON object per line, its text in the field
  ``text_field`` (``--text-field``, default ``text``), its label in ``label`` (an integer, or
  a class name: the classes are the names sorted) and its id in ``id`` where they are there;
- ``hf-dataset:PATH[:split][:column]``: a Hugging Face ``datasets`` dataset saved with
  ``save_to_disk`` (split ``train`` by default when it holds several; column ``text``), its
  ``label`` column (a ``ClassLabel``'s names are the classes) and ``id`` column where present.

Each document becomes ``{"input_ids": (L,), "attention_mask": (L,)}`` (and ``token_type_ids``
where the tokenizer makes them), cut to ``max_length`` tokens and padded to it on the
tokenizer's side (``padding_side``: right for BERT, left where a model wants the last token
last): every sample has one shape, the attention mask says which tokens are real.

``pack=True`` (``--pack``, what sparse-autoencoder training reads) tokenises the whole corpus
first, joins the documents (each followed by the end-of-text token where the tokenizer adds
no special tokens of its own) and cuts the stream into windows of ``max_length`` tokens, every
one real but in the last window; each window records, per token, its ``document`` (the
corpus's row) and ``position`` in it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actextract.data.inputs import WithRecords
from actextract.data.samples import SampleDataset, Source
from actextract.errors import SourceError, option

__all__ = ["TEXT_KINDS", "Tokenize", "open_text"]

log = logging.getLogger(__name__)

TEXT_KINDS = ("text", "hf-dataset")


@dataclass(frozen=True)
class Tokenize:
    """A document (str) → its padded token ids and attention mask, as tensors."""

    tokenizer: Any
    max_length: int

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        if not isinstance(text, str):
            raise TypeError(f"a document must be a str, not {type(text).__name__}")
        enc = self.tokenizer(
            text,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = {k: v[0] for k, v in enc.items()}
        if not out["attention_mask"].any():
            raise ValueError("the tokenizer made no tokens of this document")
        return out

    def describe(self) -> str:
        t = self.tokenizer
        return (
            f"tokenized by {_name(t)}: max_length {self.max_length}, truncated, padded on the "
            f"{t.padding_side} with token {t.pad_token_id} (attention_mask marks the real tokens)"
        )


class _Documents:
    """Documents and their labels, as ``(text, label)`` items."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int]):
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]


def open_text(
    spec: str,
    tokenizer: Any,
    max_length: int | None,
    *,
    text_field: str = "text",
    pack: bool = False,
) -> Source:
    """Resolve a ``text:`` or ``hf-dataset:`` spec (see the module docstring) with the model's
    ``tokenizer``; ``max_length`` None takes the tokenizer's own limit; ``pack``: windows of
    the joined documents."""
    kind, _, rest = spec.partition(":")
    if tokenizer is None:
        raise SourceError(
            f"{option('dataset')} {spec} is text, and the model has no tokenizer: use an "
            "hf:PATH model saved with its tokenizer (tokenizer.save_pretrained(PATH)), or an "
            "hf-config: file with the tokenizer saved in the same folder."
        )
    length = max_length or _tokenizer_limit(tokenizer)
    if length <= 0:
        raise SourceError(f"{option('max_length')} {length} must be a positive integer.")
    if kind == "text":
        documents, ids, classes = _text_file(spec, rest, text_field)
    else:
        documents, ids, classes = _hf_dataset(spec, rest)
    if not len(documents):
        raise SourceError(f"{option('dataset')} {spec} holds no documents.")
    if pack:
        windows = _Windows(documents, tokenizer, length)
        return Source(
            spec,
            SampleDataset(windows, transform=None, ids=None),
            transform=windows.describe(),
            records=("document", "position"),
        )
    tokenize = Tokenize(tokenizer, length)
    return Source(
        spec,
        SampleDataset(documents, transform=tokenize, ids=ids),
        transform=tokenize.describe(),
        classes=classes,
    )


class _Windows:
    """The corpus's tokens joined and cut into windows of ``length``: item i is window i, with
    the document and position of each of its tokens."""

    def __init__(self, documents: Any, tokenizer: Any, length: int):
        self.tokenizer, self.length = tokenizer, length
        texts = [documents[i][0] for i in range(len(documents))]
        ids = tokenizer(texts)["input_ids"]
        # a tokenizer that marks documents itself ([CLS] ... [SEP]) needs no separator
        self.marks = bool(tokenizer("")["input_ids"])
        self.separator = None if self.marks else tokenizer.eos_token_id
        if self.separator is None and not self.marks:
            log.warning(
                "%s has no end-of-text token and adds no special tokens: packed documents are "
                "joined with nothing between them (each token's document is recorded)",
                _name(tokenizer),
            )
        extra = [] if self.separator is None else [self.separator]
        self.ids = np.concatenate([np.asarray([*d, *extra], np.int32) for d in ids])
        self.document = np.concatenate(
            [np.full(len(d) + len(extra), i, np.int32) for i, d in enumerate(ids)]
        )
        self.position = np.concatenate(
            [np.arange(len(d) + len(extra), dtype=np.int32) for d in ids]
        )

    def __len__(self) -> int:
        return -(-len(self.ids) // self.length)

    def __getitem__(self, index: int) -> tuple[WithRecords, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        sl = slice(index * self.length, (index + 1) * self.length)
        real = len(self.ids[sl])

        def padded(values: np.ndarray, fill: int) -> torch.Tensor:
            out = np.full(self.length, fill, np.int64)
            out[:real] = values[sl]
            return torch.from_numpy(out)

        mask = torch.zeros(self.length, dtype=torch.int64)
        mask[:real] = 1
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        inputs = {"input_ids": padded(self.ids, pad), "attention_mask": mask}
        records = {"document": padded(self.document, -1), "position": padded(self.position, -1)}
        return WithRecords(inputs, records), -1

    def describe(self) -> str:
        joined = (
            "each followed by token " + str(self.separator)
            if self.separator is not None
            else "with the tokenizer's own special tokens"
            if self.marks
            else "with nothing between them"
        )
        return (
            f"tokenized by {_name(self.tokenizer)} and packed: {len(self.ids)} tokens of the "
            f"documents ({joined}) in windows of {self.length} (the last one padded on the right)"
        )


def _name(tokenizer: Any) -> str:
    """A tokenizer as provenance and messages name it: its folder or hub name, else its type."""
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _tokenizer_limit(tokenizer: Any) -> int:
    """The tokenizer's ``model_max_length`` where it says one (it says 1e30 when it does not:
    then 512)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= 1_000_000 else 512


def _text_file(spec: str, rest: str, field: str):
    path = Path(rest).expanduser()
    if not rest or not path.is_file():
        raise SourceError(
            f"{option('dataset')} {spec}: '{path}' is not a file; give a text file of one "
            "document per line, or a .jsonl file (text:corpus.txt, text:docs.jsonl)."
        )
    texts: list[str] = []
    raw_labels: list[Any] = []
    ids: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                texts.append(line.rstrip("\n"))
                raw_labels.append(-1)
                ids.append(f"{path.name}:{number}")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(
                    f"{option('dataset')} {spec}: line {number} is not JSON ({e.msg})."
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                have = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise SourceError(
                    f"{option('dataset')} {spec}: line {number} has no text field '{field}' "
                    f"(it has: {have}); name the field with {option('text_field')}."
                )
            texts.append(row[field])
            raw_labels.append(row.get("label", -1))
            ids.append(str(row["id"]) if "id" in row else f"{path.name}:{number}")
    labels, classes = _labels(raw_labels)
    return _Documents(texts, labels), ids, classes


def _labels(raw: Sequence[Any]) -> tuple[list[int], tuple[str, ...] | None]:
    """Integer labels as they are; class names as indices of the sorted names."""
    names = sorted({v for v in raw if isinstance(v, str)})
    if not names:
        return [int(v) for v in raw], None
    index = {n: i for i, n in enumerate(names)}
    return [index[v] if isinstance(v, str) else -1 for v in raw], tuple(names)


def _hf_dataset(spec: str, rest: str):
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"{option('dataset')} {spec} needs the 'datasets' package: pip install "
            "'actextract[hf]'."
        ) from None
    where, _, rest = rest.partition(":")
    split, _, column = rest.partition(":")
    column = column or "text"
    if not where or not Path(where).expanduser().is_dir():
        raise SourceError(
            f"{option('dataset')} {spec}: '{where}' is not a folder; give one written by "
            "dataset.save_to_disk(PATH): hf-dataset:PATH[:split][:column]."
        )
    try:
        data = datasets.load_from_disk(str(Path(where).expanduser()))
    except (FileNotFoundError, ValueError) as e:
        raise SourceError(f"{option('dataset')} {spec}: {e}") from None
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        split = split or ("train" if "train" in splits else splits[0])
        if split not in data:
            raise SourceError(
                f"{option('dataset')} {spec}: no split '{split}'; it has {', '.join(splits)}."
            )
        data = data[split]
    elif split:
        raise SourceError(
            f"{option('dataset')} {spec}: the dataset at '{where}' has no splits; drop "
            f"':{split}' (hf-dataset:{where}::{column} names a column without one)."
        )
    if column not in data.column_names:
        raise SourceError(
            f"{option('dataset')} {spec}: no column '{column}'; it has "
            f"{', '.join(data.column_names)}. Name the text column: hf-dataset:PATH:split:COLUMN."
        )
    feature = data.features.get("label")
    classes = tuple(feature.names) if hasattr(feature, "names") else None
    ids = [str(v) for v in data["id"]] if "id" in data.column_names else None
    return _Rows(data, column), ids, classes


class _Rows:
    """A ``datasets`` dataset as ``(text, label)`` items, read row by row (memory-mapped)."""

    def __init__(self, data: Any, column: str):
        self.data, self.column = data, column
        self.labelled = "label" in data.column_names

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[str, int]:
        row = self.data[index]
        return row[self.column], int(row["label"]) if self.labelled else -1
