"""--images reads img2dataset's parquet output_format (a real img2dataset run against 127.0.0.1; the webdataset and
files formats are covered in test_images.py and test_embed.py) and refuses a folder with no img2dataset output."""

import http.server
import io
import os
import threading
from functools import partial

import numpy as np
import pytest
from conftest import jsonl, read_stream_file, rsyn_here
from PIL import Image

from rsyn.images import ImageFolder

N_IMAGES = 5  # served: 0..4.jpg; 5.jpg is a 404


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _jpeg(width, height, value):
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """(img2dataset parquet output folder, the URLs it was given, the folder of the served originals)."""
    tmp = tmp_path_factory.mktemp("img2dataset")
    www = tmp / "www"
    www.mkdir()
    for i in range(N_IMAGES):
        (www / f"{i}.jpg").write_bytes(_jpeg(120 + 10 * i, 110, 40 * i))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/{i}.jpg" for i in range(N_IMAGES + 1)]
    (tmp / "urls.txt").write_text("\n".join(urls) + "\n")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    try:
        download(
            url_list=str(tmp / "urls.txt"),
            input_format="txt",
            output_format="parquet",
            output_folder=str(tmp / "parquet"),
            processes_count=1,
            thread_count=2,
            resize_mode="no",
            timeout=5,
            retries=0,
            enable_wandb=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    return tmp / "parquet", urls, www


def test_parquet_output_format_is_indexed(downloads):
    folder, urls, _ = downloads
    images = ImageFolder(folder)
    assert sorted(images.index) == sorted(urls[:N_IMAGES])
    assert urls[N_IMAGES] in images.failed  # the 404, with img2dataset's reason
    for i, url in enumerate(urls[:N_IMAGES]):  # img2dataset re-encodes: the same picture, not the same bytes
        got = np.asarray(Image.open(io.BytesIO(images.get(url)[0])), dtype=float)
        assert got.shape == (110, 120 + 10 * i, 3) and abs(got.mean() - 40 * i) < 2
    images.close()


def test_parquet_folder_reads_beyond_its_row_group_cache(downloads, monkeypatch):
    import rsyn.images

    monkeypatch.setattr(rsyn.images, "PARQUET_CACHE_BYTES", 1)  # every read evicts the last row group
    folder, urls, _ = downloads
    images = ImageFolder(folder)
    first = {url: images.get(url)[0] for url in urls[:N_IMAGES]}
    for i in [4, 0, 3, 1, 2] * 2:
        assert images.get(urls[i])[0] == first[urls[i]]
        assert Image.open(io.BytesIO(first[urls[i]])).size == (120 + 10 * i, 110)
    assert len(images._row_groups) == 1


def test_embed_and_pack_take_images_from_a_parquet_download(downloads, tmp_path):
    from rsyn.testing import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip", seed=0)
    folder, urls, _ = downloads
    records = [
        {"id": f"img{i}", "kind": "image", "url": url, "texts": [{"id": "t", "text": "x", "score": 0.5}]}
        for i, url in enumerate(urls)
    ]
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl.zst"
    proc = rsyn_here("embed", tmp_path / "in.jsonl", "--model", clip, "--images", folder, "-o", out, check=True)
    assert f"{N_IMAGES} images indexed by URL" in proc.stderr.decode()
    from_parquet = read_stream_file(out)
    assert [r["id"] for r in from_parquet] == [f"img{i}" for i in range(N_IMAGES)]  # the 404: dropped
    # the same image bytes read from files give the same records (less the path)
    images = ImageFolder(folder)
    for i, url in enumerate(urls[:N_IMAGES]):
        (tmp_path / f"{i}.jpg").write_bytes(images.get(url)[0])
    local = [{**r, "path": str(tmp_path / f"{i}.jpg")} for i, r in enumerate(records[:N_IMAGES])]
    (tmp_path / "local.jsonl").write_bytes(jsonl(local))
    rsyn_here(
        "embed",
        tmp_path / "local.jsonl",
        "--model",
        clip,
        "--path-root",
        tmp_path,
        "-o",
        tmp_path / "l.jsonl.zst",
        check=True,
    )
    assert [
        {k: v for k, v in r.items() if k != "path"} for r in read_stream_file(tmp_path / "l.jsonl.zst")
    ] == from_parquet
    rsyn_here(
        "pack",
        tmp_path / "in.jsonl",
        "--format",
        "webdataset",
        "--images",
        folder,
        "-o",
        tmp_path / "packed",
        check=True,
    )


def test_a_folder_with_no_img2dataset_output_is_refused(tmp_path):
    plain = tmp_path / "jpegs"
    plain.mkdir()
    for i in range(3):
        (plain / f"{i}.jpg").write_bytes(_jpeg(64, 64, i))
    records = [{"id": "a", "kind": "image", "url": "http://127.0.0.1:9/0.jpg"}]
    proc = rsyn_here("pack", "--format", "webdataset", "--images", plain, "-o", tmp_path / "out", input=jsonl(records))
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, err
    assert err[0].startswith(f"rsyn: error: --images {plain}: no img2dataset output found in it (expected ")
    assert "parquet" in err[0] and not (tmp_path / "out").exists()
