"""What every command shares: its options, the run context (input, output, stats, errors), the summary.

A command is a function `fn(run: Run, opts: SomeOptions)` decorated with
`@rsyn_command(..., options=SomeOptions)`. The decorator builds the command line
from the Options dataclass (rsyn/options: each option declared once, on its
field), adds the shared options (defined once, here), builds the Options object,
opens a `Run`, and turns bad input into the one-line `rsyn: error: FILE:LINE:
...` message with exit status 2.

Inside, a stage reads with `run.records()` (or `run.input_paths()` for
non-JSONL inputs), drops with `run.drop(record, reason)`, reports bad input
with `run.error(where, message, record=...)` and writes with
`run.write(records)`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import inspect
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Annotated, Any

import orjson
import typer

from rsyn import __version__
from rsyn.errors import RsynError
from rsyn.options import Field, option_fields, parse_k_of_n
from rsyn.options import build as build_options
from rsyn.stream import (
    STDIO,
    RecordWriter,
    ShardPlan,
    StreamError,
    TruncatedStream,
    expand_inputs,
    iter_line_blocks,
    parse_line,
    plan_shard,
    write_bytes_atomic,
)


class Terminated(BaseException):
    """SIGTERM (what Slurm, `timeout` and `kill` send) arrived: unwind like Ctrl-C, removing temporaries."""


class OnError(str, Enum):
    fail = "fail"
    skip = "skip"


def parse_shard(value: str | None) -> tuple[int, int] | None:
    try:
        return parse_k_of_n(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


# Shared options, defined once. The decorator appends them to every command's signature.
_COMMON = [
    (
        "inputs",
        Annotated[
            list[str] | None,
            typer.Argument(help="Input files or quoted globs; '-' or nothing reads stdin.", show_default=False),
        ],
        None,
    ),
    (
        "output",
        Annotated[
            str | None,
            typer.Option(
                "-o",
                "--output",
                help="Output file ('-' = stdout). Written to a temporary name, renamed when complete.",
                rich_help_panel="Common options",
            ),
        ],
        None,
    ),
    (
        "shard",
        Annotated[
            str | None,
            typer.Option(
                "--shard",
                metavar="K/N",
                help="Process the K-th of N disjoint slices of the input: a contiguous range of whole files when there "
                "are at least N input files, else the records at positions K mod N (docs/scaling.md).",
                rich_help_panel="Common options",
            ),
        ],
        None,
    ),
    (
        "on_error",
        Annotated[
            OnError,
            typer.Option(
                "--on-error",
                help="fail: stop at the first bad input (exit 2); skip: count it, log it to --rejects, go on.",
                rich_help_panel="Common options",
            ),
        ],
        OnError.fail,
    ),
    (
        "rejects",
        Annotated[
            str | None,
            typer.Option(
                "--rejects",
                metavar="PATH",
                help="JSONL of dropped and rejected records with their reason and place.",
                rich_help_panel="Common options",
            ),
        ],
        None,
    ),
    (
        "stats",
        Annotated[
            str | None,
            typer.Option(
                "--stats",
                metavar="PATH",
                help="Write the run summary (in, out, dropped per reason, seconds) as JSON.",
                rich_help_panel="Common options",
            ),
        ],
        None,
    ),
    (
        "seed",
        Annotated[int, typer.Option("--seed", help="Seed for every random choice.", rich_help_panel="Common options")],
        0,
    ),
    (
        "device",
        Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel="Common options")],
        "auto",
    ),
    (
        "quiet",
        Annotated[
            bool,
            typer.Option(
                "--quiet", "-q", help="No progress and no summary on stderr.", rich_help_panel="Common options"
            ),
        ],
        False,
    ),
    (
        "log_every",
        Annotated[
            float,
            typer.Option(
                "--log-every",
                metavar="SECONDS",
                min=0,
                help="When stderr is not a terminal (a log file, Slurm, nohup), or stdout is a pipe into the next "
                "stage, a progress line every SECONDS (records done of the total, rate, ETA); 0: none. In a terminal the "
                "last stage of a pipe draws a live line instead.",
                rich_help_panel="Common options",
            ),
        ],
        30.0,
    ),
]
COMMON_NAMES = [name for name, _, _ in _COMMON]


class Run:
    """One command invocation: shared options, input/output, counters, rejects, summary."""

    def __init__(
        self,
        command: str,
        inputs=None,
        output=None,
        shard=None,
        on_error=OnError.fail,
        rejects=None,
        stats=None,
        seed=0,
        device="auto",
        quiet=False,
        log_every=30.0,
    ):
        self.command = command
        self._inputs = list(inputs or [])
        self._output = output
        self._output_claimed = False  # a stage that reads run.output writes it itself (a directory, a page)
        self._paths: list[str] | None = None
        self._plan: ShardPlan | None = None
        self.shard = parse_shard(shard) if isinstance(shard, str) or shard is None else shard
        self.skip_errors = OnError(on_error) == OnError.skip
        self._rejects_path = rejects
        self._stats_path = stats
        self.seed = seed
        self.device_option = device
        self.quiet = quiet
        self._n_in = 0
        self._written_elsewhere = 0
        self._dropped: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self.extra: dict[str, Any] = {}  # stage-specific numbers for --stats
        # `in` and `out` per kind of record, shown in the summary line (extract: images and sentences apart)
        self.in_parts: dict[str, int] = {}
        self.out_parts: dict[str, int] = {}
        self.where_file = ""  # the place of the record last read by records()
        self.where_line = 0
        self._device = None
        self._faiss_device = None  # faiss and torch may see different GPUs (a CPU-only build of either)
        self._writer: RecordWriter | None = None
        self._compression: str | None = None  # None: the writer's default (zstd)
        self._rejects: RecordWriter | None = None
        self._start = time.perf_counter()
        self.log_every = log_every
        self._ticker = None  # rsyn.progress.Ticker: draws the counts below from its own thread
        self._advanced: int | None = None  # input records finished, for stages that report it (advance)
        self._bytes_read = 0  # compressed input bytes read so far, for the estimated total
        self._in_at_bytes_read = 0  # records read from those bytes
        self._total_bytes: int | None = None
        self._input_complete = False

    # ------------------------------------------------------------------ what stages read
    @property
    def inputs(self) -> tuple[str, ...]:
        """INPUT... as given (globs unexpanded); `input_paths()` expands them."""
        return tuple(self._inputs)

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def dropped(self) -> Mapping[str, int]:
        """Records dropped so far, per reason (read-only: drop() and count_dropped() count)."""
        return MappingProxyType(self._dropped)

    @property
    def errors(self) -> Mapping[str, int]:
        """Bad input skipped so far, per reason (read-only: error() counts)."""
        return MappingProxyType(self._errors)

    @property
    def logs_rejects(self) -> bool:
        """Whether --rejects was given (a stage may skip building the details of drops nobody reads)."""
        return bool(self._rejects_path)

    def count_in(self, n: int) -> None:
        """n more input records that were read other than through records() (documents, pass directories)."""
        self._n_in += n

    def count_dropped(self, reason: str, n: int) -> None:
        """n records dropped for `reason` without logging each one (only when not logs_rejects)."""
        self._dropped[reason] = self._dropped.get(reason, 0) + n

    def plain_output(self) -> None:
        """Write -o as uncompressed JSONL (before the first record is written)."""
        if self._writer is not None:
            raise RuntimeError("plain_output() after the first record was written")
        self._compression = "plain"

    def read_plan(self, plan: ShardPlan) -> None:
        """Read what `plan` keeps instead of what --shard would (rsyn cat --range)."""
        self._plan = plan

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Run:
        from rsyn.progress import Ticker, choose_mode

        mode = choose_mode(self.quiet, self.log_every)
        if mode is not None:
            self._ticker = Ticker(self.command, mode, self._snapshot, self.log_every)
            self._ticker.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
        if exc_type is None:
            if (
                self._writer is None
                and self._output not in (None, STDIO)
                and not self._output_claimed
                and not self._written_elsewhere
            ):
                self._get_writer()  # no record came out: -o is still written (empty), as make expects
            if self._writer is not None:
                self._writer.close()
            if self._rejects is not None:
                self._rejects.close()
            self._finish()
        else:
            for w in (self._writer, self._rejects):
                if w is not None:
                    w.abort()
        return False

    def _finish(self) -> None:
        asked_cuda = (self.device_option or "").strip().lower().startswith("cuda")
        if asked_cuda and self._device is None and self._faiss_device is None:
            # checked after the run, so it holds for every code path: the stage never asked for a device
            self.note(
                f"warning: --device {self.device_option} was given, but this run used no GPU "
                "(nothing in it runs on one)"
            )
        summary = self.summary()
        if self._stats_path:
            write_bytes_atomic(
                self._stats_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            )
        if not self.quiet:
            print(self.summary_line(summary), file=sys.stderr)

    def summary(self) -> dict:
        return {
            "command": self.command,
            "version": __version__,
            "in": self._n_in,
            "out": self.n_out,
            "dropped": dict(self._dropped),
            "errors": dict(self._errors),
            "seconds": round(time.perf_counter() - self._start, 3),
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            **(
                {"shard_rule": self._plan.rule, "shard_files": self._plan.paths}
                if self.shard and self._plan is not None
                else {}
            ),
            "seed": self.seed,
            "device": self._device or self._faiss_device,
            **({"stage": self.extra} if self.extra else {}),
            **({"in_parts": dict(self.in_parts)} if self.in_parts else {}),
            **({"out_parts": dict(self.out_parts)} if self.out_parts else {}),
        }

    @staticmethod
    def summary_line(s: dict) -> str:
        def part(counts: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in counts.items() if v)

        def split(key: str) -> str:
            return f" ({', '.join(f'{v} {k}' for k, v in s[key].items())})" if s.get(key) else ""

        line = f"rsyn {s['command']}: {s['in']} in{split('in_parts')}, {s['out']} out{split('out_parts')}"
        n_drop = sum(s["dropped"].values())
        if n_drop:
            line += f", {n_drop} dropped ({part(s['dropped'])})"
        n_err = sum(s["errors"].values())
        if n_err:
            line += f", {n_err} skipped errors ({part(s['errors'])})"
        return line + f", {s['seconds']:.1f}s"

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> str:
        """The torch device for a model ('cpu', 'cuda:0', ...), resolved once, when first asked (so just
        before a model loads), and announced on stderr. torch is imported only if a GPU might exist."""
        if self._device is None:
            from rsyn.models.device import resolve_device

            self._device = resolve_device(self.device_option)
            self.note(f"device {self._device}")
        return self._device

    @property
    def faiss_device(self) -> str:
        """Like `device`, for a stage that runs only faiss: resolved without importing torch."""
        if self._faiss_device is None:
            from rsyn.models.device import resolve_faiss_device

            self._faiss_device = resolve_faiss_device(self.device_option)
            if self._faiss_device != self._device:
                self.note(f"device {self._faiss_device}")
        return self._faiss_device

    def note(self, message: str) -> None:
        if not self.quiet:
            if self._ticker is not None:
                self._ticker.print(f"rsyn {self.command}: {message}")
            else:
                print(f"rsyn {self.command}: {message}", file=sys.stderr)

    # ------------------------------------------------------------------ input
    def input_paths(self) -> list[str]:
        """All expanded inputs, every shard's (globs expanded here so quoted globs work)."""
        if self._paths is None:
            try:
                self._paths = expand_inputs(self._inputs)
            except StreamError as exc:
                raise RsynError(str(exc)) from None
            if any(glob.has_magic(i) for i in self._inputs):
                self.note(f"{len(self._paths)} input file{'s' if len(self._paths) != 1 else ''} matched")
        return list(self._paths)

    def shard_plan(self) -> ShardPlan:
        """What this shard reads (rsyn.stream.plan_shard decides it; --stats records it)."""
        if self._plan is None:
            paths = self.input_paths()
            try:
                self._plan = plan_shard(paths, self.shard)
            except OSError as exc:
                raise RsynError(f"{exc.filename}: {exc.strerror}") from None
            if self._plan.rule == "files":
                self.note(
                    f"shard {self.shard[0]}/{self.shard[1]} reads {len(self._plan.paths)} of {len(paths)} input files"
                )
        return self._plan

    def shard_paths(self) -> list[str]:
        """The inputs this shard opens, in input order (for inputs that are not JSONL records)."""
        return self.shard_plan().paths

    def in_shard(self, items: Iterable) -> Iterator:
        """This shard's items among those read, in order, from shard_paths() (documents, parquet rows)."""
        plan = self.shard_plan()
        if plan.rule != "records":
            yield from items
            return
        keeps = plan.keeps
        for position, item in enumerate(items):
            if keeps(position):
                yield item

    def records(self) -> Iterator[dict]:
        """All input records of this shard, in input order; bad lines handled per --on-error."""
        for name, first, lines, kept in self._input_blocks():
            for lineno, record in self._parse_lines(name, enumerate(lines, first) if kept is None else kept):
                self._n_in += 1
                self.where_line = lineno
                yield record

    def record_blocks(self) -> Iterator[list[dict]]:
        """Like records(), in lists (one per ~1 MiB of input): for stages that need no per-record place.

        A block of clean lines is parsed with one map() call; a block with a bad
        line falls back to line-by-line handling, with the same errors as records().
        """
        loads = orjson.loads
        for name, first, lines, kept in self._input_blocks():
            raw = lines if kept is None else [line for _, line in kept]
            try:
                block = list(map(loads, raw))
                if not all(type(r) is dict for r in block):
                    raise ValueError
            except ValueError:  # orjson.JSONDecodeError is a ValueError
                numbered = enumerate(lines, first) if kept is None else kept
                block = [record for _, record in self._parse_lines(name, numbered)]
            self._n_in += len(block)
            if block:
                self.where_line = first + len(lines) - 1
                yield block

    def _input_blocks(self) -> Iterator[tuple[str, int, list[bytes], list[tuple[int, bytes]] | None]]:
        """Per block of input: (file name, first line number, lines, this shard's (line number, line)
        pairs, or None when every line is this shard's). A corrupt stream is reported per --on-error."""
        plan = self.shard_plan()
        by_position = plan.rule == "records"
        self._position = -1
        self._total_bytes = _total_size(plan.paths)
        for path in plan.paths:
            name = "<stdin>" if path == STDIO else path
            self.where_file = name
            for first, lines in iter_line_blocks(path, on_corrupt=self._corrupt_stream, on_read=self._count_read):
                yield name, first, lines, (self._this_shard(lines, first, plan) if by_position else None)
        self._input_complete = True

    def _count_read(self, n_bytes: int) -> None:
        # called between blocks: the records read so far came from exactly these bytes
        self._bytes_read += n_bytes
        self._in_at_bytes_read = self._n_in

    def _corrupt_stream(self, exc: TruncatedStream) -> None:
        self.error(
            exc.where,
            exc.message,
            reason="corrupt_stream",
            details={"lost_lines": exc.lost_lines, "lost_bytes": exc.lost_bytes},
        )

    def _parse_lines(self, name: str, numbered: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, dict]]:
        """(line number, record) of each line that is a JSON object; blank lines skipped, others reported."""
        for lineno, line in numbered:
            try:
                record = parse_line(line, name, lineno)
            except StreamError as exc:
                if line.strip():  # blank lines are allowed and are not records
                    self.error(exc.where, exc.message, raw=line, reason=exc.reason)
                continue
            yield lineno, record

    def _this_shard(self, lines: list[bytes], first: int, plan: ShardPlan) -> list[tuple[int, bytes]]:
        """(line number, line) of the non-blank lines whose input position the plan keeps."""
        kept = []
        keeps = plan.keeps
        for lineno, line in enumerate(lines, first):
            if line and not line.isspace():
                self._position += 1
                if keeps(self._position):
                    kept.append((lineno, line))
        return kept

    def advance(self, n_records: int) -> None:
        """n more input records are finished (written, dropped or skipped): for stages that read ahead and
        work in batches (embed, caption), so that progress follows the work rather than the reading."""
        self._advanced = (self._advanced or 0) + n_records

    def _snapshot(self):
        from rsyn.progress import Snapshot

        return Snapshot(
            done=self._n_in if self._advanced is None else self._advanced,
            n_out=self.n_out,
            dropped=sum(self._dropped.values()),
            errors=sum(self._errors.values()),
            bytes_read=self._bytes_read,
            in_at_bytes_read=self._in_at_bytes_read,
            total_bytes=self._total_bytes,
            n_in=self._n_in,
            input_complete=self._input_complete,
            elapsed=time.perf_counter() - self._start,
        )

    # ------------------------------------------------------------------ output
    @property
    def output(self) -> str | None:
        """-o as given. A stage that reads it writes its output itself (a directory, a page, a plain
        writer of its own): the frame then leaves -o alone when the stage wrote no records."""
        self._output_claimed = True
        return self._output

    def _get_writer(self) -> RecordWriter:
        if self._writer is None:
            self._writer = (
                RecordWriter(self._output)
                if self._compression is None
                else RecordWriter(self._output, compression=self._compression)
            )
        return self._writer

    @property
    def n_out(self) -> int:
        return (self._writer.n_written if self._writer is not None else 0) + self._written_elsewhere

    def count_out(self, n: int) -> None:
        """Count output written other than as JSONL records (parquet rows, tar samples, an index)."""
        self._written_elsewhere += n

    def write(self, records: Iterable[dict]) -> None:
        """Write records to the output (a closed pipe, as `| head` makes, ends the run quietly: run_command)."""
        self._get_writer().write_many(records)

    # ------------------------------------------------------------------ drops and errors
    @property
    def where(self) -> str:
        """FILE:LINE of the record last read (a batching stage should save it with each record)."""
        return f"{self.where_file}:{self.where_line}"

    def drop(self, record: dict, reason: str, where: str | None = None, **details) -> None:
        """A record removed on purpose (a filter, a duplicate): counted, logged to --rejects.

        `where` defaults to the place of the record last read; a stage that
        batches records passes the place it saved for this one.
        """
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        if self._rejects_path:
            self._reject_line(
                {"reason": reason, "kind": "drop", "where": where or self.where, **details, "record": record}
            )

    def error(
        self,
        where: str,
        message: str,
        *,
        record: dict | None = None,
        raw: bytes | None = None,
        reason: str = "bad_input",
        details: dict | None = None,
    ) -> None:
        """Bad input: raise (exit 2, one line) or, with --on-error skip, count and log it."""
        if not self.skip_errors:
            raise RsynError(f"{where}: {message}")
        self._errors[reason] = self._errors.get(reason, 0) + 1
        if self._rejects_path:
            entry = {"reason": reason, "kind": "error", "where": str(where), "message": message, **(details or {})}
            if record is not None:
                entry["record"] = record
            if raw is not None:
                entry["raw"] = raw.decode("utf-8", "replace")
            self._reject_line(entry)

    def _reject_line(self, entry: dict) -> None:
        if self._rejects is None:
            self._rejects = RecordWriter(self._rejects_path)
        self._rejects.write(entry)

    def declare_reasons(self, reasons: Iterable[str]) -> None:
        """Fix the order of drop reasons in the summary (e.g. the filter order, for a funnel)."""
        for reason in reasons:
            self._dropped.setdefault(reason, 0)


