"""`--images DIR` means the same in every command that takes it: embed and pack read an img2dataset output
through the one reader (rsyn.images.open_image_folder), so they accept the same layouts (webdataset tars, parquet,
files), in subfolders too, and find the same images in each."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jsonl, read_stream_file, rsyn_here
from PIL import Image

N = 4
URL = "http://127.0.0.1:9/{}.jpg"  # never fetched: every image comes from the folder


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.full((112, 128 + 8 * i, 3), 40 * i, dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _webdataset(root):
    shard = root / "part" / "00000.tar"  # one level down: the folder is read recursively
    shard.parent.mkdir(parents=True)
    with tarfile.open(shard, "w") as tar:
        for i in range(N):
            for name, data in ((f"{i:09d}.jpg", _jpeg(i)), (f"{i:09d}.json", json.dumps({"url": URL.format(i)}))):
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _parquet(root):
    root.mkdir()
    table = {
        "key": [f"{i:09d}" for i in range(N)],
        "url": [URL.format(i) for i in range(N)],
        "status": ["success"] * N,
        "jpg": [_jpeg(i) for i in range(N)],
    }
    pq.write_table(pa.table(table), root / "00000.parquet")


def _files(root):
    shard = root / "00000"
    shard.mkdir(parents=True)
    for i in range(N):
        (shard / f"{i:09d}.jpg").write_bytes(_jpeg(i))
        (shard / f"{i:09d}.json").write_text(json.dumps({"url": URL.format(i), "key": f"{i:09d}"}))


LAYOUTS = {"webdataset": _webdataset, "parquet": _parquet, "files": _files}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from rsyn.testing import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "in.jsonl"
    path.write_bytes(
        jsonl({"id": f"img{i}", "kind": "image", "url": URL.format(i), "syn_text": f"picture {i}"} for i in range(N))
    )
    return path


def _packed_images(directory) -> dict[str, bytes]:
    found = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar if m.isfile()}
            for name, member in members.items():
                if name.endswith(".json"):
                    url = json.loads(tar.extractfile(member).read())["raw_image_url"]
                    found[url] = tar.extractfile(members[name[: -len(".json")] + ".jpg"]).read()
    return found


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_clip, records):
    """layout -> (embed's records, pack's {url: jpeg bytes}, embed's stderr, pack's stderr)."""
    got = {}
    for layout, build in LAYOUTS.items():
        tmp = tmp_path_factory.mktemp(layout)
        build(tmp / "images")
        embedded = rsyn_here(
            "embed", records, "--model", tiny_clip, "--images", tmp / "images", "-o", tmp / "e.jsonl.zst", check=True
        )
        packed = rsyn_here(
            "pack", records, "--format", "webdataset", "--images", tmp / "images", "-o", tmp / "packed", check=True
        )
        got[layout] = (
            read_stream_file(tmp / "e.jsonl.zst"),
            _packed_images(tmp / "packed"),
            embedded.stderr.decode(),
            packed.stderr.decode(),
        )
    return got


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_embed_and_pack_read_every_image_of_the_layout(outputs, layout):
    embedded, packed, embed_err, pack_err = outputs[layout]
    assert [r["id"] for r in embedded] == [f"img{i}" for i in range(N)]
    assert all(r.get("emb") for r in embedded)
    assert [(r["width"], r["height"]) for r in embedded] == [(128 + 8 * i, 112) for i in range(N)]
    assert packed == {URL.format(i): _jpeg(i) for i in range(N)}  # a JPEG is packed as it was downloaded
    announced = f"{N} images indexed by URL"
    assert announced in embed_err and announced in pack_err


def test_every_layout_gives_the_same_outputs(outputs):
    first = outputs["webdataset"]
    for layout in ("parquet", "files"):
        assert outputs[layout][0] == first[0], layout
        assert outputs[layout][1] == first[1], layout
