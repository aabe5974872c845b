"""The click classes of ``actextract``: every command and the group take -v/-q (added here
once, beside --help, so that no command lists them itself), and a command can list its options
in titled sections followed by examples (click has no sections of its own)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from actextract.cli.params import verbosity_options

__all__ = ["Command", "Group", "Section", "options_of"]

Section = tuple[str, Sequence[click.Parameter]]  # a title and its options, in --help's order
_COL_MAX = 30  # click's widest first column of a definition list; wider names wrap after it


def options_of(*decorators: Callable) -> list[click.Parameter]:
    """The parameters that these ``click.option`` decorators add, in the order given."""

    def holder() -> None: ...

    for decorate in reversed(decorators):
        decorate(holder)
    return list(reversed(holder.__click_params__))  # type: ignore[attr-defined]


class _Verbosity:
    """-v/--verbose and -q/--quiet after the command's own options, before --help (made once
    per command: click orders callbacks by the identity of its parameters)."""

    _verbosity: list[click.Option] | None = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)  # type: ignore[misc]
        if self._verbosity is None:
            self._verbosity = verbosity_options()
        help_option = self.get_help_option(ctx)  # type: ignore[attr-defined]
        own = [p for p in params if p is not help_option]
        return [*own, *self._verbosity, *([help_option] if help_option else [])]


class Command(_Verbosity, click.Command):
    """A command with -v/-q; with ``sections``, --help lists the options under their titles
    (the rest, -v, -q and --help, under ``rest``), and then ``examples``: (what it does, the
    command) pairs."""

    def __init__(
        self,
        *args,
        sections: Sequence[Section] = (),
        examples: Sequence[tuple[str, str]] = (),
        rest: str = "Options",
        **kwargs,
    ) -> None:
        listed = [p for _, params in sections for p in params]
        kwargs["params"] = [*listed, *(kwargs.get("params") or ())]  # and its decorators'
        super().__init__(*args, **kwargs)
        self.sections = [(title, list(params)) for title, params in sections]
        self.examples = list(examples)
        self.rest = rest

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.sections:
            return super().format_options(ctx, formatter)
        placed = {id(p) for _, params in self.sections for p in params}
        rest = [p for p in self.get_params(ctx) if id(p) not in placed]
        sections = [(t, [*ps, *rest] if t == self.rest else ps) for t, ps in self.sections]
        if self.rest not in dict(self.sections):
            sections.append((self.rest, rest))
        records = [
            [r for p in ps if (r := p.get_help_record(ctx)) is not None] for _, ps in sections
        ]
        # one column width for every section (click measures each list of its own)
        width = min(_COL_MAX, max((len(first) for rows in records for first, _ in rows), default=0))
        for (title, _), rows in zip(sections, records, strict=True):
            if rows:
                with formatter.section(title):
                    formatter.write_dl([(first.ljust(width), text) for first, text in rows])

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if not self.examples:
            return
        with formatter.section("Examples"):
            for i, (what, command) in enumerate(self.examples):
                if i:
                    formatter.write_paragraph()
                formatter.write_text(what)
                with formatter.indentation():
                    for line in command.splitlines():
                        formatter.write(f"{'':>{formatter.current_indent}}{line}\n")


class Group(_Verbosity, click.Group):
    """The ``actextract`` group: its commands are :class:`Command`\\ s."""

    command_class = Command
