"""The pass graph: passes made of parts, each part one rsyn command line with its inputs, outputs and marker.

The graph is pure data; what each stage runs is declared in rsyn/pipeline/passes.py. Every
engine (local, Ray, make, Slurm) executes the same parts, so they give the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Part:
    pass_name: str
    index: int
    count: int
    argv: tuple[str, ...]
    inputs: tuple[str, ...]  # files, quoted globs or directories it reads: fingerprinted into the marker
    outputs: tuple[str, ...]  # what it must leave behind (a file or a directory)
    optional_outputs: tuple[str, ...]  # what it may leave (rejects, stats)
    stats: str | None  # its --stats file: records in/out for the throughput shown
    log: str
    marker: str
    tmp: str  # TMPDIR of the part: spills of a killed part are removed with it
    cwd: str

    @property
    def name(self) -> str:
        return part_name(self.pass_name, self.index, self.count)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict) -> Part:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


@dataclass
class Pass:
    name: str
    parts: list[Part]
    after: list[str]  # passes whose every part must be done first
    gpus: int = 0
    cpus: int = 1
    memory: str = "4G"
    time: str | None = None
    ray_cpus: float = 0.5


@dataclass
class Graph:
    passes: dict[str, Pass] = field(default_factory=dict)  # in a valid execution order
    output: Path | None = None

    def add(self, p: Pass) -> None:
        for name in p.after:
            if name not in self.passes:
                raise ValueError(f"pass {p.name} comes after unknown pass {name}")
        self.passes[p.name] = p

    def upstream(self, names: list[str]) -> list[str]:
        """The named passes and every pass they depend on, in execution order."""
        wanted: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in wanted:
                wanted.add(name)
                stack.extend(self.passes[name].after)
        return [n for n in self.passes if n in wanted]

    def only(self, names: list[str]) -> Graph:
        """The graph of the named passes and the passes they depend on."""
        return Graph(passes={n: self.passes[n] for n in self.upstream(names)}, output=self.output)

    def final(self) -> list[str]:
        """Passes nothing depends on: the targets of a whole run."""
        needed = {a for p in self.passes.values() for a in p.after}
        return [n for n in self.passes if n not in needed]


def part_name(pass_name: str, index: int, count: int) -> str:
    return pass_name if count == 1 else f"{pass_name}-{index:05d}-of-{count:05d}"
