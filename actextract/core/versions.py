"""Versions: actextract's own, and the software that made a store (its provenance)."""

from __future__ import annotations

import platform

__all__ = ["__version__", "software"]

__version__ = "0.1.0"


def software(*, torchvision: bool = True) -> dict[str, str]:
    """The versions that made a store (``torchvision=False``: without torchvision, whose
    import takes seconds, for work that does not use it)."""
    import numpy
    import torch
    import zarr

    versions = {"actextract": __version__, "torch": torch.__version__}
    if torchvision:
        import torchvision as tv

        versions["torchvision"] = tv.__version__
    return versions | {
        "zarr": zarr.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
