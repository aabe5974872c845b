"""Model: specs → ``nn.Module`` and what can be captured from it.

``zoo`` loads a model (torchvision names, ``module:callable``, the demo CNN) with its
checkpoint (``checkpoints``: read without running code unless trusted); ``capture`` chooses
layers and returns their outputs for a batch, by torch.fx (``fxgraph``) or hooks; ``probe``
and ``trace`` find each output's shape, layout and whether it must be cloned; ``reduce`` pools
and casts on the device; ``discover`` is ``actextract layers``; ``text`` its terminal views.
Moves nothing off the device and knows nothing of stores.
"""

from actextract.model.capture import Capture, build_capture
from actextract.model.discover import LayerTable, list_layers
from actextract.model.reduce import Reducer, parse_reductions
from actextract.model.zoo import DigitsCNN, LoadedModel, load_model

__all__ = [
    "Capture",
    "DigitsCNN",
    "LayerTable",
    "LoadedModel",
    "Reducer",
    "build_capture",
    "list_layers",
    "load_model",
    "parse_reductions",
]
