"""Sources: dataset specs → a Dataset of samples with a row index and an id, and its loader.

Specs (``open_source``):

- ``digits``: scikit-learn's 1,797 handwritten 8×8 digits (shipped inside the package),
  upsampled to 1×28×28 and normalised; labels 0-9. The embedded default: nothing downloaded.
- ``folder:PATH``: class subfolders (labels from the folder names) or a flat folder of images
  (label -1), never both (:mod:`actextract.data.folders`).
- ``mnist:ROOT[:split]``, ``cifar10:ROOT``, ...: torchvision datasets already on disk
  (``download=False``); split ``train`` (default) or ``test``.
- ``synthetic:N:C:H:W``: N seeded random inputs, fed to the model as they are (benchmarks).
- ``python:module:callable``: a user Dataset (or a callable returning one); items are an input
  tensor or ``(input, label, ...)``, fed as they are; an IterableDataset is read once, as it
  comes (:mod:`actextract.data.streams`).
- ``text:FILE``, ``hf-dataset:PATH[:split][:column]``: documents, tokenised by the model's
  tokenizer (:mod:`actextract.data.text`).

Items and batches are described in :mod:`actextract.data.samples`; this module resolves specs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from actextract.core.references import call_object, load_object
from actextract.data.folders import open_folder
from actextract.data.inputs import Padding
from actextract.data.loaders import wrap_loader
from actextract.data.samples import (  # re-exported: the source stage's public names
    BadSample,
    Batch,
    Preprocess,
    Sample,
    SampleDataset,
    Source,
    make_loader,
)
from actextract.data.streams import is_stream, wrap_stream
from actextract.data.text import TEXT_KINDS, open_text
from actextract.errors import OptionError, SourceError, option

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEXT_KINDS",
    "BadSample",
    "Batch",
    "Preprocess",
    "Sample",
    "Source",
    "check_decode",
    "make_loader",
    "open_dataset",
    "open_source",
    "wrap_dataset",
]

log = logging.getLogger(__name__)

DECODE_MODES = ("cpu", "gpu")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (torchvision class name, how the split is passed)
TORCHVISION_DATASETS: dict[str, tuple[str, str]] = {
    "mnist": ("MNIST", "train"),
    "fashionmnist": ("FashionMNIST", "train"),
    "kmnist": ("KMNIST", "train"),
    "qmnist": ("QMNIST", "train"),
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "svhn": ("SVHN", "split"),
    "stl10": ("STL10", "split"),
    "flowers102": ("Flowers102", "split"),
    "food101": ("Food101", "split"),
    "dtd": ("DTD", "split"),
    "imagenet": ("ImageNet", "split"),
}


class _Synthetic(Dataset):
    """N seeded standard-normal inputs of one shape; item i is the same whatever the worker."""

    def __init__(self, n: int, shape: tuple[int, ...], seed: int = 0):
        self.n, self.shape, self.seed = n, shape, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn(self.shape, generator=g), index % 10


def open_source(
    spec: str,
    preprocess: Preprocess | None = None,
    *,
    decode: str = "cpu",
    tokenizer: Any = None,
    max_length: int | None = None,
    text_field: str = "text",
    pack: bool = False,
    num_workers: int = 0,
) -> Source:
    """Resolve a dataset spec (see the module docstring). ``preprocess`` overrides the source's
    own defaults for image sources; synthetic and python sources are fed as they are (a
    python: IterableDataset read by ``num_workers``). Text
    sources are tokenised by ``tokenizer`` (the model's) to ``max_length`` tokens (``pack``:
    joined and cut into windows of that many).

    ``decode="gpu"`` (``folder:`` sources only) leaves decoding to the run's device: the
    source's items are undecoded and ``Source.encoded`` is True (see
    :class:`actextract.data.decode.DeviceDecoder`)."""
    preprocess = preprocess or Preprocess()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    check_decode(decode)
    if decode == "gpu" and kind != "folder":
        raise SourceError(
            f"{option('dataset')} {spec}: --decode gpu only applies to folder: image datasets "
            f"(JPEG files decoded on the device); drop --decode gpu (or pass {option('decode')} "
            "cpu) for this dataset."
        )
    if kind == "digits":
        return _digits(spec, preprocess)
    if kind == "folder":
        return open_folder(spec, rest, preprocess, on_device=decode == "gpu")
    if kind == "synthetic":
        return _synthetic(spec, rest)
    if kind == "python":
        what = f"{option('dataset')} {spec}"
        base = load_object(rest, what=what, error=SourceError)
        dataset = base
        if callable(base) and not isinstance(base, Dataset):
            dataset = call_object(base, what=what, error=SourceError, returns="a Dataset")
        if is_stream(dataset):  # an IterableDataset: read once, as it comes
            return wrap_stream(dataset, spec=spec, num_workers=num_workers)
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise SourceError(
                f"{option('dataset')} {spec} gave {type(dataset).__name__}, not a map-style "
                "Dataset with __len__ and __getitem__."
            )
        return wrap_dataset(dataset, spec=spec)
    if kind in TORCHVISION_DATASETS:
        return _torchvision(spec, kind, rest, preprocess)
    if kind in TEXT_KINDS:
        return open_text(spec, tokenizer, max_length, text_field=text_field, pack=pack)
    known = ["digits", "folder:PATH", "synthetic:N:C:H:W", "python:module:callable"]
    known += ["text:FILE", "hf-dataset:PATH[:split][:column]"]
    known += [f"{k}:ROOT" for k in TORCHVISION_DATASETS]
    raise SourceError(f"unknown dataset '{spec}'; use one of: {', '.join(known)}.")


def open_dataset(
    dataset: str | Source | Any,
    preprocess: Preprocess,
    *,
    decode: str = "cpu",
    tokenizer: Any = None,
    max_length: int | None = None,
    text_field: str = "text",
    pack: bool = False,
    num_workers: int = 0,
) -> Source:
    """A run's source from a spec (:func:`open_source`) or a Dataset object
    (:func:`wrap_dataset`; an iterable one read by ``num_workers``): a text spec tokenised by
    ``tokenizer`` to ``max_length`` (``pack``: joined into windows); a python: spec's or a
    Dataset's dict samples padded to ``max_length`` on the tokenizer's side. Options that do
    not apply are refused."""
    kind = dataset.partition(":")[0].lower() if isinstance(dataset, str) else None
    if pack and kind not in TEXT_KINDS:
        raise OptionError(
            f"{option('pack')} joins the documents of text datasets (text:FILE, "
            f"hf-dataset:PATH), and {option('dataset')} is not one; drop --pack."
        )
    if max_length is not None and kind not in (*TEXT_KINDS, "python", None):
        raise OptionError(
            f"{option('max_length')} cuts the documents of text datasets (text:FILE, "
            f"hf-dataset:PATH) and pads the dict samples of python: datasets, and "
            f"{option('dataset')} is neither; drop --max-length."
        )
    if isinstance(dataset, str):
        source = open_source(
            dataset,
            preprocess,
            decode=decode,
            tokenizer=tokenizer,
            max_length=max_length,
            text_field=text_field,
            pack=pack,
            num_workers=num_workers,
        )
    else:
        source = wrap_dataset(dataset, num_workers=num_workers)
    if decode == "gpu" and not source.encoded:
        raise OptionError(
            f"decode='gpu' applies to 'folder:PATH' dataset specs; a {type(dataset).__name__}"
            " object is fed as it is. Pass the folder spec, or leave decode at 'cpu'."
        )
    if max_length is not None and kind not in TEXT_KINDS:  # a user's token dicts
        pad = Padding(
            getattr(tokenizer, "padding_side", "right"),
            max_length,
            {"input_ids": getattr(tokenizer, "pad_token_id", None) or 0},
        )
        source = replace(source, dataset=source.dataset.padded(pad))
    return source


def check_decode(decode: str) -> None:
    """``decode`` names where images are decoded: ``cpu`` (the loader's workers) or ``gpu``."""
    if decode not in DECODE_MODES:
        raise OptionError(
            f"--decode '{decode}' is not one of {', '.join(DECODE_MODES)}; give "
            f"{option('decode')} one of these."
        )


def wrap_dataset(dataset: Any, *, spec: str | None = None, num_workers: int = 0) -> Source:
    """A user's own Dataset (items: tensor, or (tensor, label, ...)), fed as it is; an
    IterableDataset without an index is read once as it comes (:mod:`actextract.data.streams`:
    by ``num_workers`` DataLoader workers, when more than 0)."""
    if isinstance(dataset, Source):
        return dataset
    if isinstance(dataset, DataLoader):  # its dataset in its order, batched by the run
        return wrap_loader(dataset, num_workers=num_workers)
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if is_stream(dataset):
        return wrap_stream(dataset, spec=spec or f"python-object:{name}", num_workers=num_workers)
    classes = getattr(dataset, "classes", None)
    return Source(
        spec=spec or f"python-object:{name}",
        dataset=SampleDataset(dataset, transform=None, ids=None),
        transform="as given by the dataset",
        classes=tuple(map(str, classes)) if classes is not None else None,
    )


def _digits(spec: str, preprocess: Preprocess) -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N,1,8,8) [0,1]
    # The digits' own statistics at the size they are fed, so that a model trained on them
    # sees zero-mean, unit-std inputs.
    size = preprocess.over(Preprocess(resize=28, crop=0))
    sized = Preprocess(resize=size.resize, crop=size.crop).transform()(images)
    own = Preprocess(
        channels=1, resize=28, crop=0, mean=(float(sized.mean()),), std=(float(sized.std()),)
    )
    pre = preprocess.over(own)
    base = list(zip(images, digits.target.tolist(), strict=True))
    return Source(
        spec,
        SampleDataset(base, transform=pre.transform(), ids=None),
        transform=pre.describe(),
        classes=tuple(str(c) for c in range(10)),
        preprocess=pre,
    )


