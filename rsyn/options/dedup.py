"""Options of `rsyn dedup` and its passes (rsyn.stages.dedup), declared once."""

from dataclasses import dataclass, fields
from typing import Annotated

from rsyn.errors import RsynError
from rsyn.options import joined, k_of_n, opt
from rsyn.options.images import LocalFileOptions

MODES = ("exact", "near", "perceptual", "semantic")
WORK_HELP = "The work directory the passes share (part files and done markers)."


def parse_modes(text: str) -> tuple[str, ...]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODES]
    if unknown or not names:
        raise RsynError(f"--mode {text!r}: expected a comma list of {', '.join(MODES)}")
    return tuple(m for m in MODES if m in names)


@dataclass(frozen=True)
class DedupModes:
    """Which duplicates and at what similarity: given to the scan, stored with it, used by every later pass."""

    modes: Annotated[
        tuple[str, ...],
        opt(
            "--mode",
            parse=parse_modes,
            shown=joined,
            help="Comma list of: exact (normalised text, image URL or content hash), near (sentences: "
            "MinHash LSH + exact Jaccard), perceptual (embeddings at --perceptual-threshold), semantic (embeddings "
            "at --semantic-threshold; needs `emb`).",
        ),
    ] = ("exact", "near")
    near_threshold: Annotated[
        float,
        opt(
            "--near-threshold",
            min=0.0,
            max=1.0,
            help="near: word n-gram Jaccard at or above which two sentences are duplicates.",
        ),
    ] = 0.8
    ngram: Annotated[
        int, opt("--ngram", min=1, max=8, help="near: words per shingle (shorter sentences are one shingle).")
    ] = 2
    num_perm: Annotated[int, opt("--num-perm", min=16, max=1024, help="near: MinHash permutations.")] = 128
    perceptual_threshold: Annotated[
        float,
        opt(
            "--perceptual-threshold",
            min=-1.0,
            max=1.0,
            help="Cosine at or above which two embeddings are perceptual (near-identical) duplicates.",
        ),
    ] = 0.95
    semantic_threshold: Annotated[
        float,
        opt(
            "--semantic-threshold",
            min=-1.0,
            max=1.0,
            help="Cosine at or above which two embeddings are semantic duplicates (used by --mode semantic).",
        ),
    ] = 0.90
    cluster_size: Annotated[
        int,
        opt(
            "--cluster-size",
            min=1,
            help="semantic: mean records per k-means cluster (k = records / this); "
            "records are only compared within clusters (see --probes).",
        ),
    ] = 1000
    probes: Annotated[
        int,
        opt(
            "--probes",
            min=1,
            help="semantic: compare a record with every record of its nearest cluster that has "
            "that cluster among its N nearest (1 = SemDeDup's one cluster per record, which misses duplicates split "
            "by a cluster boundary).",
        ),
    ] = 3

    def __post_init__(self):
        if self.embedding_threshold is not None and self.semantic_threshold > self.perceptual_threshold:
            raise RsynError(
                f"--semantic-threshold {self.semantic_threshold} is above --perceptual-threshold "
                f"{self.perceptual_threshold}: perceptual duplicates are the most similar ones"
            )

    @property
    def embedding_threshold(self) -> float | None:
        if "semantic" in self.modes:
            return self.semantic_threshold
        if "perceptual" in self.modes:
            return self.perceptual_threshold
        return None

    def recorded(self, seed: int) -> dict:
        """What the later passes need, stored with every scan part (so they take no options of their own)."""
        kept = {f.name: getattr(self, f.name) for f in fields(DedupModes)}
        return {**kept, "modes": list(self.modes), "seed": seed}


@dataclass(frozen=True, kw_only=True)
class WorkOptions:
    work: Annotated[str, opt("--work", metavar="DIR", help=WORK_HELP)]


@dataclass(frozen=True, kw_only=True)
class PartitionOptions(WorkOptions):
    """A pass run once per partition of keys, buckets or clusters."""

    part: Annotated[
        tuple[int, int],
        opt(
            "--part",
            metavar="M/P",
            parse=k_of_n("--part"),
            shown=lambda part: f"{part[0]}/{part[1]}",
            help="This pass's partition M of P; every M from 0 to P-1 must run.",
        ),
    ] = (0, 1)


@dataclass(frozen=True, kw_only=True)
class SettleOptions(WorkOptions):
    mode: Annotated[str, opt("--mode", metavar="exact|near", help="Which edges to settle.", show_default=False)]

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "near"):
            raise RsynError(f"--mode {self.mode!r}: expected exact or near (semantic settles with dedup-select)")


@dataclass(frozen=True)
class DedupOptions(DedupModes, LocalFileOptions):
    tmp_dir: Annotated[
        str | None,
        opt(
            "--tmp-dir",
            help="Where the work directory of the passes goes (spilled records, keys, embeddings; "
            "default: the system temporary directory).",
        ),
    ] = None


@dataclass(frozen=True)
class DedupScanOptions(DedupModes, WorkOptions, LocalFileOptions):
    """dedup-scan: dedup's options but --tmp-dir, plus --work."""
