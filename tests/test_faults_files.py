"""Fault injection, local side: malformed and corrupted streams, wrong-typed fields, bad image files and
hostile `path`s through extract, embed, dedup, pack and cat (the real command line).

Every run must end without a traceback: exit 0 with every bad input counted (--on-error skip), or exit 2
with one `rsyn: error:` line (fail mode); and every input record must be accounted for as output, a drop
or an error. No message may quote a file's contents. Special files (a FIFO, /dev/zero) and anything that
could block run in a subprocess with a timeout, so a regression fails instead of hanging the suite.
"""

import gzip
import io
import os
import struct
import zlib

import numpy as np
import orjson
import pytest
import zstandard
from conftest import jsonl, read_stream_file, rsyn, rsyn_here
from PIL import Image

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"
LINE_REASONS = {"invalid_json", "not_an_object", "corrupt_stream", "unreadable_input"}  # no record was read


def jpeg(width=120, height=110, value=90):
    out = io.BytesIO()
    pixels = np.full((height, width, 3), value, dtype=np.uint8)
    pixels[:, : width // 2] //= 2
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_claiming(width, height):
    """A small, valid PNG whose header claims width x height pixels (a decompression bomb in 100 bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A data folder of good and bad image files, with a secret beside it (outside the allowed root)."""
    base = tmp_path_factory.mktemp("faults")
    (base / "secret.txt").write_bytes(SECRET)
    root = base / "data"
    root.mkdir()
    good = jpeg()
    (root / "good.jpg").write_bytes(good)
    (root / "copy.jpg").write_bytes(good)  # the same bytes: an exact duplicate for dedup
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "good.png")
    (root / "truncated.jpg").write_bytes(jpeg(400, 300)[:1500])
    (root / "bomb.png").write_bytes(png_claiming(30000, 30000))
    (root / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>" + SECRET + b"</body></html>")
    (root / "passwd.jpg").write_bytes(SECRET)
    (root / "empty.jpg").write_bytes(b"")
    (root / "folder.jpg").mkdir()
    os.mkfifo(root / "fifo.jpg")  # nobody ever writes: open() + read() would block forever
    (root / "zero.jpg").symlink_to("/dev/zero")  # endless bytes, st_size 0
    (root / "escape.jpg").symlink_to(base / "secret.txt")
    return {"base": base, "root": root}


# (file under the data folder, or a path as written, and the reason embed gives). "!" marks a path as written.
BAD_IMAGES = [
    ("truncated.jpg", "decode_failed"),
    ("bomb.png", "too_many_pixels"),
    ("page.jpg", "not_an_image"),
    ("passwd.jpg", "not_an_image"),
    ("empty.jpg", "not_an_image"),
    ("folder.jpg", "not_a_regular_file"),
    ("fifo.jpg", "not_a_regular_file"),
    ("zero.jpg", "outside_root"),  # the link resolves to /dev/zero, outside the root
    ("escape.jpg", "outside_root"),
    ("../secret.txt", "outside_root"),
    ("!/etc/passwd", "outside_root"),
    ("!../../../../../../etc/passwd", "outside_root"),
    ("missing.jpg", "file_not_found"),
    ("!a\x00b.jpg", "bad_path"),
]


def image_path(files, name):
    return name[1:] if name.startswith("!") else str(files["root"] / name)


def image_record(i, **fields):
    return {"id": f"img{i:03d}", "kind": "image", "doc": f"https://example.org/{i}", "pos": 0, "scores": {}, **fields}


def text_record(i, text="The farmer fed the horses in the barn."):
    return {
        "id": f"txt{i:03d}",
        "kind": "text",
        "doc": f"https://example.org/{i}",
        "pos": 1,
        "text": text,
        "scores": {},
    }


def summary(path):
    return orjson.loads(open(path, "rb").read())


def assert_accounted(stats, records_in=None):
    """in = out + dropped + errors (errors about a line or a stream, not a record, are not in `in`)."""
    record_errors = sum(n for reason, n in stats["errors"].items() if reason not in LINE_REASONS)
    assert stats["in"] == stats["out"] + sum(stats["dropped"].values()) + record_errors, stats
    if records_in is not None:
        assert stats["in"] == records_in, stats


def assert_clean(stderr: str, code: int, *, fail_mode: bool = False):
    """No traceback, no file contents; in fail mode exit 2 with one error line, last."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "root:x" not in stderr, stderr
    if fail_mode:
        lines = stderr.strip().splitlines()
        assert code == 2 and lines[-1].startswith("rsyn: error: "), stderr
        assert sum(line.startswith("rsyn: error:") for line in lines) == 1, stderr
    else:
        assert code == 0, stderr


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from rsyn.testing import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("faults-clip"), seed=0)


# --------------------------------------------------------------------------- streams


def _stream(records) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(jsonl(records))


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


GOOD = [text_record(i, f"Sentence number {i} about a red barn and horses.") for i in range(200)]
CORRUPT_STREAMS = {
    "truncated_zstd": lambda: _stream(GOOD)[: len(_stream(GOOD)) // 2],
    "flipped_zstd": lambda: _flip(_stream(GOOD), len(_stream(GOOD)) // 2),
    "truncated_gzip": lambda: gzip.compress(jsonl(GOOD))[:300],
    "garbage": lambda: bytes(range(256)) * 4,
    "bad_lines": lambda: (
        jsonl(GOOD[:3])
        + b'{"id": "x", "kind": \n[1, 2]\n"a string"\nnull\n\x00\x01\n'
        + jsonl(GOOD[3:5])
        + b'{"id": "no newline at the end"'
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT_STREAMS))
def test_cat_and_pack_survive_corrupted_streams(kind, tmp_path):
    source = tmp_path / "in.jsonl.zst"
    source.write_bytes(CORRUPT_STREAMS[kind]())
    stats = tmp_path / "stats.json"
    for args in (["cat", source, "-o", tmp_path / "out.jsonl.zst"], ["pack", source, "-o", tmp_path / "packed"]):
        proc = rsyn_here(*args, "--on-error", "skip", "--stats", stats)
        assert_clean(proc.stderr.decode(), proc.returncode)
        result = summary(stats)
        assert_accounted(result)
        assert result["errors"], result  # the damage is counted, never silent
        proc = rsyn_here(*args[:-1], tmp_path / "failed")
        assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
        assert not (tmp_path / "failed").exists()


def test_cat_kind_filter_with_wrong_typed_kinds(tmp_path):
    records = [
        text_record(0),
        {"kind": 5},
        {"kind": ["image"]},
        {"kind": None},
        {},
        image_record(1, url="u"),
        {"kind": "image", "id": {"nested": True}, "url": 7},
    ]
    stats = tmp_path / "stats.json"
    proc = rsyn_here("cat", "--kind", "image", "--stats", stats, "-o", tmp_path / "out.jsonl", input=jsonl(records))
    assert_clean(proc.stderr.decode(), proc.returncode)
    assert_accounted(summary(stats), len(records))
    assert [r.get("id") for r in read_stream_file(tmp_path / "out.jsonl")] == ["img001", {"nested": True}]


# --------------------------------------------------------------------------- extract


def _obelics(i, **change):
    doc = {
        "images": ["https://img.example/a.jpg", None],
        "texts": [None, "A farmer walks his two brown horses along the river at dawn."],
        "metadata": orjson.dumps([{"original_width": 640, "original_height": 480}, None]).decode(),
        "general_metadata": orjson.dumps({"url": f"https://example.org/doc{i}"}).decode(),
    }
    doc.update(change)
    return doc


BAD_DOCUMENTS = [
    _obelics(1, texts=5),
    _obelics(2, images=None),
    _obelics(3, images=[7, None]),
    _obelics(4, texts=[None, ["a", "list"]]),
    _obelics(5, metadata="not json {"),
    _obelics(6, metadata=orjson.dumps([{"original_width": "wide"}, None]).decode()),
    _obelics(7, metadata=orjson.dumps([{"original_width": True, "original_height": 2}, None]).decode()),
    _obelics(8, general_metadata=orjson.dumps({"url": 42}).decode()),
    _obelics(9, general_metadata="[1, 2]"),
    _obelics(10, images=["https://img.example/a.jpg"]),  # ragged
    {"url": "https://example.org/m", "text_list": ["A paragraph.", None], "image_info": []},
    {"url": "https://example.org/m", "text_list": ["A paragraph."], "image_info": [{"raw_url": 5}]},
    {
        "url": "https://example.org/m",
        "text_list": ["A paragraph."],
        "image_info": [{"raw_url": "https://i/x.jpg", "matched_text_index": "0"}],
    },
    {
        "url": "https://example.org/m",
        "text_list": ["A paragraph."],
        "image_info": [{"raw_url": "https://i/x.jpg", "image_name": 5}],
    },
    {"url": ["not", "a", "string"], "text_list": [], "image_info": []},
    {"neither": "format"},
]
GOOD_DOCUMENTS = [
    _obelics(100),
    _obelics(101, texts=[None, "word " * 100_000]),  # a 500 kB paragraph: filtered, not a crash
    {
        "url": "https://example.org/mmc4",
        "text_list": ["The old lighthouse stands on the rocky coast."],
        "image_info": [{"raw_url": "https://i/l.jpg", "image_name": "l.jpg", "matched_text_index": 0}],
    },
]


def test_extract_counts_every_malformed_document(tmp_path):
    source = tmp_path / "docs.jsonl"
    lines = [orjson.dumps(d) for d in GOOD_DOCUMENTS + BAD_DOCUMENTS] + [b"[1]", b"{broken", b"\x00\xff"]
    source.write_bytes(b"\n".join(lines) + b"\n")
    stats = tmp_path / "stats.json"
    proc = rsyn_here(
        "extract",
        source,
        "--ppl-model",
        "none",
        "--on-error",
        "skip",
        "--stats",
        stats,
        "-o",
        tmp_path / "out.jsonl.zst",
    )
    assert_clean(proc.stderr.decode(), proc.returncode)
    result = summary(stats)
    assert result["stage"]["documents"] == len(GOOD_DOCUMENTS)
    assert sum(result["errors"].values()) == len(BAD_DOCUMENTS) + 3, result["errors"]
    assert result["in"] == result["out"] + sum(result["dropped"].values())  # every candidate: kept or dropped
    images = [r for r in read_stream_file(tmp_path / "out.jsonl.zst") if r["kind"] == "image"]
    assert {r.get("image_name") for r in images} == {None, "l.jpg"}  # MMC4's image_name is kept
    for bad in BAD_DOCUMENTS[:3]:
        one = tmp_path / "one.jsonl"
        one.write_bytes(orjson.dumps(bad) + b"\n")
        proc = rsyn_here("extract", one, "--ppl-model", "none", "-o", tmp_path / "none.jsonl")
        assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
        assert proc.stderr.decode().strip().splitlines()[-1].startswith(f"rsyn: error: {one}:1: ")


def test_mmc4_parquet_without_a_url_column_reads_like_its_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [
        {
            "text_list": [
                "The old lighthouse stands on the rocky coast of the island.",
                "Fishing boats come back to the harbour in the evening.",
            ],
            "image_info": [
                {"raw_url": "https://i/l.jpg", "image_name": "l.jpg", "matched_text_index": 1, "matched_sim": 0.3}
            ],
        }
    ]
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "mmc4.parquet")
    (tmp_path / "mmc4.jsonl").write_bytes(jsonl(docs))
    outputs = []
    for name in ("mmc4.parquet", "mmc4.jsonl"):
        proc = rsyn_here("extract", tmp_path / name, "--ppl-model", "none", "-o", tmp_path / f"{name}.out")
        assert proc.returncode == 0, proc.stderr.decode()
        outputs.append(read_stream_file(tmp_path / f"{name}.out"))
    assert outputs[0] == outputs[1]
    assert [r.get("image_name") for r in outputs[0] if r["kind"] == "image"] == ["l.jpg"]
    pq.write_table(pa.Table.from_pylist([{"text_list": ["x"], "url": "u"}]), tmp_path / "half.parquet")
    proc = rsyn_here("extract", tmp_path / "half.parquet", "--format", "mmc4", "--ppl-model", "none")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "lack image_info, which mmc4 documents need" in err


# --------------------------------------------------------------------------- embed


def test_embed_accounts_for_bad_images_hostile_paths_and_wrong_types(files, tiny_clip, tmp_path):
    root = files["root"]
    records, expected = [], {}
    for i, (name, reason) in enumerate(BAD_IMAGES):
        records.append(image_record(i, path=image_path(files, name)))
        expected[records[-1]["id"]] = reason
    wrong = [  # (record fields, reason) for image records
        ({"path": 5}, "missing_field"),
        ({"path": ["good.jpg"]}, "missing_field"),
        ({"path": {"a": 1}}, "missing_field"),
        ({"path": 5, "url": "https://example.org/x.jpg"}, "bad_path"),
        ({"path": str(root / "good.jpg"), "url": 12}, "bad_url"),
        ({"path": str(root / "good.jpg"), "width": "wide", "height": None, "scores": [1]}, None),
        ({"path": str(root / "good.jpg"), "width": True, "height": 2**62, "id": ["x"]}, None),
        ({"path": str(root / "good.png"), "url": "http://127.0.0.1:9/never.jpg"}, "size_rule"),
    ]
    for j, (fields, reason) in enumerate(wrong, start=100):
        records.append(image_record(j, **fields))
        expected[f"img{j:03d}"] = reason
    records += [image_record(200), image_record(201, url=None, path=None)]  # no source at all: errors
    records += [
        text_record(300),
        text_record(301, None),
        text_record(302, ["a"]),
        text_record(303, 5),
        text_record(304, "x" * 2_000_000),
        {"id": "odd", "kind": 7},
        {"kind": None},
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records))
    out, rejects, stats = tmp_path / "out.jsonl.zst", tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    # a subprocess with a deadline: a FIFO or /dev/zero that blocked or grew would fail here, not hang
    proc = rsyn(
        "embed",
        source,
        "--model",
        tiny_clip,
        "--path-root",
        root,
        "--on-error",
        "skip",
        "--image-workers",
        "4",
        "-o",
        out,
        "--rejects",
        rejects,
        "--stats",
        stats,
        "--device",
        "cpu",
        timeout=120,
    )
    assert_clean(proc.stderr.decode(), proc.returncode)
    result = summary(stats)
    assert_accounted(result, len(records))
    logged = {
        entry["record"].get("id") if isinstance(entry["record"].get("id"), str) else "?": entry
        for entry in read_stream_file(rejects)
    }
    for record_id, reason in expected.items():
        if reason is None:
            continue
        assert logged[record_id]["reason"] == reason, (record_id, logged[record_id])
    assert b"root:x" not in rejects.read_bytes().replace(orjson.dumps(SECRET.decode())[1:-1], b"")
    kept = {r["id"] if isinstance(r["id"], str) else "list" for r in read_stream_file(out) if "id" in r}
    assert {"img105", "list", "txt300", "txt304", "odd"} <= kept
    assert result["errors"] == {"missing_field": 8}  # 5 image records without a usable source, 3 texts not strings
    # fail mode stops at the first record without any image source, in one line
    source.write_bytes(jsonl([text_record(0), image_record(1, url=5)]))
    proc = rsyn_here("embed", source, "--model", tiny_clip, "-o", tmp_path / "failed.jsonl")
    assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
    assert not (tmp_path / "failed.jsonl").exists()


# --------------------------------------------------------------------------- dedup (exact, by image file)


def _dedup(files, tmp_path, probes, timeout=30):
    """dedup --mode exact over [good.jpg, *probes, a text], run from the data folder (the default root)."""
    records = [image_record(0, url="https://example.org/0.jpg", path=str(files["root"] / "good.jpg"))]
    records += [image_record(i, url=f"https://example.org/{i}.jpg", path=path) for i, path in enumerate(probes, 1)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records + [text_record(99)]))
    stats, rejects = tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    proc = rsyn(
        "dedup",
        source,
        "--mode",
        "exact",
        "--on-error",
        "skip",
        "--stats",
        stats,
        "--rejects",
        rejects,
        "-o",
        tmp_path / "out.jsonl",
        cwd=files["root"],
        timeout=timeout,
    )
    assert_clean(proc.stderr.decode(), proc.returncode)
    result = summary(stats)
    assert_accounted(result, len(records) + 1)
    logged = {e["record"]["id"]: e["reason"] for e in read_stream_file(rejects)} if rejects.exists() else {}
    assert b"root:x" not in (rejects.read_bytes() if rejects.exists() else b"")
    return [logged.get(f"img{i:03d}") for i in range(1, len(probes) + 1)]


def test_dedup_exact_hashes_image_files(files, tmp_path):
    root = files["root"]
    reasons = _dedup(files, tmp_path, [str(root / "good.png"), str(root / "copy.jpg"), str(root / "missing.jpg"), 5])
    assert reasons[0] is None and reasons[1] is not None and reasons[2] is not None and reasons[3] is None


def test_dedup_counts_wrong_typed_fields(tmp_path):
    records = [
        image_record(0, url="https://x/0.jpg", sha256=5),
        image_record(1, url=7),
        image_record(2, url=["u"]),
        text_record(3, 5),
        text_record(4, ["x"]),
        text_record(5, None),
        text_record(6, "t " * 200_000),
        {**text_record(7), "id": 7},
        {"kind": [1]},
        {"kind": "image", "url": "https://x/9.jpg", "sha256": []},
    ]
    stats = tmp_path / "stats.json"
    proc = rsyn_here(
        "dedup", "--on-error", "skip", "--stats", stats, "-o", tmp_path / "out.jsonl", input=jsonl(records)
    )
    assert_clean(proc.stderr.decode(), proc.returncode)
    assert_accounted(summary(stats), len(records))
    assert summary(stats)["errors"], summary(stats)
    proc = rsyn_here("dedup", "-o", tmp_path / "failed.jsonl", input=jsonl(records))
    assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)


def test_dedup_exact_refuses_special_and_outside_files(files, tmp_path):
    probes = [image_path(files, name) for name in ("fifo.jpg", "zero.jpg", "escape.jpg", "!/etc/passwd")]
    reasons = _dedup(files, tmp_path, probes, timeout=12)
    assert None not in reasons, reasons


# --------------------------------------------------------------------------- pack


def release_record(i, **fields):
    return {
        "id": f"img{i:03d}",
        "kind": "image",
        "doc": "https://example.org/d",
        "url": f"https://i.example/{i}.jpg",
        "texts": [{"id": f"t{i}", "text": f"retrieved text {i}", "score": 0.4}],
        "syn_text": f"synthetic {i}",
        "caption": "a photo",
        "tags": ["photo"],
        "cluster": 3,
        "sim": 0.5,
        **fields,
    }


WRONG_TYPED = [  # fields that make a record unusable for --extra-columns (and the message's words)
    ({"cluster": True}, "`cluster` is a boolean"),
    ({"cluster": 2**63}, "`cluster` is an integer out of range"),
    ({"cluster": "3"}, "`cluster` is a string"),
    ({"sim": "high"}, "`sim` is a string"),
    ({"sim": [0.5]}, "`sim` is a list"),
    ({"tags": [1, 2]}, "`tags` is a list"),
    ({"tags": "photo"}, "`tags` is a string"),
    ({"caption": {"text": "x"}}, "`caption` is an object"),
    ({"id": ["x"]}, "`id` is a list"),
    ({"doc": 5}, "`doc` is an integer"),
    ({"texts": [{"id": 5, "text": "t", "score": 0.1}]}, "`texts[0].id` is an integer"),
    ({"texts": [{"id": "t", "text": "t", "score": "0.1"}]}, "`texts[0].score` is a string"),
    ({"texts": [{"id": "t", "text": None}]}, "`texts` is not a list"),
    ({"texts": "one text"}, "`texts` is not a list"),
    ({"syn_text": 5}, "`syn_text` is not a string"),
    ({"url": 5}, "no `url`"),
    ({"url": None}, "no `url`"),
]


def test_pack_extra_columns_refuse_wrong_types_record_by_record(tmp_path):
    good = [release_record(i) for i in range(3)] + [
        release_record(3, cluster=None, sim=None, tags=None, caption=None, texts=[], syn_text=None, url="u" * 100_000)
    ]
    bad = [release_record(10 + i, **fields) for i, (fields, _) in enumerate(WRONG_TYPED)]
    stats, rejects = tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    proc = rsyn_here(
        "pack",
        "--extra-columns",
        "-o",
        tmp_path / "out",
        "--on-error",
        "skip",
        "--stats",
        stats,
        "--rejects",
        rejects,
        input=jsonl(good + bad + [{"kind": 5}, {"kind": "image", "url": 5}]),
    )
    assert_clean(proc.stderr.decode(), proc.returncode)
    result = summary(stats)
    assert_accounted(result, len(good) + len(bad) + 2)
    assert result["out"] == len(good) and result["errors"] == {"bad_record": len(bad) + 1}
    messages = [entry["message"] for entry in read_stream_file(rejects) if entry["kind"] == "error"]
    for (_, words), message in zip(WRONG_TYPED, messages):
        assert words in message, (words, message)
    for fields, words in WRONG_TYPED[:3]:  # fail mode: one line naming the record's line
        proc = rsyn_here(
            "pack",
            "--extra-columns",
            "-o",
            tmp_path / "failed",
            input=jsonl([release_record(0), release_record(1, **fields)]),
        )
        assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
        assert proc.stderr.decode().strip().splitlines()[-1].startswith(f"rsyn: error: <stdin>:2: {words}")
        assert not (tmp_path / "failed").exists()


def test_pack_webdataset_accounts_for_bad_images(files, tmp_path):
    root = files["root"]
    records = [release_record(0, path=str(root / "good.jpg")), release_record(1, path=str(root / "good.png"))]
    expected = {}
    for i, (name, reason) in enumerate(BAD_IMAGES, start=10):
        if name == "truncated.jpg":
            continue  # a JPEG goes into the tar as it is once its header is sane (see as_jpeg)
        records.append(release_record(i, path=image_path(files, name)))
        expected[f"img{i:03d}"] = reason
    records.append(release_record(90, path=7))
    expected["img090"] = "bad_path"
    stats, rejects = tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    proc = rsyn(
        "pack",
        "--format",
        "webdataset",
        "--path-root",
        root,
        "-o",
        tmp_path / "wds",
        "--on-error",
        "skip",
        "--stats",
        stats,
        "--rejects",
        rejects,
        input=jsonl(records),
        timeout=60,
    )
    assert_clean(proc.stderr.decode(), proc.returncode)
    result = summary(stats)
    assert_accounted(result, len(records))
    assert result["out"] == 2 and result["stage"]["reencoded_to_jpeg"] == 1
    logged = {entry["record"]["id"]: entry for entry in read_stream_file(rejects)}
    assert {k: v["reason"] for k, v in logged.items()} == expected
    assert b"root:x" not in rejects.read_bytes().replace(orjson.dumps(SECRET.decode())[1:-1], b"")


@pytest.mark.parametrize("name", ["page.jpg", "bomb.png", "escape.jpg", "empty.jpg"])
def test_pack_webdataset_fail_mode_is_one_clean_line(files, tmp_path, name):
    """One real process: a tar writer left open under a closed file prints "Exception ignored ..." at exit."""
    records = [release_record(0, path=str(files["root"] / "good.jpg")), release_record(1, path=image_path(files, name))]
    run = rsyn if name == "page.jpg" else rsyn_here
    proc = run(
        "pack", "--format", "webdataset", "--path-root", files["root"], "-o", tmp_path / "wds", input=jsonl(records)
    )
    assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
    assert proc.stderr.decode().strip().splitlines()[-1].startswith("rsyn: error: <stdin>:2: image of record 'img001'")
    assert os.listdir(tmp_path) == []  # no directory, no temporary twin


def test_pack_overwrites_only_its_own_output(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    records = jsonl([release_record(0)])
    proc = rsyn_here("pack", "-o", precious, "--overwrite", input=records)
    assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
    assert "not an rsyn output" in proc.stderr.decode()
    assert os.listdir(precious) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    proc = rsyn_here("pack", "-o", tmp_path / "file", "--overwrite", input=records)
    assert_clean(proc.stderr.decode(), proc.returncode, fail_mode=True)
    out = tmp_path / "out"
    assert rsyn_here("pack", "-o", out, input=records).returncode == 0
    assert rsyn_here("pack", "-o", out, "--overwrite", input=jsonl([release_record(5)])).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rsyn_here("pack", "-o", empty, input=records).returncode == 0  # an empty directory is fine