def _total_size(paths: list[str]) -> int | None:
    """Bytes of the inputs, or None when one has no size known in advance (stdin, a pipe)."""
    total = 0
    for path in paths:
        try:
            st = os.stat(path) if path != STDIO else None
        except OSError:
            return None
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        total += st.st_size
    return total


def rsyn_command(
    app: typer.Typer,
    name: str,
    summary: str,
    options: type | None = None,
    common: tuple[str, ...] | None = None,
    **command_kwargs,
) -> Callable:
    """Register `rsyn NAME` with the shared options appended.

    With `options=SomeOptions` (a dataclass whose fields carry rsyn.options.opt markers) the command line is
    built from the fields and the command is called as `fn(run, opts)`; without it, as `fn(run, **own options)`
    from fn's own Typer parameters (only for commands that take none).
    `common` names the shared options the command takes (all by default): a pass that reads its work
    directory, not a stream, takes no inputs, -o or --on-error; the others keep their defaults.
    """

    def decorate(fn: Callable) -> Callable:
        if options is None:
            own = [p for p in inspect.signature(fn).parameters.values() if p.name != "run"]
            fields, aliases = [], []
        else:
            fields = list(option_fields(options))
            own, aliases = _option_parameters(name, fields)
        taken = COMMON_NAMES if common is None else [n for n in COMMON_NAMES if n in common]
        shared_params = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
            for n, a, d in _COMMON
            if n in taken
        ]
        # inputs is positional: put it first so Typer treats it as the argument list
        first = shared_params[:1] if taken and taken[0] == "inputs" else []
        own_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        params = first + own_params + shared_params[len(first) :] + aliases
        _check_unique(name, params)
        if aliases:  # to tell where a value came from (the command line or a default)
            params.append(inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(fn)
        def wrapper(**kwargs):
            shared = {n: kwargs.pop(n) for n in taken}
            try:
                shared["shard"] = parse_shard(shared.get("shard"))
            except typer.BadParameter as exc:
                fail(f"--shard {exc}")
            if options is None:
                run_command(name, lambda run: fn(run, **kwargs), **shared)
                return
            if aliases:
                _take_aliases(fields, kwargs, kwargs.pop(_CONTEXT))
            try:
                opts = build_options(options, kwargs)
            except RsynError as exc:  # options that contradict each other (checked by the Options class)
                fail(str(exc))
            run_command(name, lambda run: fn(run, opts), **shared)

        wrapper.__signature__ = inspect.Signature(params)
        doc = (fn.__doc__ or summary).strip()
        pairs = {flag for f in fields if f.opt.words == 2 for flag in (*f.opt.flags, *f.opt.aliases)}
        if pairs:
            command_kwargs.setdefault("cls", _two_word_command(pairs))
        app.command(name, help=doc, short_help=summary, **command_kwargs)(wrapper)
        fn.options = options  # for tests that walk the commands
        return fn

    return decorate


def _typer_option(f: Field, flags: tuple[str, ...], hidden: bool = False):
    o = f.opt
    kwargs = dict(o.extra)
    for key, value in (("help", o.help), ("rich_help_panel", o.panel), ("metavar", o.metavar)):
        if value is not None:
            kwargs[key] = value
    if o.min is not None:
        kwargs["min"] = o.min
    if o.max is not None:
        kwargs["max"] = o.max
    if o.show_default is not True:
        kwargs["show_default"] = o.show_default
    if o.parse is not None:
        kwargs["callback"] = _parser(o.parse)
    return typer.Option(*flags, hidden=hidden, **kwargs)


def _cli_type(f: Field):
    if f.opt.cli_type is not None:
        return f.opt.cli_type
    if f.opt.parse is not None:
        return str | None if f.default is None else str
    return f.type


def _cli_default(f: Field):
    if f.default is dataclasses.MISSING:
        return inspect.Parameter.empty  # required
    if f.opt.shown is not None and f.default is not None:
        return f.opt.shown(f.default)
    return f.default


def _option_parameters(name: str, fields: list[Field]) -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """The Typer parameters of the Options fields, and a hidden one per old name (alias)."""
    own, aliases = [], []
    for f in fields:
        tp = _cli_type(f)
        own.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[tp, _typer_option(f, f.opt.flags)],
                default=_cli_default(f),
            )
        )
        for i, alias in enumerate(f.opt.aliases):
            if "/" in alias or tp is bool:
                raise TypeError(f"rsyn {name}: {alias}: a boolean option cannot have an old name")
            aliases.append(
                inspect.Parameter(
                    _alias_name(f, i),
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[tp | None, _typer_option(f, (alias,), hidden=True)],
                    default=None,
                )
            )
    return own, aliases


