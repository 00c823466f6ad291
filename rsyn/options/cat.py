"""Options of `rsyn cat` (rsyn.stages.cat), declared once."""

from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from rsyn.options import k_of_n, opt


class Kind(str, Enum):
    image = "image"
    text = "text"


@dataclass
class CatOptions:
    plain: Annotated[bool, opt("--plain", help="Write uncompressed JSONL.")] = False
    limit: Annotated[int | None, opt("--limit", min=0, help="Stop after N records.")] = None
    kind: Annotated[
        Kind | None, opt("--kind", help="Keep only records of this kind; the others are counted as dropped.")
    ] = None
    range_: Annotated[
        tuple[int, int] | None,
        opt(
            "--range",
            metavar="K/N",
            parse=k_of_n("--range"),
            help="Keep the K-th of N contiguous, nearly equal ranges of record positions "
            "(the input is read twice: to count, then to copy). The N outputs, concatenated in K order, are the "
            "input; given as N input files, a later --shard K/N reads exactly file K.",
        ),
    ] = None
