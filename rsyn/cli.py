"""The `rsyn` command line: one Typer app, one subcommand per pipeline stage."""

from __future__ import annotations

import gc
import importlib
from typing import Annotated

import typer

from rsyn import __version__

app = typer.Typer(
    name="rsyn",
    help="RealSyn pipeline: interleaved web documents -> image-text pairs. "
    "Commands read and write zstd JSONL record streams (stdin/stdout by default) and compose in pipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Pipeline order; each name is a module in rsyn/commands that registers itself.
COMMANDS = ["extract", "dedup", "embed", "index", "retrieve", "caption", "balance", "pack", "export", "cat", "report"]


def _version(value: bool) -> None:
    if value:
        print(f"rsyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    pass


for _name in COMMANDS:
    importlib.import_module(f"rsyn.commands.{_name}")
importlib.import_module("rsyn.commands.plan")  # the whole pipeline: rsyn plan, rsyn run; not stream commands
importlib.import_module("rsyn.commands.run")
importlib.import_module("rsyn.commands.doctor")  # not a pipeline stage: after them in --help


def main() -> None:
    # Streams allocate millions of small, acyclic dicts: with the default thresholds the cyclic GC
    # keeps rescanning every long-lived object (the imported libraries included). Freezing what
    # startup made and collecting less often cuts rsyn cat's CPU time by about a quarter.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    app()
