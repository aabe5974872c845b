"""Resolve ``module:attr`` and ``path/to/file.py:attr`` references (user datasets and models)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_object(ref: str, *, what: str, error: type[Exception]) -> Any:
    """Import ``module.sub:attr`` or ``some/file.py:attr`` and return the attribute.

    ``what`` names the option in messages ("--model python:..."), ``error`` is the class raised.
    """
    module_name, sep, attr = ref.rpartition(":")
    if not sep or not module_name or not attr:
        raise error(f"{what} '{ref}' is not of the form 'module:callable' or 'file.py:callable'.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise error(f"{what}: file '{path}' does not exist.")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise error(f"{what}: cannot import '{path}' as a Python file.")
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise error(
            f"{what}: cannot import module '{module_name}' ({e}). "
            "Is it installed, or on PYTHONPATH?"
        ) from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise error(f"{what}: module '{module_name}' has no attribute '{attr}'.") from None
