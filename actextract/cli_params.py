"""Option types of the ``actextract`` command: click callbacks that parse comma lists into
numbers, and the options that several commands share. Parsing only; no library calls."""

from __future__ import annotations

import click

__all__ = ["capture_option", "dtype_option", "float_list", "int_list", "numbers", "sample_rows"]


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


def dtype_option(help_text: str):
    return click.option(
        "--dtype",
        type=click.Choice(["float16", "float32"]),
        default="float16",
        show_default=True,
        help=help_text,
    )


capture_option = click.option(
    "--capture",
    type=click.Choice(["auto", "fx", "hooks"]),
    default="auto",
    show_default=True,
    help="torch.fx, forward hooks (module names only), or fx with hooks as fallback.",
)


def sample_rows(ctx, param, value: str) -> str | tuple[int, ...]:
    if value == "per-class":
        return value
    return numbers(ctx, param, value, int, "'per-class' or row indices such as 0,17,42")
