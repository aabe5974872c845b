"""Names: layer names and the globs that choose them, by path rules over dotted names.

A glob matches a name level by level, the levels being its dot-separated parts: ``*`` matches
within one level (any characters but a dot), ``?`` one character but a dot, ``[abc]`` one of
a set, and ``**`` as a whole level any number of levels, none included. So ``features.*`` is
the direct children of ``features``, ``layer*.**.conv2`` every ``conv2`` under ``layer1`` ..
``layer4`` at any depth, ``*`` the top-level names and ``**`` every name. A pattern that is a
name in the list is that name (``lstm[1]`` needs no escaping).

Every option that picks layers (``--layers``, ``--store``, ``--reduce``, ``--stats``,
``--layout``, the renderer's ``--layers``) matches with :func:`match_names`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

__all__ = ["count_matches", "glob_regex", "is_glob", "match_names", "names_option", "wider_hint"]


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a path glob (see the module docstring)."""
    parts = pattern.split(".")
    if parts == ["**"]:
        return re.compile(r".*")
    regex, sep = "", False
    for i, part in enumerate(parts):
        if part == "**":
            if i == len(parts) - 1:  # trailing: the levels below, none included
                regex += r"(?:\.[^.]+)*"
            else:  # leading or inner: levels before the next part, none included
                regex += (r"\." if i > 0 else "") + r"(?:[^.]+\.)*"
                sep = False
                continue
        else:
            regex += (r"\." if sep else "") + _level(part)
        sep = True
    return re.compile(regex)


def _level(part: str) -> str:
    """One level of a glob: ``*``, ``?`` and ``[...]`` stay within the level."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[" and (end := part.find("]", i + 2)) != -1:
            body = part[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _hits(pattern: str, names: Sequence[str]) -> list[str]:
    if pattern in names:
        return [pattern]
    if not is_glob(pattern):
        return []
    regex = glob_regex(pattern)
    return [n for n in names if regex.fullmatch(n)]


def match_names(
    patterns: Iterable[str], names: Sequence[str], not_found: Callable[[str], Exception]
) -> list[str]:
    """Names and globs → the ``names`` they match, in the order of ``names``, without
    duplicates; a pattern that matches nothing raises ``not_found(pattern)``."""
    chosen: set[str] = set()
    for pat in patterns:
        hits = _hits(pat, names)
        if not hits:
            raise not_found(pat)
        chosen.update(hits)
    return [n for n in names if n in chosen]


def count_matches(patterns: Iterable[str], names: Sequence[str]) -> dict[str, int]:
    """How many of ``names`` each pattern matches (0 for none)."""
    return {pat: len(_hits(pat, names)) for pat in patterns}


def wider_hint(pattern: str, names: Sequence[str]) -> str:
    """For a glob that matched nothing: the same glob with ``**`` between its levels, when
    that one matches (``*`` stays within one dotted level)."""
    if not is_glob(pattern):
        return ""
    parts = [p for p in pattern.split(".") if p != "**"]
    wider = ".**.".join(parts) if len(parts) > 1 else f"**.{parts[0]}" if parts else ""
    if wider and wider != pattern and _hits(wider, names):
        return f" ('*' stays within one dotted level; '{wider}' matches at any depth)"
    return ""


def names_option(spec: Sequence[str] | str | None) -> list[str] | None:
    """A --layers/--store value as names (``none``: no layer), or None when not given."""
    if spec is None:
        return None
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    return [] if names == ["none"] else names
