"""`rsyn dedup`: exact, near (MinHash LSH) and semantic (embedding) duplicates of sentences and images.

dedup runs as passes over a work directory (layout in work.py), so that it
can be split over processes and machines:

    scan (per input shard) -> exact (per key partition) -> settle exact (once)
      -> near (per bucket partition) -> settle near (once)
      -> train (once) -> assign (per shard) -> pairs (per cluster partition) -> select (once)
      -> filter (per shard)

Each mode decides on the survivors of the ones before it (exact -> near ->
perceptual/semantic), per kind (images with images, sentences with
sentences). `rsyn dedup` is these same pass functions run one after the
other in one process, with one shard and one partition, in a temporary work
directory: one code path.

The record kept in a group is always the first one in input order (smallest
order key: input file, line), so the output is the input minus the
duplicates, and reruns are byte-identical whatever the shard and partition
counts.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import numpy as np
import orjson

from rsyn.errors import RsynError
from rsyn.options.dedup import MODES, DedupOptions, DedupScanOptions, WorkOptions, parse_modes  # noqa: F401
from rsyn.stages.dedup.work import ROW_BITS, ROW_MASK, Shards, Work
from rsyn.stream import iter_lines

if TYPE_CHECKING:
    from rsyn.command import Run

REASONS = {
    "exact": "exact_duplicate",
    "near": "near_duplicate",
    "perceptual": "perceptual_duplicate",
    "semantic": "semantic_duplicate",
}
_REASON_CODE = {name: code for code, name in enumerate(REASONS, start=1)}
_CODE_REASON = {code: REASONS[name] for name, code in _REASON_CODE.items()}
KINDS = ("text", "image")
BATCH = 8192
PASSES = (
    "dedup-scan --shard K/N, dedup-exact --part M/P, dedup-settle --mode exact, dedup-near --part M/P, "
    "dedup-settle --mode near, dedup-train, dedup-assign --shard K/N, dedup-pairs --part M/P, dedup-select, "
    "dedup-filter --shard K/N"
)
SCORE_DIGITS = 4  # similarities written to records; f16 embeddings carry about 3 digits


def declare_reasons(run: Run, modes) -> None:
    reasons = [REASONS[m] for m in modes if m in ("exact", "near")]
    if "semantic" in modes:  # semantic drops the perceptual band too, with its own reason
        reasons += [REASONS["perceptual"], REASONS["semantic"]]
    elif "perceptual" in modes:
        reasons.append(REASONS["perceptual"])
    run.declare_reasons(reasons)


def run_dedup(run: Run, options: DedupOptions) -> None:
    """`rsyn dedup`: every pass, in order, in one process, over a temporary work directory."""
    if run.shard is not None:
        raise RsynError(
            "`rsyn dedup` compares every record with every other one and cannot run on a --shard; "
            f"split it into passes instead: {PASSES} (see docs/dedup.md)"
        )
    declare_reasons(run, options.modes)
    with tempfile.TemporaryDirectory(prefix="rsyn-dedup-", dir=options.tmp_dir) as tmp:
        work = Work(tmp, durable=False)
        scan_pass(run, options, work, (0, 1))
        stage: dict = {"modes": list(options.modes)}
        for mode in ("exact", "near"):
            if mode in options.modes:
                group_pass(run, work, mode, (0, 1))
                info = settle_pass(run, work, mode)
                info.pop("dropped")
                stage[mode] = info
        if options.embedding_threshold is not None:
            train_pass(run, work)
            assign_pass(run, work, (0, 1))
            group_pass(run, work, "semantic", (0, 1))
            info = settle_pass(run, work, "semantic")
            info.pop("dropped")
            stage["semantic"] = {**info, "device": run.faiss_device}
        run.extra.clear()
        run.extra.update(stage)
        filter_pass(run, work, (0, 1), count_in=False)


# --------------------------------------------------------------------------- the passes (one function each)


def _modes(shards: Shards, mode: str, command: str) -> None:
    modes = shards.options["modes"]
    wanted = {"semantic": ("semantic", "perceptual")}.get(mode, (mode,))
    if not any(m in modes for m in wanted):
        raise RsynError(f"`rsyn {command}`: the scan was run with --mode {','.join(modes)}, without {mode}")


def scan_pass(run: Run, options: DedupOptions, work: Work, shard: tuple[int, int]) -> dict:
    from rsyn.stages.dedup.scan import scan

    with work.part("scan", *shard).writing() as part:
        info = scan(run, options, part, shard)
        part.finish(info)  # its content digest identifies this scan to every later pass
    run.extra.update({"scanned": info["records"]})
    return info


def run_scan(run: Run, options: DedupScanOptions) -> None:
    """`rsyn dedup-scan`: pass 1 of this --shard into --work."""
    if run.output is not None:
        raise RsynError("dedup-scan writes its part to --work; the records come out of dedup-filter (-o there)")
    scan_pass(run, options, Work(options.work), run.shard or (0, 1))


def run_filter(run: Run, options: WorkOptions) -> None:
    """`rsyn dedup-filter`: the last pass of this --shard, from --work."""
    if run.inputs:
        raise RsynError("dedup-filter reads the records of its shard from --work; it takes no INPUT")
    filter_pass(run, Work(options.work), run.shard or (0, 1))


def group_pass(run: Run, work: Work, mode: str, partition: tuple[int, int]) -> dict:
    """exact, near or semantic pairs for one partition (by key, bucket or cluster)."""
    shards = Shards(work)
    command = {"exact": "dedup-exact", "near": "dedup-near", "semantic": "dedup-pairs"}[mode]
    _modes(shards, mode, command)
    stage = {"exact": "exact", "near": "near", "semantic": "semantic/pairs"}[mode]
    with work.part(stage, *partition).writing() as part:
        if mode == "exact":
            from rsyn.stages.dedup.exact import exact_part

            info = exact_part(shards, part, *partition)
        elif mode == "near":
            from rsyn.stages.dedup.near import near_part

            info = near_part(shards, work, part, *partition)
        else:
            from rsyn.stages.dedup.semantic import pairs

            info = pairs(shards, work, part, *partition, device=run.faiss_device)
        part.finish({**info, "scan": shards.stamp})
    run.extra.update(info)
    return info


def settle_pass(run: Run, work: Work, mode: str) -> dict:
    """The global step of a mode: components (exact, near) or keep-first (semantic)."""
    shards = Shards(work)
    _modes(shards, mode, "dedup-select" if mode == "semantic" else f"dedup-settle --mode {mode}")
    with work.single(f"{mode}/settled").writing() as part:
        if mode == "exact":
            from rsyn.stages.dedup.exact import exact_settle

            info = exact_settle(shards, work, part)
        elif mode == "near":
            from rsyn.stages.dedup.near import near_settle

            info = near_settle(shards, work, part)
        else:
            from rsyn.stages.dedup.semantic import select

            info = select(shards, work, part)
        part.finish({**info, "scan": shards.stamp})
    run.extra.update(info)
    return info


def train_pass(run: Run, work: Work) -> dict:
    from rsyn.stages.dedup.semantic import train

    shards = Shards(work)
    _modes(shards, "semantic", "dedup-train")
    with work.single("semantic/train").writing() as part:
        info = train(shards, work, part, run.faiss_device)
        part.finish({**info, "scan": shards.stamp})
    run.extra.update(info)
    return info


def assign_pass(run: Run, work: Work, shard: tuple[int, int]) -> dict:
    from rsyn.stages.dedup.semantic import assign

    shards = Shards(work)
    _modes(shards, "semantic", "dedup-assign")
    _check_shard(shards, shard)
    with work.part("semantic/assign", *shard).writing() as part:
        info = assign(shards, work, part, shard[0], run.faiss_device)
        part.finish({**info, "scan": shards.stamp})
    return info


def _check_shard(shards: Shards, shard: tuple[int, int]) -> None:
    if shard[1] != len(shards):
        raise RsynError(
            f"--shard {shard[0]}/{shard[1]}: the scan has {len(shards)} shard(s); use --shard K/{len(shards)}"
        )


# --------------------------------------------------------------------------- filter


def filter_pass(run: Run, work: Work, shard: tuple[int, int], count_in: bool = True) -> None:
    """Pass `filter` (per shard): re-read the shard's spilled records in order; write the survivors with
    their scores, drop the duplicates with their reason, `dup_of` and `similarity`."""
    from rsyn.stages.dedup.scan import RECORDS

    shards = Shards(work)
    _check_shard(shards, shard)
    k = shard[0]
    opts, info = shards.options, shards.infos[k]
    modes = opts["modes"]
    declare_reasons(run, modes)
    n = info["records"]
    if count_in:
        run.count_in(n)
    kind = np.asarray(shards.array(k, "kind"))
    reason = np.zeros(n, np.int8)
    dup = np.full(n, -1, np.int64)
    sim = np.full(n, np.nan, np.float64)
    near_best = np.full(n, np.nan, np.float64)
    semantic_best = np.full(n, np.nan, np.float64)

    def settle(mode: str, command: str) -> np.ndarray:
        part = work.require(f"{mode}/settled", command)
        rows = np.asarray(part.load(f"drop-{k}-rows"))
        dup[rows] = part.load(f"drop-{k}-dup")
        sim[rows] = part.load(f"drop-{k}-sim")
        return rows

    def best(stage: str, name: str, command: str, into: np.ndarray) -> None:
        for part in work.parts(stage, command):
            rows = np.asarray(part.load(f"{name}-{k}-rows"))
            np.fmax.at(into, rows, np.asarray(part.load(f"{name}-{k}-value")))

    if "exact" in modes:
        reason[settle("exact", "dedup-settle --mode exact")] = _REASON_CODE["exact"]
    if "near" in modes:
        near_best[(kind == 0) & (reason == 0)] = 0.0
        best("near", "best", "dedup-near --part M/P", near_best)
        reason[settle("near", "dedup-settle --mode near")] = _REASON_CODE["near"]
    if "semantic" in modes or "perceptual" in modes:
        alive = reason == 0
        for code, name in enumerate(KINDS):
            semantic_best[alive & (kind == code)] = -1.0
            best("semantic/pairs", f"best-{name}", "dedup-pairs --part M/P", semantic_best)
        rows = settle("semantic", "dedup-select")
        perceptual = sim[rows] >= opts["perceptual_threshold"]
        reason[rows] = np.where(perceptual, _REASON_CODE["perceptual"], _REASON_CODE["semantic"])
    dropped = np.flatnonzero(reason)
    dup_ids = dict(zip(dropped.tolist(), shards.ids(dup[dropped])))
    order = np.asarray(shards.array(k, "order"))
    run.write(
        _survivors(
            run,
            work.part("scan", *shard).file(RECORDS),
            info["files"],
            order,
            reason,
            dup_ids,
            sim,
            near_best,
            semantic_best,
        )
    )


def _survivors(
    run: Run,
    spill,
    files: list[str],
    order: np.ndarray,
    reason: np.ndarray,
    dup_ids: dict,
    sim: np.ndarray,
    near_best: np.ndarray,
    semantic_best: np.ndarray,
):
    loads = orjson.loads
    lines = (line for _, line in iter_lines(str(spill)) if line)
    n = len(reason)
    for lo in range(0, n, BATCH):
        hi = min(n, lo + BATCH)
        reasons = reason[lo:hi].tolist()
        nbs = np.round(near_best[lo:hi], SCORE_DIGITS).tolist()
        sbs = np.round(semantic_best[lo:hi], SCORE_DIGITS).tolist()
        for offset in range(hi - lo):
            record = loads(next(lines))
            nb, sb = nbs[offset], sbs[offset]
            if nb == nb or sb == sb:  # not nan: a score was computed
                scores = record.get("scores")
                if scores is None:
                    scores = record["scores"] = {}
                if nb == nb:
                    scores["dup_jaccard"] = nb
                if sb == sb:
                    scores["dup_sim"] = sb
            code = reasons[offset]
            if code:
                i = lo + offset
                key = int(order[i])
                run.drop(
                    record,
                    _CODE_REASON[code],
                    where=f"{files[key >> ROW_BITS]}:{key & ROW_MASK}",
                    dup_of=dup_ids[i],
                    similarity=round(float(sim[i]), SCORE_DIGITS),
                )
            else:
                yield record
