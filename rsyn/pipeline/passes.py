"""What each stage of the pipeline runs: the one place that turns a pipeline file into passes.

A per-record stage (extract, embed, retrieve, caption, the kind split) becomes N parts
`rsyn STAGE INPUTS --shard K/N -o PART`; the next stage reads all N part files (every rsyn command
takes several inputs), or one merged file when the stage sets `merge = true`. A whole-stream
stage (dedup, index, balance) is one part running the whole command. When those gain split passes
(`rsyn dedup scan --shard K/N`, ...), each becomes several passes here, and nothing else changes.

Sharding a stage changes its output in the last float bits (a batch's make-up moves fp16/fp32
rounding in the CLIP and perplexity models) and in record order (shard K keeps positions K mod N),
so a sharded pipeline is deterministic but not byte-identical to the unsharded one.
"""

from __future__ import annotations

from typing import Any

from rsyn.pipeline.config import Pipeline, PipelineError
from rsyn.pipeline.graph import Graph, Part, Pass, part_name

# [models] key -> the options of the passes that take it
MODEL_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "ppl": [("extract", "--ppl-model")],
    "clip": [("embed", "--model"), ("embed-syn", "--model")],
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
    "extract": True, "dedup": False, "embed": True, "semdedup": False, "split-text": True, "split-image": True,
    "index": False, "retrieve": True, "caption": True, "embed-syn": True, "balance": False, "pack": False,
    "report": False,
}
GPU_STAGES = ("embed", "caption", "embed-syn", "extract")  # the ones a [stages.NAME] gpus = N makes sense for


