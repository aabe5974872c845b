"""Option types of the ``actextract`` command: click callbacks that parse comma lists, JSON and
the verbosity, the options that several commands share, and how every command reports a user
error. Parsing only; no library calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from actextract.errors import ActextractError

__all__ = [
    "CONTEXT",
    "capture_option",
    "choice_option",
    "count_option",
    "dtype_option",
    "float_list",
    "int_list",
    "numbers",
    "progress_off",
    "quiet",
    "sample_rows",
    "say",
    "storage_kwargs",
    "storage_option",
    "trust_option",
    "user_errors",
    "verbosity_options",
]

# show_default: every option's default in its help ("[default: 64]"); an option whose default
# is None says in its help what happens without it
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}


@contextmanager
def user_errors(ctx: click.Context) -> Iterator[None]:
    """An :class:`ActextractError` becomes a usage error: exit code 2, its message, no
    traceback."""
    try:
        yield
    except ActextractError as e:
        raise click.UsageError(str(e), ctx) from None


# -- -v / -q: on the group and on every command (actextract.cli.help adds them) ----------------
# ctx.meta keys (meta is shared by a command's context and its group's)
_VERBOSE, _QUIET, _LOGGING = "actextract.verbose", "actextract.quiet", "actextract.logging"


def _verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-v and -q, where given (group or command), add up in the context; the log level follows
    at once, before the command runs."""
    if param.name == "verbose":
        ctx.meta[_VERBOSE] = ctx.meta.get(_VERBOSE, 0) + value
    elif value:
        ctx.meta[_QUIET] = True
    verbose, is_quiet = ctx.meta.get(_VERBOSE, 0), ctx.meta.get(_QUIET, False)
    if verbose and is_quiet:
        if _LOGGING in ctx.meta:  # a -v before it set logging up: the command will not run
            ctx.meta.pop(_LOGGING)()
        raise click.BadParameter("give -v (more output) or -q (errors only), not both.", ctx, param)
    level = logging.ERROR if is_quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose)
    _log_to_stderr(ctx, level or logging.DEBUG)


def verbosity_options() -> list[click.Option]:
    """-v/--verbose and -q/--quiet, new for each command that lists them."""
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_verbosity,
            show_default=False,
            help="More log output on stderr: -v what is done (info), -vv debug and whole "
            "tracebacks. Default: warnings and errors.",
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            callback=_verbosity,
            help="Errors only: no progress bar, no warnings, no summary of what was written "
            "(what a command is asked to show, like a table or --json, still is).",
        ),
    ]


def quiet(ctx: click.Context) -> bool:
    return ctx.meta.get(_QUIET, False)


def say(ctx: click.Context, text: str, err: bool = False) -> None:
    """Echo a status line (what was written, how long it took) unless -q."""
    if not quiet(ctx):
        click.echo(text, err=err)


def progress_off(ctx: click.Context) -> bool | None:
    """tqdm's ``disable``: off under -q, else on a terminal only (None)."""
    return True if quiet(ctx) else None


class _Echo(logging.Handler):
    """Log records to click's stderr of the moment (a terminal, or CliRunner's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "run_summary", False):  # the summary the command echoes itself
            return
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - as logging.StreamHandler does
            self.handleError(record)


def _log_to_stderr(ctx: click.Context, level: int) -> None:
    """actextract's log records at ``level`` and up (other packages': warnings, or everything
    with -vv) to stderr for this command; the handler and levels go when its context closes, so
    that nothing stays behind in a process that runs commands in turn (tests, a notebook)."""
    root, package = logging.getLogger(), logging.getLogger("actextract")
    if _LOGGING not in ctx.meta:
        handler = _Echo()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        saved = root.level, package.level
        root.addHandler(handler)

        def restore() -> None:
            root.removeHandler(handler)
            root.setLevel(saved[0])
            package.setLevel(saved[1])

        ctx.meta[_LOGGING] = restore
        ctx.find_root().call_on_close(restore)
    root.setLevel(level if level in (logging.DEBUG, logging.ERROR) else logging.WARNING)
    package.setLevel(level)


# -- --storage-options -------------------------------------------------------------------------
STORAGE_EXAMPLE = '{"endpoint_url": "http://127.0.0.1:9000", "anon": true}'


def _json_object(ctx, param, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(
            f"'{value}' is not JSON ({e.msg}); give an object, e.g. {STORAGE_EXAMPLE}.", ctx, param
        ) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(
            f"'{value}' is a JSON {type(parsed).__name__}, not an object; give e.g. "
            f"{STORAGE_EXAMPLE}.",
            ctx,
            param,
        )
    return parsed


storage_option = click.option(
    "--storage-options",
    metavar="JSON",
    envvar="ACTEXTRACT_STORAGE_OPTIONS",
    show_envvar=True,
    callback=_json_object,
    help="Options of the store URL's file system (fsspec: s3://, gs://, ...) as a JSON object, "
    f"e.g. {STORAGE_EXAMPLE}. Default: none, fsspec's own (its environment variables).",
)


def storage_kwargs(options: dict | None) -> dict[str, dict]:
    """``storage_options=`` for a library call, only where --storage-options was given."""
    return {} if options is None else {"storage_options": options}


def numbers(ctx, param, value: str, convert, example: str) -> tuple:
    try:
        return tuple(convert(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not {example}.", ctx, param) from None


def int_list(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    out = numbers(ctx, param, value, int, "comma-separated integers, e.g. 3,224,224")
    if any(v <= 0 for v in out):
        raise click.BadParameter(f"'{value}' has a dimension that is not positive.", ctx, param)
    return out


def float_list(ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    return numbers(ctx, param, value, float, "comma-separated numbers, e.g. 0.485,0.456,0.406")


def hist_range(ctx, param, value: str | None) -> tuple[float, float] | None:
    values = float_list(ctx, param, value)
    if values is not None and len(values) != 2:
        raise click.BadParameter(f"'{value}': give LO,HI, e.g. -1,4.", ctx=ctx, param=param)
    return values


def dtype_option(help_text: str):
    return choice_option("--dtype", ["float16", "float32"], "float16", help_text, shown=True)


def choice_option(
    name: str, choices: list[str], default: str | None, help_text: str, *, shown: bool = False
):
    """An option that takes one of ``choices``; ``shown``: its help ends with the default in
    click's own form (``[default: ...]``) rather than in its text."""
    return click.option(
        name,
        type=click.Choice(choices),
        default=default,
        **({"show_default": True} if shown else {}),
        help=help_text,
    )


def count_option(
    name: str, help_text: str, *, least: int = 1, default: int | None = None, dest: str = ""
):
    """An integer option of at least ``least`` (a count or a size); with no ``default`` its
    help says what happens without it. ``dest``: the parameter's name where it is not the
    option's."""
    return click.option(
        name,
        *([dest] if dest else []),
        type=click.IntRange(min=least),
        default=default,
        help=help_text,
    )


capture_option = choice_option(
    "--capture",
    ["auto", "fx", "hooks"],
    "auto",
    "torch.fx, forward hooks (module names only), or fx with hooks as fallback.",
    shown=True,
)


def sample_rows(ctx, param, value: str) -> str | tuple[int, ...]:
    if value == "per-class":
        return value
    return numbers(ctx, param, value, int, "'per-class' or row indices such as 0,17,42")


trust_option = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Let --weights be a whole pickled module (or other pickled objects): unpickling runs "
    "code from the file, so only for files you trust. Without it such a file is refused.",
)
