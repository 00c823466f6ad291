"""The index directory format: the one module that knows its file names, its sentence table and meta.json.

`rsyn index` writes an index directory through `create_sentences` and `publish` (meta.json last, the done
marker); `rsyn retrieve` opens one through `read_meta`, `check_files` and `open_sentences`; caption's tag
mining reads the sentence table through `sentences_file`. docs/retrieval.md describes the format.

  centroids.npy      (clusters, dim) float32 unit vectors: the text semantic clusters
  ivf.faiss          a faiss IVF index whose coarse quantizer holds exactly those centroids; its inverted
                     lists hold full vectors (ivf_flat), PQ codes (ivf_pq) or 8-bit scalar codes (ivf_sq8)
  lists.ivfdata      only when merged --on-disk: the inverted lists, which ivf.faiss then refers to
  vectors.npy        ivf_pq and ivf_sq8: the exact float16 vectors, memory-mapped at search time to re-score
                     the candidates of the compressed lists exactly
  sentences.sqlite   sentences(row INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, doc TEXT);
                     `row` is the faiss id
  meta.json          written last: the done marker (model, dim, counts, clusters, index type, parameters,
                     size and xxh3-128 checksum of every file)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from rsyn.errors import RsynError

FORMAT = "rsyn-index"
FORMAT_VERSION = 2  # 2: meta.json "files" hold {bytes, xxh3_128}; "lists" says where the inverted lists are
META, CENTROIDS, IVF, VECTORS, SENTENCES = "meta.json", "centroids.npy", "ivf.faiss", "vectors.npy", "sentences.sqlite"
ONDISK_LISTS = "lists.ivfdata"
FILES = (IVF, CENTROIDS, SENTENCES, ONDISK_LISTS, VECTORS)  # meta.json "files" names no other file
CHECKSUM = "xxh3_128"  # the checksum's name in meta.json "files"
HASH_BLOCK = 1 << 20
# index type -> whether its lists hold compressed codes, re-scored exactly from vectors.npy
INDEX_TYPES = {"ivf_flat": False, "ivf_pq": True, "ivf_sq8": True}
REQUIRED = ("model", "dim", "count", "clusters", "index_type", "files")
SENTENCES_TABLE = "CREATE TABLE sentences(row INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, doc TEXT)"


def reranked(index_type: str) -> bool:
    """Whether the lists of `index_type` hold approximate codes whose candidates are re-scored from vectors.npy."""
    return INDEX_TYPES[index_type]


def file_checksum(path: Path) -> str:
    """xxh3-128 of the file's bytes, read in 1 MiB blocks: a check against damage, not against an attacker,
    so the fastest well-kept hash (several times blake2b's speed: docs/retrieval.md)."""
    import xxhash

    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def create_sentences(path: Path) -> sqlite3.Connection:
    """A new, empty sentence table for bulk loading. The file lies in a build directory that is thrown
    away whole on failure, so it needs no journal."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(SENTENCES_TABLE)
    return db


def publish(out: Path, meta: dict) -> dict:
    """Write meta.json into the finished index directory `out`, last: `meta` with the format's name and
    version and the size and checksum of every index file present. Returns what was written."""
    files = {
        name: {"bytes": (out / name).stat().st_size, CHECKSUM: file_checksum(out / name)}
        for name in FILES
        if (out / name).exists()
    }
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "files": files}
    write_json(out / META, meta)
    return meta


def write_json(path: Path, content: dict) -> None:
    """A done marker or meta.json: sorted keys and indented, so equal content gives equal bytes."""
    from rsyn.stream import write_bytes_atomic

    write_bytes_atomic(path, orjson.dumps(content, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


# --------------------------------------------------------------------------- reading


def unusable(path: Path, message: str) -> RsynError:
    return RsynError(f"{path}: not a usable index: {message}")


def read_meta(path: Path) -> dict:
    """meta.json of the index directory `path`, checked for the fields and files its index type needs."""
    if not path.is_dir():
        raise RsynError(f"{path}: no such index directory (build one with rsyn index -o DIR)")
    try:
        meta = orjson.loads((path / META).read_bytes())
    except FileNotFoundError:
        raise unusable(path, f"{META} is missing: the index is incomplete (its build did not finish)") from None
    except orjson.JSONDecodeError as exc:
        raise unusable(path, f"{META} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise unusable(path, f"{META} is not an rsyn index description")
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise unusable(path, f"{META} lacks {', '.join(missing)}")
    if meta["index_type"] not in INDEX_TYPES:
        raise unusable(path, f"{META}: unknown index type {meta['index_type']!r}")
    if not isinstance(meta["files"], dict) or not set(meta["files"]) <= set(FILES):
        raise unusable(path, f"{META}: 'files' must map the index's own file names to their sizes and checksums")
    needed = (
        (IVF, CENTROIDS, SENTENCES)
        + ((VECTORS,) if reranked(meta["index_type"]) else ())
        + ((ONDISK_LISTS,) if meta.get("lists") == "on_disk" else ())
    )
    for name in needed:
        if name not in meta["files"]:
            raise unusable(path, f"{META} does not list {name}")
    return meta


def check_files(path: Path, meta: dict, *, verify: bool) -> None:
    """Every file meta.json lists exists with its size, and (with `verify`) its checksum."""
    for name, recorded in meta["files"].items():
        file = path / name
        if not file.exists():
            raise unusable(path, f"{name} is missing")
        if isinstance(recorded, int):  # format 1 recorded sizes only
            size, checksum = recorded, None
        elif isinstance(recorded, dict) and type(recorded.get("bytes")) is int and type(recorded.get(CHECKSUM)) is str:
            size, checksum = recorded["bytes"], recorded[CHECKSUM]
        else:
            raise unusable(path, f"{META}: the entry for {name} is not {{bytes, {CHECKSUM}}}")
        if file.stat().st_size != size:
            raise unusable(path, f"{name} has {file.stat().st_size} bytes, meta.json says {size}")
        if verify and checksum is not None and file_checksum(file) != checksum:
            raise unusable(
                path,
                f"{name} does not match its checksum in meta.json (the file is damaged; --no-verify skips this check)",
            )


def open_sentences(path: Path, count: int) -> sqlite3.Connection:
    """The index's sentence table, read-only, checked to hold `count` rows."""
    try:
        db = sqlite3.connect(f"file:{path / SENTENCES}?mode=ro", uri=True, check_same_thread=False)
        (rows,) = db.execute("SELECT count(*) FROM sentences").fetchone()
    except sqlite3.Error as exc:
        raise unusable(path, f"{SENTENCES} cannot be read ({exc})") from None
    if rows != count:
        raise unusable(path, f"{SENTENCES} has {rows} sentences, meta.json says {count}")
    return db


def sentences_file(index_or_file: str) -> Path:
    """The sentence table of an index directory, or a sentence table given as a file."""
    path = Path(index_or_file)
    if path.is_dir():
        path = path / SENTENCES
    if not path.is_file():
        raise RsynError(f"{index_or_file}: no sentence store ({SENTENCES} of an `rsyn index` directory)")
    return path
