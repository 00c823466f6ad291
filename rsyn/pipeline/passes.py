"""What each stage of the pipeline runs: the one place that turns a pipeline file into passes.

A per-record stage (extract, embed, retrieve, caption, the kind split) becomes N parts
`rsyn STAGE INPUTS --shard K/N -o PART`; the next stage reads all N part files as separate inputs
(every rsyn command takes several inputs), or one merged file when the stage sets `merge = true`.
With at least N input files `--shard K/N` reads a contiguous range of whole files, so a stage of N
parts fed N part files has part K read exactly file K, and its outputs in K order keep the input order.

A whole-stream stage (dedup, semdedup, balance) is one part running the one-process command, or,
with `shards` > 1 (or, for dedup, `partitions` > 1), the passes of that command (SPLIT_STAGES):
per-shard passes as `shards` parts, per-partition passes as `partitions` parts, global steps as one
part, each part with its own done marker and each pass with its own resources ([stages.PASS]).
The split passes are byte-identical to the one-process command when their shards are contiguous
ranges of the input in order; when the stage before has fewer part files than shards, a
`STAGE-split` pass first cuts its output into that many contiguous ranges (`rsyn cat --range K/N`).

Sharding a per-record stage changes its output in the last float bits (a batch's make-up moves fp16/fp32
rounding in the CLIP and perplexity models), so a pipeline with sharded per-record stages is deterministic
but not byte-identical to the unsharded one; split dedup and balance passes are byte-identical.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from rsyn.options import flags
from rsyn.options.balance import BalancePlanOptions, CapOptions
from rsyn.pipeline.config import Pipeline, PipelineError, StageSettings
from rsyn.pipeline.graph import Graph, Part, Pass, part_name

# [models] key -> the options of the passes that take it
MODEL_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "ppl": [("extract", "--ppl-model")],
    "clip": [("embed", "--model"), ("caption", "--model"), ("embed-syn", "--model")],  # caption: tags by CLIP
    "captioner": [("caption", "--captioner")],
    "llm_backend": [("caption", "--llm-backend")],
    "llm": [("caption", "--llm-model")],
}

# [thresholds] key -> (pass, option). Absent keys leave the command's default: the paper's value.
THRESHOLD_OPTIONS: dict[str, tuple[str, str]] = {
    "min_ppl": ("extract", "--min-ppl"),
    "max_ppl": ("extract", "--max-ppl"),
    "near_threshold": ("dedup", "--near-threshold"),
    "perceptual_threshold": ("semdedup", "--perceptual-threshold"),
    "semantic_threshold": ("semdedup", "--semantic-threshold"),
    "text_clusters": ("index", "--clusters"),
    "top_k": ("retrieve", "--top-k"),
    "tag_threshold": ("caption", "--tag-threshold"),
    "max_tags": ("caption", "--max-tags"),
    "sim_range": ("balance", "--sim-range"),
    "clusters": ("balance", "--clusters"),
    "per_cluster": ("balance", "--per-cluster"),
    "target": ("balance", "--target"),
}

# pass -> can it run as --shard K/N parts (per-record work)?
STAGES: dict[str, bool] = {
    "extract": True,
    "dedup": False,
    "embed": True,
    "semdedup": False,
    "split-text": True,
    "split-image": True,
    "index": False,
    "retrieve": True,
    "caption": True,
    "embed-syn": True,
    "balance": False,
    "pack": False,
    "report": False,
}
GPU_STAGES = ("embed", "caption", "embed-syn", "extract")  # the ones a [stages.NAME] gpus = N makes sense for


@dataclass(frozen=True)
class SplitPass:
    """One pass of a split stage: `rsyn WORDS...` run once, per shard (K of N) or per partition (M of P).

    Words may hold: {inputs} (the stage's input files), {work} (its work directory), {k}/{n} (this part),
    {PASS} (what the once-run PASS wrote), {PASS:k} (what part k of PASS wrote), {PASS*} (what every part
    of PASS wrote). `writes` is what a part leaves under the work directory ("" for the last pass, which
    writes the stage's output files). `reads`: the earlier passes whose outputs it reads through {work}
    ("*": all of them). The stage's options go to the pass whose `takes` names them ("*": all the others).
    """

    name: str
    words: tuple[str, ...]
    per: str  # "shard", "partition" or "once"
    writes: str
    reads: tuple[str, ...] = ()
    takes: tuple[str, ...] = ()
    common: bool = False  # takes the shared options (--seed, --on-error, --rejects, --stats, ...)
    device: bool = False  # takes --device; the stage's `gpus` applies to it


_PART = "part-{k}-of-{n}"
_DEDUP_SCAN = SplitPass(
    "scan",
    ("dedup-scan", "{inputs}", "--work", "{work}", "--shard", "{k}/{n}"),
    "shard",
    "scan/" + _PART,
    takes=("*",),
    common=True,
)
_DEDUP_FILTER = SplitPass(
    "filter", ("dedup-filter", "--work", "{work}", "--shard", "{k}/{n}"), "shard", "", reads=("*",), common=True
)
# What the split stages run, in order (docs/dedup.md, docs/balance_pack.md): the one place to add a stage's passes.
SPLIT_STAGES: dict[str, tuple[SplitPass, ...]] = {
    "dedup": (
        _DEDUP_SCAN,
        SplitPass(
            "exact",
            ("dedup-exact", "--work", "{work}", "--part", "{k}/{n}"),
            "partition",
            "exact/" + _PART,
            reads=("scan",),
        ),
        SplitPass(
            "settle-exact",
            ("dedup-settle", "--work", "{work}", "--mode", "exact"),
            "once",
            "exact/settled",
            reads=("scan", "exact"),
        ),
        SplitPass(
            "near",
            ("dedup-near", "--work", "{work}", "--part", "{k}/{n}"),
            "partition",
            "near/" + _PART,
            reads=("scan", "settle-exact"),
        ),
        SplitPass(
            "settle-near",
            ("dedup-settle", "--work", "{work}", "--mode", "near"),
            "once",
            "near/settled",
            reads=("scan", "near"),
        ),
        _DEDUP_FILTER,
    ),
    "semdedup": (
        _DEDUP_SCAN,
        SplitPass("train", ("dedup-train", "--work", "{work}"), "once", "semantic/train", reads=("scan",), device=True),
        SplitPass(
            "assign",
            ("dedup-assign", "--work", "{work}", "--shard", "{k}/{n}"),
            "shard",
            "semantic/assign/" + _PART,
            reads=("scan", "train"),
            device=True,
        ),
        SplitPass(
            "pairs",
            ("dedup-pairs", "--work", "{work}", "--part", "{k}/{n}"),
            "partition",
            "semantic/pairs/" + _PART,
            reads=("scan", "assign"),
            device=True,
        ),
        SplitPass("select", ("dedup-select", "--work", "{work}"), "once", "semantic/settled", reads=("scan", "pairs")),
        _DEDUP_FILTER,
    ),
    "balance": (
        SplitPass("scan", ("balance", "scan", "{inputs}", "--shard", "{k}/{n}"), "shard", "scan/{k}", common=True),
        SplitPass(
            "plan",
            ("balance", "plan", "{scan*}"),
            "once",
            "plan",
            common=True,
            device=True,
            takes=flags(BalancePlanOptions),
        ),
        SplitPass(
            "assign",
            ("balance", "assign", "{scan:k}", "--plan", "{plan}"),
            "shard",
            "assign/{k}",
            common=True,
            device=True,
        ),
        SplitPass("cap", ("balance", "cap", "{assign*}"), "once", "cap", common=True, takes=flags(CapOptions)),
        # filter re-reads the records of its scan from the input files: {inputs} is only fingerprinted, not passed
        SplitPass(
            "filter",
            ("balance", "filter", "{assign:k}", "--cap", "{cap}"),
            "shard",
            "",
            reads=("{inputs}",),
            common=True,
        ),
    ),
    "index": (
        SplitPass(
            "collect", ("index", "collect", "{inputs}", "--shard", "{k}/{n}"), "shard", "collect/{k}", common=True
        ),
        SplitPass("train", ("index", "train", "{collect*}"), "once", "train", common=True, takes=("*",)),
        SplitPass(
            "add",
            ("index", "add", "{collect*}", "--trained", "{train}", "--part", "{k}/{n}"),
            "partition",
            "add/{k}",
            common=True,
        ),
        SplitPass(
            "merge", ("index", "merge", "{collect*}", "--trained", "{train}", "{add*|--added}"), "once", "", common=True
        ),
    ),
}


def build_graph(p: Pipeline) -> Graph:
    for key in p.thresholds:
        if key not in THRESHOLD_OPTIONS:
            raise PipelineError(f"{p.path}: [thresholds] has no {key!r} (known: {', '.join(THRESHOLD_OPTIONS)})")
    for key in p.models:
        if key not in MODEL_OPTIONS:
            raise PipelineError(f"{p.path}: [models] has no {key!r} (known: {', '.join(MODEL_OPTIONS)})")
    for name, settings in p.stages.items():
        if name not in STAGES:
            continue  # a pass's own table: checked against the graph below
        if settings.shards > 1 and not STAGES[name] and name not in SPLIT_STAGES:
            raise PipelineError(
                f"{p.path}: [stages.{name}] shards = {settings.shards}: {name} compares records "
                f"across the whole stream and runs as one part"
            )
        if settings.partitions > 1 and not any(sp.per == "partition" for sp in SPLIT_STAGES.get(name, ())):
            raise PipelineError(
                f"{p.path}: [stages.{name}] partitions = {settings.partitions}: only dedup, "
                f"semdedup and index have per-partition passes"
            )
    graph = _build(p)
    for name, settings in p.stages.items():
        if name in STAGES:
            continue
        if name not in graph.passes:
            raise PipelineError(
                f"{p.path}: [stages.{name}] is not a stage or a pass of this pipeline (stages: "
                f"{', '.join(STAGES)}; passes: {', '.join(graph.passes)})"
            )
        fixed = [key for key in ("shards", "partitions", "merge") if key in settings.given]
        if fixed:
            raise PipelineError(
                f"{p.path}: [stages.{name}] {fixed[0]}: part counts are set on the stage, [stages.{name.split('-')[0]}]"
            )
    return graph


def _build(p: Pipeline) -> Graph:
    b = _Builder(p)
    out = p.output

    documents = _Stream(list(p.documents), [])
    extract_opts: list[str] = []
    if p.stage("extract").shards > 1:
        # the entropy filter needs corpus-wide word counts: counted once, then given to every shard
        counts = str(out / "word_counts.json")
        b.single(
            "extract-count",
            "extract",
            documents,
            [],
            ["--count-only", "--save-word-counts", counts],
            extra_outputs=[counts],
            settings_of="extract",
            cpu_only=True,
        )
        documents = _Stream(documents.files, ["extract-count"])
        extract_opts = ["--word-counts", counts]
    extracted = b.stage(
        "extract", "extract", documents, "extracted.jsonl.zst", extract_opts, side=[counts] if extract_opts else []
    )
    deduped = b.whole("dedup", "dedup", extracted, "dedup.jsonl.zst", ["--mode", "exact,near"])
    images = [p.images] if p.images else []
    embedded = b.stage("embed", "embed", deduped, "embedded.jsonl.zst", _opt("--images", p.images), side=images)
    semdedup = b.whole("semdedup", "dedup", embedded, "semdedup.jsonl.zst", ["--mode", "semantic"])
    sentences = b.stage("split-text", "cat", semdedup, "sentences.jsonl.zst", ["--kind", "text"])
    image_records = b.stage("split-image", "cat", semdedup, "images.jsonl.zst", ["--kind", "image"])
    index = b.whole("index", "index", sentences, "index", [])
    index_dir = index.files[0]
    retrieved = b.stage(
        "retrieve",
        "retrieve",
        image_records,
        "retrieved.jsonl.zst",
        ["--index", index_dir],
        side=[index_dir],
        after=index.passes,
    )
    captioned = b.stage(
        "caption",
        "caption",
        retrieved,
        "captioned.jsonl.zst",
        [*_opt("--images", p.images), *_opt("--tags", p.tags), "--mine-tags-from", index_dir],
        side=[*images, *([p.tags] if p.tags else []), index_dir],
        after=index.passes,
    )
    syn = b.stage(
        "embed-syn",
        "embed",
        captioned,
        "syn_embedded.jsonl.zst",
        ["--text-field", "syn_text", "--emb-field", "syn_emb"],
    )
    balanced = b.whole("balance", "balance", syn, "balanced.jsonl.zst", [])
    # a rerun replaces the release it made before (pack refuses a non-empty directory otherwise)
    packed = b.stage("pack", "pack", balanced, "packed", ["--extra-columns", "--overwrite"])
    records = [opt for f in retrieved.files + syn.files for opt in ("--records", f)]
    # the stats of this graph's parts by name, not stats/*.json: no stale part of an earlier shard count. Only
    # passes that read or drop records (those with --rejects): a split stage's inner passes (keys, edges, k-means)
    # and its range cuts (copies) would only add empty funnels.
    stats = sorted(
        part.stats
        for q in b.graph.passes.values()
        for part in q.parts
        if part.stats and len(part.optional_outputs) == 2 and not q.name.endswith("-split")
    )
    b.single(
        "report",
        "report",
        _Stream(stats, packed.passes + retrieved.passes + syn.passes),
        [str(out / "report.html")],
        ["--quiet", *records, "--packed", packed.files[0]],
        side=[*retrieved.files, *syn.files, *packed.files],
        common=False,
    )
    return b.graph


class _Stream:
    """The files a pass leaves for the next one, and the passes that write them."""

    def __init__(self, files: list[str], passes: list[str]):
        self.files = files
        self.passes = passes


def _opt(option: str, value: str | None) -> list[str]:
    return [option, value] if value else []


def option_args(option: str, value: Any) -> list[str]:
    """A TOML value as command-line words: true -> --flag, false -> --no-flag, a list -> repeated."""
    if value is True:
        return [option]
    if value is False:
        return ["--no-" + option[2:]]
    if isinstance(value, list):
        return [w for v in value for w in option_args(option, v)]
    return [option, str(value)]


class _Builder:
    def __init__(self, p: Pipeline):
        self.p = p
        self.graph = Graph(output=p.output)

    def _stage_groups(self, pass_name: str) -> list[tuple[str, list[str]]]:
        """A stage's options from [models], [thresholds] and [stages.NAME.options], in the file's order:
        (option, its words)."""
        groups: list[tuple[str, list[str]]] = []
        for key, value in self.p.models.items():
            for name, option in MODEL_OPTIONS[key]:
                if name == pass_name:
                    groups.append((option, [option, value]))
        for key, value in self.p.thresholds.items():
            name, option = THRESHOLD_OPTIONS[key]
            if name == pass_name:
                groups.append((option, [option, ",".join(map(str, value)) if isinstance(value, list) else str(value)]))
        for option, value in self.p.stage(pass_name).options.items():
            option = option if option.startswith("-") else f"--{option}"
            groups.append((option, option_args(option, value)))
        return groups

    def _stage_words(self, pass_name: str) -> list[str]:
        return [w for _, words in self._stage_groups(pass_name) for w in words]

    def _settings(self, name: str, settings_of: str | None = None) -> StageSettings:
        """A pass's settings: its own [stages.PASS] table over its stage's."""
        stage = self.p.stage(settings_of or name)
        own = self.p.stages.get(name)
        return own.under(stage) if own is not None and settings_of and settings_of != name else stage

    def _common(self, stats: str, rejects: str) -> list[str]:
        p = self.p
        return [
            "--seed",
            str(p.seed),
            "--device",
            p.device,
            "--on-error",
            p.on_error,
            "--quiet",
            "--stats",
            stats,
            "--rejects",
            rejects,
        ]

    def stage(
        self,
        name: str,
        command: str,
        source: _Stream,
        output: str,
        options: list[str],
        side: list[str] | None = None,
        after: list[str] | None = None,
    ) -> _Stream:
        """A stage: `shards` parts writing OUTPUT/shards/STEM-K-of-N.EXT, or one part writing OUTPUT/OUTPUT."""
        settings = self.p.stage(name)
        n = settings.shards
        stem, dot, ext = output.partition(".")
        targets = (
            [str(self.p.output / output)]
            if n == 1
            else [str(self.p.output / "shards" / f"{stem}-{k:05d}-of-{n:05d}{dot}{ext}") for k in range(n)]
        )
        stream = self.single(
            name, command, source, targets, [*options, *self._stage_words(name)], side=side, after=after
        )
        if n == 1 or not settings.merge:
            return stream
        merged = str(self.p.output / output)
        self.single(f"{name}-merge", "cat", stream, [merged], [], settings_of=name, cpu_only=True)
        return _Stream([merged], [f"{name}-merge"])

    def whole(self, name: str, command: str, source: _Stream, output: str, options: list[str]) -> _Stream:
        """A whole-stream stage: the one-process command as one part, or its split passes (SPLIT_STAGES)."""
        settings = self.p.stage(name)
        if settings.shards == 1 and settings.partitions == 1:
            return self.stage(name, command, source, output, options)
        return self.split(name, source, output, options)

    def split(self, name: str, source: _Stream, output: str, options: list[str]) -> _Stream:
        settings = self.p.stage(name)
        n, m = settings.shards, settings.partitions
        out = self.p.output
        stem, dot, ext = output.partition(".")
        if len(source.files) < n:
            # fewer files than shards would give record-position shards (K mod N), whose outputs are not in
            # input order: cut the input into N contiguous ranges, so shard K reads exactly file K
            ranges = [str(out / "shards" / f"{stem}-in-{k:05d}-of-{n:05d}{dot}{ext}") for k in range(n)]
            parts = [
                self._part(
                    f"{name}-split",
                    k,
                    n,
                    self._program(f"{name}-split", name)
                    + [
                        "cat",
                        *self._common(*self._logs(f"{name}-split", k, n)),
                        *source.files,
                        "--range",
                        f"{k}/{n}",
                        "-o",
                        ranges[k],
                    ],
                    source.files,
                    [ranges[k]],
                    *self._logs(f"{name}-split", k, n),
                )
                for k in range(n)
            ]
            self._add(f"{name}-split", parts, source.passes, settings_of=name, cpu_only=True)
            source = _Stream(ranges, [f"{name}-split"])
        work = str(out / "work" / f"{name}-{n}x{m}")  # the counts in the name: no stale parts of other counts
        declared = SPLIT_STAGES[name]
        targets = (
            [str(out / output)]
            if n == 1 or declared[-1].per == "once"
            else [str(out / "shards" / f"{stem}-{k:05d}-of-{n:05d}{dot}{ext}") for k in range(n)]
        )
        routed: dict[str, list[str]] = {sp.name: [] for sp in declared}
        for option, words in ([(options[0], options)] if options else []) + self._stage_groups(name):
            taker = next((sp.name for sp in declared if option in sp.takes), None)
            taker = taker or next((sp.name for sp in declared if "*" in sp.takes), None)
            if taker is None:
                raise PipelineError(
                    f"{self.p.path}: {option} is an option of the one-process `rsyn {name}`, which "
                    f"a split {name} does not run (set shards = partitions = 1 to use it)"
                )
            routed[taker] += words
        written: dict[str, list[str]] = {}
        for sp in declared:
            full = f"{name}-{sp.name}"
            count = {"shard": n, "partition": m, "once": 1}[sp.per]
            order = [q.name for q in declared]
            reads = [r for r in order if r in written and ("*" in sp.reads or r in sp.reads)]
            named: set[str] = set()  # passes its words name ({PASS...}): it follows them, reading only those files
            parts = []
            for k in range(count):
                uses_inputs = "{inputs}" in (*sp.words, *sp.reads)
                words, inputs = [], [*source.files] if uses_inputs else []
                for word in sp.words:
                    ref = re.fullmatch(r"\{([a-z-]+)(\*|:k)?(?:\|(--[a-z-]+))?\}", word)
                    if word == "{inputs}":
                        words += source.files
                    elif ref and ref.group(1) in written:
                        files = written[ref.group(1)]
                        picked = files if ref.group(2) == "*" else [files[k if ref.group(2) else 0]]
                        words += [w for f in picked for w in ((ref.group(3), f) if ref.group(3) else (f,))]
                        inputs += picked
                        named.add(ref.group(1))
                    else:
                        words.append(word.replace("{work}", work).replace("{k}", str(k)).replace("{n}", str(count)))
                target = (
                    targets[k]
                    if not sp.writes
                    else os.path.join(work, sp.writes.format(k=f"{k:05d}", n=f"{count:05d}"))
                )
                stats, rejects = self._logs(full, k, count)
                shared = (
                    self._common(stats, rejects)
                    if sp.common
                    else ["--quiet", "--stats", stats, *(["--device", self.p.device] if sp.device else [])]
                )
                # a pass that names {work} writes there itself; the others write -o
                own = (self.p.stages[full].options if full in self.p.stages else {}).items()
                argv = [
                    *self._program(full, name),
                    *words,
                    *shared,
                    *routed[sp.name],
                    *[w for o, v in own for w in option_args(o if o.startswith("-") else f"--{o}", v)],
                    *([] if sp.writes and "{work}" in "".join(sp.words) else ["-o", target]),
                ]
                inputs = list(dict.fromkeys([*inputs, *(f for r in reads for f in written[r])]))
                parts.append(self._part(full, k, count, argv, inputs, [target], stats, rejects if sp.common else None))
            after = [f"{name}-{r}" for r in order if r in named or r in reads]
            after += source.passes if "{inputs}" in (*sp.words, *sp.reads) else []
            given = self.p.stages[full].given if full in self.p.stages else ()
            self._add(full, parts, after, settings_of=name, cpu_only=not (sp.device or "gpus" in given))
            written[sp.name] = [part.outputs[0] for part in parts]
        return _Stream(targets, [f"{name}-{declared[-1].name}"])

    def _logs(self, name: str, k: int, n: int) -> tuple[str, str]:
        """The --stats and --rejects files of a part."""
        tag = part_name(name, k, n)
        return str(self.p.output / "stats" / f"{tag}.json"), str(self.p.output / "rejects" / f"{tag}.jsonl.zst")

    def single(
        self,
        name: str,
        command: str,
        source: _Stream,
        targets: list[str],
        options: list[str],
        side: list[str] | None = None,
        after: list[str] | None = None,
        extra_outputs: list[str] = (),
        settings_of: str | None = None,
        common: bool = True,
        cpu_only: bool = False,
    ) -> _Stream:
        """A pass of len(targets) parts (`--shard K/N` when more than one); part K writes `-o targets[K]`."""
        out = self.p.output
        n = len(targets) or 1
        parts = []
        for k in range(n):
            tag = part_name(name, k, n)
            stats, rejects = str(out / "stats" / f"{tag}.json"), str(out / "rejects" / f"{tag}.jsonl.zst")
            argv = [
                *self._program(name, settings_of),
                command,
                *(self._common(stats, rejects) if common else []),
                *source.files,
                *(["--shard", f"{k}/{n}"] if n > 1 else []),
                *options,
                *(["-o", targets[k]] if targets else []),
            ]
            outputs = ([targets[k]] if targets else []) + list(extra_outputs)
            parts.append(
                self._part(
                    name,
                    k,
                    n,
                    argv,
                    [*source.files, *(side or [])],
                    outputs,
                    stats if common else None,
                    rejects if common else None,
                )
            )
        self._add(name, parts, source.passes + (after or []), settings_of=settings_of, cpu_only=cpu_only)
        return _Stream(list(targets), [name])

    def _program(self, name: str, settings_of: str | None = None) -> list[str]:
        return list(self._settings(name, settings_of).program or self.p.program)

    def _part(
        self,
        name: str,
        k: int,
        n: int,
        argv: list[str],
        inputs: list[str],
        outputs: list[str],
        stats: str | None,
        rejects: str | None,
    ) -> Part:
        out = self.p.output
        tag = part_name(name, k, n)
        return Part(
            pass_name=name,
            index=k,
            count=n,
            argv=tuple(argv),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            optional_outputs=tuple(x for x in (stats, rejects) if x),
            stats=stats,
            log=str(out / "logs" / f"{tag}.log"),
            marker=str(out / ".done" / f"{tag}.json"),
            tmp=str(out / ".tmp" / tag),
            cwd=str(self.p.base),
        )

    def _add(
        self, name: str, parts: list[Part], after: list[str], settings_of: str | None = None, cpu_only: bool = False
    ) -> None:
        s = self._settings(name, settings_of)
        ray_cpus = s.ray_cpus if s.ray_cpus is not None else self.p.ray_cpus_per_part
        self.graph.add(
            Pass(
                name=name,
                parts=parts,
                after=list(dict.fromkeys(after)),
                gpus=0 if cpu_only else s.gpus,
                cpus=s.cpus,
                memory=s.memory,
                time=s.time or self.p.slurm.get("time"),
                ray_cpus=ray_cpus,
            )
        )