def build_graph(p: Pipeline) -> Graph:
    for name in p.stages:
        if name not in STAGES:
            raise PipelineError(f"{p.path}: [stages.{name}] is not a stage (stages: {', '.join(STAGES)})")
    for key in p.thresholds:
        if key not in THRESHOLD_OPTIONS:
            raise PipelineError(f"{p.path}: [thresholds] has no {key!r} (known: {', '.join(THRESHOLD_OPTIONS)})")
    for key in p.models:
        if key not in MODEL_OPTIONS:
            raise PipelineError(f"{p.path}: [models] has no {key!r} (known: {', '.join(MODEL_OPTIONS)})")
    for name, settings in p.stages.items():
        if settings.shards > 1 and not STAGES[name]:
            raise PipelineError(f"{p.path}: [stages.{name}] shards = {settings.shards}: {name} compares records "
                                f"across the whole stream and runs as one part")
    b = _Builder(p)
    out = p.output

    documents = _Stream(list(p.documents), [])
    extract_opts: list[str] = []
    if p.stage("extract").shards > 1:
        # the entropy filter needs corpus-wide word counts: counted once, then given to every shard
        counts = str(out / "word_counts.json")
        b.single("extract-count", "extract", documents, [], ["--count-only", "--save-word-counts", counts],
                 extra_outputs=[counts], settings_of="extract", cpu_only=True)
        documents = _Stream(documents.files, ["extract-count"])
        extract_opts = ["--word-counts", counts]
    extracted = b.stage("extract", "extract", documents, "extracted.jsonl.zst", extract_opts,
                        side=[counts] if extract_opts else [])
    deduped = b.stage("dedup", "dedup", extracted, "dedup.jsonl.zst", ["--mode", "exact,near"])
    images = [p.images] if p.images else []
    embedded = b.stage("embed", "embed", deduped, "embedded.jsonl.zst", _opt("--images", p.images), side=images)
    semdedup = b.stage("semdedup", "dedup", embedded, "semdedup.jsonl.zst", ["--mode", "semantic"])
    sentences = b.stage("split-text", "cat", semdedup, "sentences.jsonl.zst", ["--kind", "text"])
    image_records = b.stage("split-image", "cat", semdedup, "images.jsonl.zst", ["--kind", "image"])
    index = b.stage("index", "index", sentences, "index", [])
    index_dir = index.files[0]
    retrieved = b.stage("retrieve", "retrieve", image_records, "retrieved.jsonl.zst", ["--index", index_dir],
                        side=[index_dir], after=index.passes)
    captioned = b.stage("caption", "caption", retrieved, "captioned.jsonl.zst",
                        [*_opt("--images", p.images), *_opt("--tags", p.tags), "--mine-tags-from", index_dir],
                        side=[*images, *([p.tags] if p.tags else []), index_dir], after=index.passes)
    syn = b.stage("embed-syn", "embed", captioned, "syn_embedded.jsonl.zst",
                  ["--text-field", "syn_text", "--emb-field", "syn_emb"])
    balanced = b.stage("balance", "balance", syn, "balanced.jsonl.zst", [])
    # a rerun replaces the release it made before (pack refuses a non-empty directory otherwise)
    packed = b.stage("pack", "pack", balanced, "packed", ["--extra-columns", "--overwrite"])
    records = [opt for f in retrieved.files + syn.files for opt in ("--records", f)]
    # the stats of this graph's parts by name, not stats/*.json: no stale part of an earlier shard count
    stats = sorted(part.stats for q in b.graph.passes.values() for part in q.parts if part.stats)
    b.single("report", "report", _Stream(stats, packed.passes + retrieved.passes + syn.passes),
             [str(out / "report.html")],
             ["--quiet", *records, "--packed", packed.files[0]], side=[*retrieved.files, *syn.files, *packed.files],
             common=False)
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

    def _stage_words(self, pass_name: str) -> list[str]:
        """A pass's options from [models], [thresholds] and [stages.NAME.options], in the file's order."""
        words: list[str] = []
        for key, value in self.p.models.items():
            for name, option in MODEL_OPTIONS[key]:
                if name == pass_name:
                    words += [option, value]
        for key, value in self.p.thresholds.items():
            name, option = THRESHOLD_OPTIONS[key]
            if name == pass_name:
                words += [option, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        for option, value in self.p.stage(pass_name).options.items():
            words += option_args(option if option.startswith("-") else f"--{option}", value)
        return words

    def _common(self, stats: str, rejects: str) -> list[str]:
        p = self.p
        return ["--seed", str(p.seed), "--device", p.device, "--on-error", p.on_error, "--quiet",
                "--stats", stats, "--rejects", rejects]

    def stage(self, name: str, command: str, source: _Stream, output: str, options: list[str],
              side: list[str] | None = None, after: list[str] | None = None) -> _Stream:
        """A stage: `shards` parts writing OUTPUT/shards/STEM-K-of-N.EXT, or one part writing OUTPUT/OUTPUT."""
        settings = self.p.stage(name)
        n = settings.shards
        stem, dot, ext = output.partition(".")
        targets = ([str(self.p.output / output)] if n == 1 else
                   [str(self.p.output / "shards" / f"{stem}-{k:05d}-of-{n:05d}{dot}{ext}") for k in range(n)])
        stream = self.single(name, command, source, targets, [*options, *self._stage_words(name)], side=side,
                             after=after)
        if n == 1 or not settings.merge:
            return stream
        merged = str(self.p.output / output)
        self.single(f"{name}-merge", "cat", stream, [merged], [], settings_of=name, cpu_only=True)
        return _Stream([merged], [f"{name}-merge"])

    def single(self, name: str, command: str, source: _Stream, targets: list[str], options: list[str],
               side: list[str] | None = None, after: list[str] | None = None, extra_outputs: list[str] = (),
               settings_of: str | None = None, common: bool = True, cpu_only: bool = False) -> _Stream:
        """A pass of len(targets) parts (`--shard K/N` when more than one); part K writes `-o targets[K]`."""
        out = self.p.output
        n = len(targets) or 1
        parts = []
        for k in range(n):
            tag = part_name(name, k, n)
            stats, rejects = str(out / "stats" / f"{tag}.json"), str(out / "rejects" / f"{tag}.jsonl.zst")
            argv = [*self._program(settings_of or name), command, *(self._common(stats, rejects) if common else []),
                    *source.files, *(["--shard", f"{k}/{n}"] if n > 1 else []), *options,
                    *(["-o", targets[k]] if targets else [])]
            outputs = ([targets[k]] if targets else []) + list(extra_outputs)
            parts.append(self._part(name, k, n, argv, [*source.files, *(side or [])], outputs,
                                    stats if common else None, rejects if common else None))
        self._add(name, parts, source.passes + (after or []), settings_of=settings_of, cpu_only=cpu_only)
        return _Stream(list(targets), [name])

    def _program(self, name: str) -> list[str]:
        return list(self.p.stage(name).program or self.p.program)

    def _part(self, name: str, k: int, n: int, argv: list[str], inputs: list[str], outputs: list[str],
              stats: str | None, rejects: str | None) -> Part:
        out = self.p.output
        tag = part_name(name, k, n)
        return Part(pass_name=name, index=k, count=n, argv=tuple(argv), inputs=tuple(inputs),
                    outputs=tuple(outputs), optional_outputs=tuple(x for x in (stats, rejects) if x),
                    stats=stats, log=str(out / "logs" / f"{tag}.log"), marker=str(out / ".done" / f"{tag}.json"),
                    tmp=str(out / ".tmp" / tag), cwd=str(self.p.base))

    def _add(self, name: str, parts: list[Part], after: list[str], settings_of: str | None = None,
             cpu_only: bool = False) -> None:
        s = self.p.stage(settings_of or name)
        ray_cpus = s.ray_cpus if s.ray_cpus is not None else self.p.ray_cpus_per_part
        self.graph.add(Pass(name=name, parts=parts, after=list(dict.fromkeys(after)), gpus=0 if cpu_only else s.gpus,
                            cpus=s.cpus, memory=s.memory, time=s.time or self.p.slurm.get("time"), ray_cpus=ray_cpus))

