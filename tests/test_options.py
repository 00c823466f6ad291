"""Options are declared once, on the Options dataclasses (rsyn/options): every command's command line is built
from them. Walks every registered command of the real app and checks what can break: no flag taken twice, every
Options field reachable, old names (aliases) hidden but working, giving an old and a new name together refused."""

import inspect
from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
import typer.main
from conftest import rsyn
from typer.testing import CliRunner

from rsyn.cli import app
from rsyn.command import rsyn_command
from rsyn.options import flags, opt, option_fields, unmarked_fields


def walk(command, path=()):
    """(name path, click command) of every leaf command under `command`."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from walk(sub, (*path, name))


COMMANDS = list(walk(typer.main.get_command(app)))


def options_of(command):
    fn = inspect.unwrap(command.callback) if command.callback else None  # Typer's wrapper, then rsyn_command's
    return getattr(fn, "options", None)


def declared(param) -> list[str]:
    return [*param.opts, *param.secondary_opts]


def test_the_walk_sees_every_command_and_the_passes():
    names = {"-".join(path) for path, _ in COMMANDS}
    for expected in ("extract", "embed", "caption", "dedup", "dedup-scan", "cat", "export", "pack", "report"):
        assert expected in names
    assert {"balance-balance", "balance-balance-plan", "index-build", "index-train", "retrieve"} <= names
    with_options = [path for path, command in COMMANDS if options_of(command) is not None]
    assert len(with_options) >= 20


@pytest.mark.parametrize("path,command", COMMANDS, ids=["-".join(p) for p, _ in COMMANDS])
def test_no_two_parameters_share_a_flag(path, command):
    seen = {}
    for param in command.params:
        for flag in declared(param):
            assert flag not in seen, f"{' '.join(path)}: {flag} is both {seen[flag]} and {param.name}"
            seen[flag] = param.name


@pytest.mark.parametrize("path,command", COMMANDS, ids=["-".join(p) for p, _ in COMMANDS])
def test_every_options_field_is_on_the_command_line_and_old_names_are_hidden(path, command):
    cls = options_of(command)
    if cls is None:
        return
    by_flag = {flag: param for param in command.params for flag in declared(param)}
    for field in option_fields(cls):
        for flag in field.opt.flags:
            for name in flag.split("/"):
                assert name in by_flag and not by_flag[name].hidden, f"{' '.join(path)}: {name} ({field.name})"
                assert by_flag[name].name == field.name
        for alias in field.opt.aliases:
            assert by_flag[alias].hidden, f"{' '.join(path)}: old name {alias} is shown by --help"
    # fields the command line does not set are few and say so (field(metadata=INTERNAL))
    assert set(unmarked_fields(cls)) <= {"parquet_batch_rows", "api_key", "max_pixels"}


def test_the_renamed_options_keep_their_old_names_hidden():
    help_of = {"-".join(path): command for path, command in COMMANDS}
    renamed = {
        "embed": (["embed"], "--image-workers", "--workers"),
        "caption": (["caption"], "--image-workers", "--workers"),
        "extract": (["extract"], "--ppl-precision", "--ppl-dtype"),
        "balance-balance": (["balance"], "--tmp-dir", "--spill-dir"),
        "index-build": (["index"], "--kmeans-iters", "--niter"),
        "index-train": (["index", "train"], "--kmeans-points-per-cluster", "--points-per-cluster"),
    }
    for name, (words, new, old) in renamed.items():
        params = {flag: p for p in help_of[name].params for flag in declared(p)}
        assert not params[new].hidden and params[old].hidden
        text = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200"}).output
        assert new in text and old not in text.replace(new, "")


def test_an_old_name_still_works_and_both_names_together_are_one_line(tmp_path):
    @dataclass
    class Toy:
        size: Annotated[int, opt("--new-size", min=0, aliases=("--old-size",), help="A size.")] = 3
        names: Annotated[list[str], opt("--names", parse=lambda v: v.split(","), shown=",".join)] = None

    toy = typer.Typer()
    got = []

    @rsyn_command(toy, "toy", "A toy.", options=Toy)
    def run_toy(run, opts: Toy) -> None:
        got.append(opts)

    @toy.command("other")
    def other() -> None:  # a second command, so that `toy` is a subcommand as in rsyn
        pass

    runner = CliRunner()
    out = tmp_path / "o.jsonl"
    assert runner.invoke(toy, ["toy", "--old-size", "7", "--names", "a,b", "-q", "-o", str(out)]).exit_code == 0
    assert runner.invoke(toy, ["toy", "--new-size", "8", "-q", "-o", str(out)]).exit_code == 0
    assert runner.invoke(toy, ["toy", "-q", "-o", str(out)]).exit_code == 0
    assert [(o.size, o.names) for o in got] == [(7, ["a", "b"]), (8, None), (3, None)]
    both = runner.invoke(toy, ["toy", "--old-size", "7", "--new-size", "8", "-q", "-o", str(out)])
    assert (
        both.exit_code == 2
        and both.output == "rsyn: error: --old-size is the old name of --new-size: give --new-size only\n"
    )
    assert "--old-size" not in runner.invoke(toy, ["toy", "--help"]).output


def test_both_names_on_a_real_command_are_one_line():
    proc = rsyn("embed", "--workers", "2", "--image-workers", "3", "-")
    err = proc.stderr.decode()
    assert (
        proc.returncode == 2
        and err == "rsyn: error: --workers is the old name of --image-workers: give --image-workers only\n"
    )


def test_a_flag_declared_twice_is_refused_when_the_command_is_registered():
    @dataclass
    class Clash:
        seed: Annotated[int, opt("--my-seed")] = 0
        other: Annotated[int, opt("--seed")] = 0  # the common option's flag

    with pytest.raises(TypeError, match="--seed"):
        rsyn_command(typer.Typer(), "clash", "Clash.", options=Clash)(lambda run, opts: None)


def test_pipeline_passes_route_options_by_the_option_groups():
    from rsyn.options.balance import BalancePlanOptions, CapOptions

    assert "--sim-range" in flags(BalancePlanOptions) and "--kmeans-iters" in flags(BalancePlanOptions)
    assert set(flags(CapOptions)) == {"--per-cluster", "--target"}