def _torchvision(spec: str, kind: str, rest: str, preprocess: Preprocess) -> Source:
    import torchvision.datasets as tvd

    root_str, _, split = rest.partition(":")
    split = split or "train"
    cls_name, split_arg = TORCHVISION_DATASETS[kind]
    root = Path(root_str).expanduser()
    if not root_str or not root.is_dir():
        raise SourceError(
            f"{option('dataset')} {spec}: root folder '{root}' does not exist. Give the "
            f"folder that holds the {cls_name} files, e.g. {kind}:./data."
        )
    if split_arg == "train":
        if split not in ("train", "test"):
            raise SourceError(
                f"{option('dataset')} {spec}: split '{split}' is not 'train' or 'test'."
            )
        kwargs: dict[str, Any] = {"train": split == "train"}
    else:
        kwargs = {"split": split}
    if kind != "imagenet":
        kwargs["download"] = False
    try:
        base = getattr(tvd, cls_name)(str(root), **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
        raise SourceError(
            f"{option('dataset')} {spec}: torchvision's {cls_name} found no usable files under "
            f"'{root}' ({e}). actextract never downloads: place the dataset there first (for "
            f"example with torchvision.datasets.{cls_name}('{root}', download=True) on a machine "
            "with internet)."
        ) from None
    pre = preprocess.over(Preprocess(channels=3))
    classes = getattr(base, "classes", None)
    return Source(
        spec,
        SampleDataset(base, transform=pre.transform(), ids=None),
        transform=pre.describe(),
        classes=tuple(map(str, classes)) if classes is not None else None,
        preprocess=pre,
    )


def _synthetic(spec: str, rest: str) -> Source:
    try:
        n, *shape = (int(v) for v in rest.split(":"))
    except ValueError:
        n, shape = 0, []
    if n <= 0 or not shape or any(d <= 0 for d in shape):
        raise SourceError(
            f"{option('dataset')} {spec}: expected synthetic:N:C:H:W with positive "
            "integers, e.g. synthetic:1024:3:224:224."
        )
    return Source(
        spec,
        SampleDataset(_Synthetic(n, tuple(shape)), transform=None, ids=None),
        transform="seeded standard normal, fed as is (label = index % 10)",
        classes=tuple(str(c) for c in range(10)),
    )