def _alias_name(f: Field, i: int) -> str:
    return f"{f.name}__old_name_{i}"


_CONTEXT = "typer_context__"


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _take_aliases(fields: list[Field], kwargs: dict, ctx: typer.Context) -> None:
    """Move the values given under an old name (hidden alias) to the option's own name."""
    for f in fields:
        for i, alias in enumerate(f.opt.aliases):
            value = kwargs.pop(_alias_name(f, i))
            if not _given(ctx, _alias_name(f, i)):
                continue
            if _given(ctx, f.name):
                fail(f"{alias} is the old name of {f.opt.flags[0]}: give {f.opt.flags[0]} only")
            kwargs[f.name] = value


def _parser(parse: Callable) -> Callable:
    def callback(value):
        if value is None:  # not given, and the field's default is None
            return None
        try:
            return parse(value)
        except RsynError as exc:  # a message that names the option itself: one line, exit 2
            fail(str(exc))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return callback


def _check_unique(name: str, params: list[inspect.Parameter]) -> None:
    """Two parameters with one flag would shadow each other silently: refuse at registration."""
    seen: dict[str, str] = {}
    for p in params:
        info = next((m for m in getattr(p.annotation, "__metadata__", ()) if hasattr(m, "param_decls")), None)
        decls = [info.default] if isinstance(getattr(info, "default", None), str) else []
        for decl in [*(getattr(info, "param_decls", None) or ()), *decls]:
            for flag in str(decl).split("/"):
                if flag.startswith("-"):
                    if flag in seen:
                        raise TypeError(f"rsyn {name}: {flag} is both {seen[flag]} and {p.name}")
                    seen[flag] = p.name


