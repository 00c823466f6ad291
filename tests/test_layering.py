"""Layering: library code never imports the CLI frame, and stages take `Run` only as the context they are handed.

Checked two ways. Statically, by walking every module's import statements (including those inside
functions, which a plain `import` of the module would not execute). Dynamically, by importing every
library and stage module in one fresh interpreter and asserting `rsyn.command` (and typer) never loaded.
"""

import ast
import json
import pathlib
import subprocess
import sys

import rsyn

PACKAGE = pathlib.Path(rsyn.__file__).parent
# The CLI frame and what is allowed to use it: the command modules, the entry point, and the whole-pipeline driver,
# which runs commands as subprocesses but shares their option parsing.
CLI_LAYER = {"cli.py", "command.py", "__main__.py", "doctor.py"}
CLI_PACKAGES = {"commands"}


def library_modules() -> list[pathlib.Path]:
    paths = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in CLI_PACKAGES or (len(relative.parts) == 1 and relative.name in CLI_LAYER):
            continue
        paths.append(path)
    return paths


def imported_names(path: pathlib.Path) -> list[tuple[int, str, bool]]:
    """(line, module, only for type checking) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    type_checking_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for inner in node.body:
                type_checking_lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, node.lineno in type_checking_lines) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, node.lineno in type_checking_lines))
    return found


def test_the_walk_sees_the_modules_it_must_check():
    names = {str(p.relative_to(PACKAGE)) for p in library_modules()}
    for expected in (
        "stream.py",
        "records.py",
        "documents.py",
        "filters.py",
        "images.py",
        "vectors.py",
        "llm.py",
        "prompts.py",
        "tags.py",
        "models/device.py",
        "models/clip.py",
        "stages/balance.py",
        "stages/dedup/near.py",
        "pipeline/runner.py",
    ):
        assert expected in names


def test_no_library_module_imports_the_cli_frame():
    offenders = []
    for path in library_modules():
        for line, module, type_only in imported_names(path):
            if module in ("rsyn.command", "rsyn.commands", "rsyn.cli") or module.startswith("rsyn.commands."):
                if not type_only:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_importing_every_library_module_loads_neither_the_cli_frame_nor_typer():
    modules = [
        "rsyn." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        for p in library_modules()
    ]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('rsyn.command', 'rsyn.cli', 'typer')))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
