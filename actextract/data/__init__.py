"""Data: dataset specs → samples with a row index, a label and an id, and their loader.

``source`` opens a spec (``digits``, ``folder:PATH``, ``mnist:ROOT``, ``synthetic:...``,
``python:module:callable``) or wraps a user's Dataset; ``samples`` says what a sample and a
batch are, ``images`` how images become tensors (:class:`Preprocess`), ``inputs`` how inputs
that are tuples or dicts of tensors batch; ``folders`` reads image
folders; ``decode`` decodes JPEGs on the GPU (``--decode gpu``); ``rules`` takes or refuses
labels and normalisation; ``probes`` is the fixed sample set a Recorder runs. Knows nothing of
models or stores.
"""

from actextract.data.samples import Batch, Preprocess, Sample, Source, make_loader
from actextract.data.source import open_source, wrap_dataset

__all__ = ["Batch", "Preprocess", "Sample", "Source", "make_loader", "open_source", "wrap_dataset"]
