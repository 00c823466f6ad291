"""The pipeline file: a TOML document naming inputs, models, thresholds, shard counts, resources and output.

Loading does three things, in this order: apply `--set KEY=VALUE` overrides to the parsed table,
substitute `${name}` from the `[vars]` table in every string, and check every key against the
known ones (a typo is an error, not a silently ignored setting). Relative paths are relative to the
pipeline file's directory, so a pipeline runs the same from any working directory.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PipelineError(Exception):
    """A bad pipeline file or override: one line, `rsyn: error: ...`, exit 2."""


# key -> (type check, default); types are checked so a misspelt value fails at plan time, not on the cluster
_PIPELINE_KEYS = {"output": str, "seed": int, "device": str, "on_error": str, "program": list}
_INPUT_KEYS = {"documents": list, "images": str, "tags": str}
_STAGE_KEYS = {
    "shards": int,
    "partitions": int,
    "gpus": int,
    "cpus": int,
    "memory": str,
    "time": str,
    "options": dict,
    "merge": bool,
    "program": list,
    "ray_cpus": float,
}
_RAY_KEYS = {"cpus_per_part": float}
_SLURM_KEYS = {"partition": str, "account": str, "time": str, "extra": list}
_TOP_KEYS = {"vars", "pipeline", "inputs", "models", "thresholds", "stages", "ray", "slurm"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class StageSettings:
    shards: int = 1
    partitions: int = 1  # dedup: the per-partition passes (key, bucket or cluster partitions) run as this many parts
    gpus: int = 0
    cpus: int = 1
    memory: str = "4G"
    time: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    merge: bool = False
    program: list[str] | None = None
    ray_cpus: float | None = None
    given: tuple[str, ...] = ()  # the keys the file set: a pass's table overrides only these of its stage's

    def under(self, stage: StageSettings) -> StageSettings:
        """These settings of a pass ([stages.PASS]) over its stage's ([stages.STAGE]): the keys given here win."""
        return StageSettings(**{**stage.__dict__, **{k: getattr(self, k) for k in self.given}, "given": self.given})


@dataclass
class Pipeline:
    path: Path  # the pipeline file (absolute)
    base: Path  # its directory: relative paths start here
    output: Path
    seed: int = 0
    device: str = "auto"
    on_error: str = "skip"
    program: list[str] = field(default_factory=lambda: ["rsyn"])
    documents: list[str] = field(default_factory=list)
    images: str | None = None
    tags: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageSettings] = field(default_factory=dict)
    ray_cpus_per_part: float = 0.5
    slurm: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # the --set arguments, for emitted plans

    def stage(self, name: str) -> StageSettings:
        return self.stages.get(name) or StageSettings()


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    path = Path(path).absolute()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such pipeline file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML: {exc}") from None
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        _apply_override(raw, item, path)
    raw = _substitute(raw, {k: v for k, v in raw.get("vars", {}).items()}, path)
    return _build(raw, path, list(overrides or []))


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise PipelineError(f"--set {item!r}: expected KEY=VALUE (e.g. stages.embed.shards=8)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word or path: taken as a string
    table = raw
    *parents, last = key.strip().split(".")
    for name in parents:
        table = table.setdefault(name, {})
        if not isinstance(table, dict):
            raise PipelineError(f"--set {key}: {name} is not a table in {path.name}")
    table[last] = value


def _substitute(value: Any, variables: dict, path: Path, depth: int = 0) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, path, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, path, depth) for v in value]
    if not isinstance(value, str):
        return value
    if depth > 20:
        raise PipelineError(f"{path}: [vars] refer to each other in a loop")

    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in variables:
            raise PipelineError(f"{path}: ${{{name}}} is not defined in [vars]")
        return str(_substitute(variables[name], variables, path, depth + 1))

    return _VAR.sub(one, value)


def _check(table: Any, keys: dict, where: str, path: Path) -> dict:
    if not isinstance(table, dict):
        raise PipelineError(f"{path}: [{where}] must be a table")
    for key, value in table.items():
        if key not in keys:
            raise PipelineError(f"{path}: [{where}] has no setting {key!r} (known: {', '.join(keys)})")
        want = keys[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if want is list and isinstance(value, str) and key in ("documents", "program"):
            ok = True  # one document glob or one program word
        if not ok:
            raise PipelineError(f"{path}: [{where}] {key} must be a {want.__name__}")
    return table


def _build(raw: dict, path: Path, overrides: list[str]) -> Pipeline:
    for key in raw:
        if key not in _TOP_KEYS:
            raise PipelineError(f"{path}: unknown table [{key}] (known: {', '.join(sorted(_TOP_KEYS))})")
    base = path.parent
    head = _check(raw.get("pipeline", {}), _PIPELINE_KEYS, "pipeline", path)
    inputs = _check(raw.get("inputs", {}), _INPUT_KEYS, "inputs", path)
    if "output" not in head:
        raise PipelineError(f'{path}: [pipeline] needs output = "DIR"')
    documents = inputs.get("documents", [])
    documents = [documents] if isinstance(documents, str) else documents
    if not documents:
        raise PipelineError(f'{path}: [inputs] needs documents = ["GLOB", ...]')
    on_error = head.get("on_error", "skip")
    if on_error not in ("skip", "fail"):
        raise PipelineError(f"{path}: [pipeline] on_error must be skip or fail")
    program = head.get("program", ["rsyn"])
    p = Pipeline(
        path=path,
        base=base,
        output=resolve_path(base, head["output"]),
        seed=head.get("seed", 0),
        device=head.get("device", "auto"),
        on_error=on_error,
        program=[program] if isinstance(program, str) else program,
        documents=[str(resolve_path(base, d)) for d in documents],
        images=str(resolve_path(base, inputs["images"])) if "images" in inputs else None,
        tags=str(resolve_path(base, inputs["tags"])) if "tags" in inputs else None,
        overrides=overrides,
    )
    models = raw.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        raise PipelineError(f"{path}: [models] values must be strings")
    p.models = {k: resolve_model(base, v) for k, v in models.items()}
    thresholds = raw.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise PipelineError(f"{path}: [thresholds] must be a table")
    p.thresholds = dict(thresholds)
    stages = raw.get("stages", {})
    if not isinstance(stages, dict):
        raise PipelineError(f"{path}: [stages] must be a table of [stages.NAME]")
    for name, table in stages.items():
        settings = _check(table, _STAGE_KEYS, f"stages.{name}", path)
        for key in ("shards", "partitions"):
            if settings.get(key, 1) < 1:
                raise PipelineError(f"{path}: [stages.{name}] {key} must be >= 1")
        p.stages[name] = StageSettings(**settings, given=tuple(settings))
    p.ray_cpus_per_part = float(_check(raw.get("ray", {}), _RAY_KEYS, "ray", path).get("cpus_per_part", 0.5))
    p.slurm = dict(_check(raw.get("slurm", {}), _SLURM_KEYS, "slurm", path))
    return p


def resolve_path(base: Path, value: str) -> Path:
    """A path of the pipeline file: relative to the file's directory (globs kept as they are)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def resolve_model(base: Path, value: str) -> str:
    """A model is a local path when written as one ('./', '../', '/', '~' or local-dir:PATH); else a hub name."""
    if value.startswith("local-dir:"):
        return "local-dir:" + str(resolve_path(base, value[len("local-dir:") :]))
    if value.startswith(("./", "../", "/", "~")):
        return str(resolve_path(base, value))
    return value
