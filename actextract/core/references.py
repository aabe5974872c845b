"""Resolve ``module:attr`` and ``path/to/file.py:attr`` references (user datasets and models).

Whatever goes wrong in the user's code (the module is missing, it imports a package that is not
installed, it raises at import, the callable raises) becomes the caller's error class, naming the
spec, the file and line where it failed and the original message; the original exception is
chained and its traceback logged at debug level (``-vv``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep  # frames of actextract itself


def load_object(ref: str, *, what: str, error: type[Exception]) -> Any:
    """Import ``module.sub:attr`` or ``some/file.py:attr`` and return the attribute, which may
    be dotted (``module:Factory.make``), as :func:`pkgutil.resolve_name` reads ``module:a.b``.

    ``what`` names the option in messages ("--model python:..."), ``error`` is the class raised.
    """
    module_name, sep, attr = ref.rpartition(":")
    if not sep or not module_name or not attr or "" in attr.split("."):
        raise error(
            f"{what} '{ref}' is not of the form 'module:callable' or 'file.py:callable' "
            "(the callable may be dotted: 'module:Class.method')."
        )
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name), what=what, error=error)
    else:
        module = _import_module(module_name, attr, what=what, error=error)
    obj, where, walked = module, f"module '{module_name}'", []
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            shown = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
            raise error(
                f"{what}: {where} has no attribute '{part}'"
                + (f"; it defines: {shown}." if public else ".")
            ) from None
        walked.append(part)
        where = f"'{module_name}:{'.'.join(walked)}'"
    return obj


def call_object(obj: Any, *, what: str, error: type[Exception], returns: str) -> Any:
    """``obj()``, with anything it raises turned into ``error`` naming where it failed;
    ``returns`` says what it should return ("an nn.Module"), for the message."""
    if not callable(obj):
        raise error(
            f"{what} names an object of type {type(obj).__name__}, which cannot be called; name a "
            f"function or class that returns {returns}."
        )
    try:
        return obj()
    except Exception as e:
        log.debug("%s: calling %r raised", what, obj, exc_info=True)
        name = getattr(obj, "__qualname__", type(obj).__name__)
        raise error(
            f"{what}: calling {name}() failed{_where(e)}: {_message(e)}. Fix it there (run with "
            "-vv for the full traceback)."
        ) from e


def _import_file(path: Path, *, what: str, error: type[Exception]) -> Any:
    if not path.is_file():
        raise error(f"{what}: file '{path}' does not exist.")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise error(f"{what}: cannot import '{path}' as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(path.stem, module)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        if sys.modules.get(path.stem) is module:  # leave no half-imported module behind
            del sys.modules[path.stem]
        raise _import_failed(e, f"file '{path}'", what=what, error=error) from e
    return module


def _import_module(name: str, attr: str, *, what: str, error: type[Exception]) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise error(
                f"{what}: cannot import module '{name}' ({e}). Is it installed, or on "
                f"PYTHONPATH? A file can be given as python:path/to/{name.split('.')[-1]}.py:"
                f"{attr}."
            ) from e
        raise _import_failed(e, f"module '{name}'", what=what, error=error) from e
    except (Exception, SystemExit) as e:
        raise _import_failed(e, f"module '{name}'", what=what, error=error) from e


def _import_failed(e: BaseException, name: str, *, what: str, error: type[Exception]) -> Exception:
    """The error for a module that was found but failed while it ran; ``name``: "module 'x'"
    or "file 'x.py'"."""
    log.debug("%s: importing %s failed", what, name, exc_info=e)
    if isinstance(e, ModuleNotFoundError) and e.name:
        return error(
            f"{what}: {name} imports '{e.name}', which is not installed "
            f"({type(e).__name__}: {e}{_where(e)}). Install it, or remove that import."
        )
    if isinstance(e, SystemExit):
        return error(
            f"{what}: {name} called sys.exit({e.code!r}) while it was imported"
            f"{_where(e)}. Put script code under if __name__ == '__main__':."
        )
    return error(
        f"{what}: importing {name} failed{_where(e)}: {_message(e)}. Fix the module "
        "(run with -vv for the full traceback)."
    )


def _message(e: BaseException) -> str:
    if isinstance(e, SyntaxError):  # its str() repeats the file and line
        return f"{type(e).__name__}: {e.msg}"
    return f"{type(e).__name__}: {e}"


def _where(e: BaseException) -> str:
    """`` at FILE:LINE`` where ``e`` was raised: for a SyntaxError the offending line; else the
    innermost frame of the user's own code, and the library frame that raised, if different."""
    if isinstance(e, SyntaxError) and e.filename:
        return f" at {e.filename}:{e.lineno}"
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if not f.filename.startswith("<frozen") and not f.filename.startswith(_PACKAGE_DIR)
    ]
    if not frames:
        return ""
    raised = frames[-1]
    installed = {sysconfig.get_path(p) for p in ("stdlib", "platstdlib", "purelib", "platlib")}
    own = [f for f in frames if not any(f.filename.startswith(d) for d in installed if d)]
    where = own[-1] if own else raised
    text = f" at {where.filename}:{where.lineno}"
    if where is not raised:
        text += f" (raised in {raised.filename}:{raised.lineno})"
    return text
