"""Options of `rsyn pack` (rsyn.stages.pack), declared once."""

from dataclasses import dataclass, field
from typing import Annotated

from rsyn.image_limits import DEFAULT_MAX_PIXELS
from rsyn.options import INTERNAL, opt
from rsyn.options.images import ImageFolderOptions, LocalFileOptions
from rsyn.textstyle import TextStyle


@dataclass
class PackOptions(ImageFolderOptions, LocalFileOptions):
    fmt: Annotated[
        str,
        opt(
            "--format",
            metavar="parquet|webdataset",
            help="parquet: the released RealSyn columns, for img2dataset; webdataset: tars of KEY.jpg, KEY.txt "
            "(text1), KEY.json (text2, text3, syn_text, provenance), from each record's local image `path`.",
        ),
    ] = "parquet"
    rows_per_shard: Annotated[
        int | None,
        opt("--rows-per-shard", min=1, help="Rows per shard (default 100000 for parquet, 10000 for webdataset)."),
    ] = None
    extra_columns: Annotated[
        bool,
        opt(
            "--extra-columns",
            help="Add provenance: id, doc, text1..3_id, text1..3_score, caption, tags, cluster, sim.",
        ),
    ] = False
    text_style: Annotated[
        TextStyle,
        opt(
            "--text-style",
            help="original: the texts as they are. release: the published RealSyn parquet's style: text1..3 "
            'lowercased Penn Treebank tokens ("it \'s just epcot now )"), syn_text lowercased.',
        ),
    ] = TextStyle.original
    overwrite: Annotated[
        bool,
        opt(
            "--overwrite",
            help="Replace an earlier pack output (a directory holding its _SUCCESS; any other "
            "non-empty directory is refused), swapped in only when the new one is complete.",
        ),
    ] = False
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=INTERNAL)
