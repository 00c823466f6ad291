"""Command-line options, declared once: on the fields of a stage's Options dataclass.

A stage declares what it can be told as a dataclass whose fields carry an `opt(...)` marker:

    @dataclass
    class ExtractOptions:
        min_side: Annotated[int, opt("--min-side", min=0, panel="Image filter", help="...")] = 100

The default lives only on the field. `rsyn.command.rsyn_command(..., options=ExtractOptions)` turns every
marked field into a command-line option (flag, help, panel, bounds from the marker; type and default from
the field) and hands the stage the Options object built from what was parsed. This module knows nothing
of the command-line library, so stages import it freely (tests/test_layering.py).

Groups: a field whose type is itself an Options dataclass (with a default_factory) is a group of options,
flattened into the command line; so are the fields of a base class. A pass command takes exactly the
groups it needs and no list of options is written twice.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Opt:
    """How one Options field appears on the command line."""

    flags: tuple[str, ...]  # e.g. ("--min-side",), or ("--draft/--no-draft",) for a boolean pair
    help: str | None = None
    panel: str | None = None  # the --help section
    metavar: str | None = None
    min: float | None = None
    max: float | None = None
    # old names still accepted, hidden from --help, for one release; giving one with the new name is an error
    aliases: tuple[str, ...] = ()
    # str -> field value (comma lists, ...); raises ValueError with a one-line reason. The command line then
    # takes a string, shown by --help as `shown(default)`.
    parse: Callable[[Any], Any] | None = None
    shown: Callable[[Any], Any] | None = None
    cli_type: Any = None  # the type the command line parses, when it differs from the field's
    show_default: bool | str = True
    # 2: `--opt A B` is read as `--opt A,B` when A is a bare number (a range written as two words)
    words: int = 1
    extra: dict = dataclasses.field(default_factory=dict)  # passed on as is (exists=, dir_okay=, ...)


def opt(
    *flags: str,
    help: str | None = None,
    panel: str | None = None,
    metavar: str | None = None,
    min: float | None = None,
    max: float | None = None,
    aliases: tuple[str, ...] = (),
    parse: Callable[[Any], Any] | None = None,
    shown: Callable[[Any], Any] | None = None,
    cli_type: Any = None,
    show_default: bool | str = True,
    words: int = 1,
    **extra: Any,
) -> Opt:
    """The command-line face of an Options field: `name: Annotated[T, opt("--flag", help=...)] = default`."""
    if not flags:
        raise ValueError("opt() needs at least one flag")
    return Opt(
        tuple(flags), help, panel, metavar, min, max, tuple(aliases), parse, shown, cli_type, show_default, words, extra
    )


INTERNAL = {"rsyn_internal": True}  # field(metadata=INTERNAL): set by code, not by the command line


def comma_list(value: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"] (empty names ignored)."""
    return [name.strip() for name in str(value).split(",") if name.strip()]


def joined(value) -> str:
    """The inverse of comma_list, for --help's default."""
    return ",".join(sorted(value) if isinstance(value, set | frozenset) else value)


@dataclass(frozen=True)
class Field:
    """One command-line option of an Options class, flattened."""

    name: str  # the parameter name: unique over the whole class, groups included
    type: Any  # the field's type
    default: Any  # the field's default (a default_factory called)
    opt: Opt


def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def is_group(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _own_first(cls) -> list[dataclasses.Field]:
    """The fields of `cls`, its own before those of its bases (a stage's options before the shared groups)."""
    own = cls.__dict__.get("__annotations__", {})
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def option_fields(cls) -> Iterator[Field]:
    """Every command-line option of `cls`, groups flattened: its own fields in declaration order, then the
    fields it inherits from option groups."""
    hints = _hints(cls)
    for f in _own_first(cls):
        hint = hints[f.name]
        marker = None
        base = hint
        if typing.get_origin(hint) is typing.Annotated:
            base, *meta = typing.get_args(hint)
            marker = next((m for m in meta if isinstance(m, Opt)), None)
        if marker is not None:
            yield Field(f.name, base, _default(f), marker)
        elif is_group(base):
            yield from option_fields(base)
        elif not f.metadata.get("rsyn_internal"):
            raise TypeError(f"{cls.__name__}.{f.name}: an Options field needs opt(...) or field(metadata=INTERNAL)")


def unmarked_fields(cls) -> list[str]:
    """Fields of `cls` (groups included) that are set by code, not by the command line."""
    hints = _hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        base = hints[f.name]
        if typing.get_origin(base) is typing.Annotated:
            continue
        if is_group(base):
            names += unmarked_fields(base)
        else:
            names.append(f.name)
    return names


def build(cls, values: dict):
    """The Options object from command-line values by parameter name (groups built recursively)."""
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Annotated:
            if f.name in values:
                kwargs[f.name] = values[f.name]
        elif is_group(hint):
            kwargs[f.name] = build(hint, values)
    return cls(**kwargs)


def parse_k_of_n(value: str | None) -> tuple[int, int] | None:
    """`K/N`, the K-th of N slices (0 <= K < N), as (K, N); None or "" -> None. ValueError otherwise."""
    if value in (None, ""):
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ValueError(f"{value!r} is not K/N (e.g. 0/8)") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"{value!r}: need 0 <= K < N")
    return k, n


def k_of_n(flag: str) -> Callable[[str | None], tuple[int, int] | None]:
    """parse_k_of_n for the option `flag`: its errors are one line naming the flag."""
    from rsyn.errors import RsynError

    def parse(value: str | None) -> tuple[int, int] | None:
        try:
            return parse_k_of_n(value)
        except ValueError as exc:
            raise RsynError(f"{flag} {exc}") from None

    return parse


def flags(cls) -> tuple[str, ...]:
    """Every flag of `cls`'s options, old names included (`--x/--no-x` as both): what a command line of a
    command taking `cls` may name."""
    names = []
    for f in option_fields(cls):
        for decl in (*f.opt.flags, *f.opt.aliases):
            names += [part for part in decl.split("/") if part.startswith("-")]
    return tuple(names)
