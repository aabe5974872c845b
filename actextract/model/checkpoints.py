"""Checkpoints (``--weights``): read without running code from the file, unless trusted.

- A state_dict saved with ``torch.save`` (also inside ``{"state_dict": ...}``,
  ``{"model_state_dict": ...}`` or ``{"model": ...}``, with ``module.``/``_orig_mod.`` prefixes
  removed) loads with ``torch.load(weights_only=True)``, which builds tensors and plain
  containers only.
- A safetensors file (found by its header, or by its ``.safetensors`` suffix) loads with the
  ``safetensors`` package.
- Anything else pickled (a whole ``nn.Module``, a checkpoint holding other Python objects) needs
  the full unpickler, and unpickling can execute arbitrary code from the file: only with
  ``trust=True`` (``--trust-checkpoint``), never as a fallback.

Before torch reads the file its structure is checked statically (``pickletools`` parses, runs
nothing): an empty file, random bytes, a truncated zip or a pickle that ``torch.save`` did not
write is refused, trusted or not, and never reaches an unpickler.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from actextract.errors import CheckpointError, UntrustedCheckpointError, option

__all__ = [
    "Checkpoint",
    "file_sha256",
    "fit_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
]

log = logging.getLogger(__name__)

# "torch": torch.load(weights_only=True), no code ran; "pickle": the full unpickler, trusted
Format = Literal["safetensors", "torch", "pickle"]

_SAVE = (
    "save a state_dict with torch.save(model.state_dict(), path) or "
    "safetensors.torch.save_file(model.state_dict(), path)"
)


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds, its sha256, and how it was read."""

    content: Any  # a state_dict, a wrapper around one, or (trusted) whatever the pickle held
    sha256: str
    format: Format


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(
    module: nn.Module, path: str | Path, *, trust: bool = False
) -> tuple[nn.Module, str]:
    """Load a checkpoint file into ``module`` (or, trusted, replace it by a pickled module).

    Returns (module, sha256 of the file). Raises CheckpointError naming the missing,
    unexpected and mis-shaped keys when the state_dict does not fit, and
    UntrustedCheckpointError when only the full unpickler could read the file and ``trust``
    is False.
    """
    checkpoint = read_checkpoint(path, trust=trust)
    return fit_checkpoint(module, checkpoint.content, Path(path)), checkpoint.sha256


def read_checkpoint(path: str | Path, *, trust: bool = False) -> Checkpoint:
    """The content of the checkpoint file ``path`` (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{option('weights')} '{path}' does not exist or is not a file; pass the path of a "
            "checkpoint."
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"--weights '{path}' is empty (0 bytes): an interrupted save or copy? Save or copy "
            f"it again; to write one, {_SAVE}."
        )
    sha = file_sha256(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if _is_safetensors(head, size) or path.suffix == ".safetensors":
        return Checkpoint(_load_safetensors(path), sha, "safetensors")
    if head.startswith(b"PK"):
        _check_zip(path)
    else:
        _check_legacy(path, head, size)
    try:
        return Checkpoint(_torch_load(path, weights_only=True), sha, "torch")
    except pickle.UnpicklingError:
        pass  # a well-formed pickle of objects beyond tensors and plain containers: below
    except Exception as e:
        raise CheckpointError(
            f"--weights '{path}' cannot be read as a torch checkpoint ({_why(e)}); is it "
            f"damaged? Save or copy it again; to write one, {_SAVE}."
        ) from None
    needs = _unsafe_globals(path)
    what = f" ({_names(needs)})" if needs else ""
    if not trust:
        raise UntrustedCheckpointError(
            f"--weights '{path}' is not a plain state_dict: it holds pickled Python "
            f"objects{what}, as a whole pickled module does, and loading it would run code "
            "from the file (pickle can execute arbitrary code). If you trust where the file "
            "came from, pass --trust-checkpoint (trust_checkpoint=True in Python); better, "
            f"{_SAVE} once, and load that."
        )
    log.warning(
        "%s: unpickling%s with %s; this runs code from the file",
        path,
        what,
        option("trust_checkpoint"),
    )
    try:
        content = _torch_load(path, weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"--weights '{path}' cannot be unpickled, even trusted ({_why(e)}); is the code "
            f"it refers to importable here? Or, where it loads, {_SAVE}."
        ) from None
    return Checkpoint(content, sha, "pickle")


def fit_checkpoint(module: nn.Module, content: Any, path: Path) -> nn.Module:
    """``module`` with the state_dict in ``content`` loaded; or ``content`` when it is a
    module (a trusted pickle)."""
    if isinstance(content, nn.Module):
        return content
    state = _find_state_dict(content, path)
    _check_fits(module, state, path)
    module.load_state_dict(state, strict=True)
    return module


# -- reading ---------------------------------------------------------------------------------
def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors' layout: an 8-byte little-endian header length, then a JSON object."""
    n = int.from_bytes(head[:8], "little")
    return len(head) > 8 and 2 <= n <= size - 8 and head[8:9] == b"{"


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"--weights '{path}' is a safetensors file, and the safetensors package is not "
            "installed; pip install safetensors."
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise CheckpointError(
            f"--weights '{path}' is not a valid safetensors file ({_why(e)}); is it damaged "
            "or truncated? Save it again with safetensors.torch.save_file(model.state_dict(), "
            "path)."
        ) from None