def _two_word_command(flags: set[str]) -> type:
    """A command class that reads `--flag A B` as `--flag A,B` when A is a bare number (opt(words=2)):
    a range written as two words, as papers write it, without a second word ever landing in INPUT."""
    from typer.core import TyperCommand

    class TwoWordCommand(TyperCommand):
        def parse_args(self, ctx, args):
            return super().parse_args(ctx, join_two_words(list(args), flags))

    return TwoWordCommand


def join_two_words(args: list[str], flags: set[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out += args[i:]
            break
        flag, eq, value = arg.partition("=")
        if flag in flags:
            if not eq and i + 1 < len(args):
                value, i = args[i + 1], i + 1
            elif not eq:
                out.append(arg)
                i += 1
                continue
            if _is_number(value) and i + 1 < len(args):
                value, i = f"{value},{args[i + 1]}", i + 1
            arg = f"{flag}={value}"
        out.append(arg)
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated()


def run_command(name: str, body: Callable[[Run], None], **shared) -> None:
    # SIGTERM unwinds like Ctrl-C so that every writer removes its temporary (only the main thread may set it)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        with Run(name, **shared) as run:
            body(run)
    except RsynError as exc:
        fail(str(exc))
    except StreamError as exc:
        fail(str(exc))
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        _silence_stdout()
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        print(f"rsyn {name}: interrupted; no output was left behind", file=sys.stderr)
        raise typer.Exit(130) from None
    except Terminated:
        print(f"rsyn {name}: terminated (SIGTERM); no output was left behind", file=sys.stderr)
        raise typer.Exit(128 + signal.SIGTERM) from None
    except MemoryError:
        fail(f"{name}: out of memory")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def fail(message: str, status: int = 2):
    print(f"rsyn: error: {message}", file=sys.stderr)
    raise typer.Exit(status)