def _check_zip(path: Path) -> None:
    """A ``torch.save`` zip archive: readable, with a data.pkl that parses, not TorchScript."""
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.split("/", 1)[-1]: n for n in z.namelist()}
            data = z.read(names["data.pkl"]) if "data.pkl" in names else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"--weights '{path}' is a damaged or truncated zip archive ({_why(e)}); save or "
            "copy it again."
        ) from None
    if "constants.pkl" in names:
        raise CheckpointError(
            f"--weights '{path}' is a TorchScript archive (torch.jit.save), not a state_dict; "
            "from the scripted model, save one with torch.save(model.state_dict(), path)."
        )
    if data is None:
        raise CheckpointError(
            f"--weights '{path}' is a zip archive without data.pkl, not a checkpoint "
            f"torch.save wrote; is it the right file? To write one, {_SAVE}."
        )
    _check_pickle(io.BytesIO(data), path)


def _check_legacy(path: Path, head: bytes, size: int) -> None:
    """An older ``torch.save`` file: the magic number's pickle, then three more that parse."""
    with open(path, "rb") as f:
        reader = _Bounded(f, size)
        try:  # the magic number's pickle is a handful of opcodes; more is something else
            ops = [(op.name, arg) for op, arg, _ in islice(pickletools.genops(reader), 8)]
        except Exception:
            ops = []
        plain = {"PROTO", "FRAME", "LONG1", "LONG4", "LONG", "INT", "BINPUT", "PUT", "STOP"}
        if (
            not ops
            or ops[-1][0] != "STOP"
            or any(name not in plain for name, _ in ops)
            or torch.serialization.MAGIC_NUMBER not in [arg for _, arg in ops]
        ):
            raise CheckpointError(
                f"--weights '{path}' cannot be read as a checkpoint: it is not a torch.save "
                "file (a zip archive, or an older torch pickle) nor a safetensors file (it "
                f"starts with bytes {head[:8].hex(' ')}). Is it the right file? To write one, "
                f"{_SAVE}."
            )
        for _ in range(3):  # protocol version, system info, the object
            _check_pickle(reader, path)


def _check_pickle(f: Any, path: Path) -> None:
    try:
        for _ in pickletools.genops(f):
            pass
    except Exception as e:
        raise CheckpointError(
            f"--weights '{path}' is damaged: its pickle does not parse ({_why(e)}); save or "
            "copy it again."
        ) from None


class _Bounded:
    """A file for pickletools: reads never ask for more than the file has left."""

    def __init__(self, f: Any, size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline(1 << 16)

    def tell(self) -> int:
        return self.f.tell()


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    with warnings.catch_warnings():  # torch's advice on weights_only: the errors here say it
        warnings.filterwarnings("ignore", message=".*weights_only")
        warnings.filterwarnings("ignore", message=".*pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions in the file the weights-only unpickler refuses (static)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch 2.5+
    try:
        return sorted(find(path)) if find is not None else []
    except Exception:
        return []


def _names(names: list[str]) -> str:
    ours = [n for n in names if not n.startswith(("torch.", "builtins.", "collections."))]
    shown = (ours or names)[:3]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _why(e: BaseException) -> str:
    """An exception in one line, never empty."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- fitting ---------------------------------------------------------------------------------
def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"--weights '{path}' holds {type(obj).__name__}, not a state_dict (a dict of "
            f"tensors) or an nn.Module; {_SAVE}."
        )
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):  # DataParallel / torch.compile wrappers
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _check_fits(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches (checkpoint vs model)", shapes),
    ):
        if items:
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            parts.append(f"{title}: {', '.join(items[:8])}{more}")
    raise CheckpointError(
        f"--weights '{path}' does not fit {type(module).__name__}: "
        + "; ".join(parts)
        + ". Is it a checkpoint of this architecture?"
    )
