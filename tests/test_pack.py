"""`rsyn pack` through the real command line: the RealSyn parquet schema, webdataset tars, a real img2dataset run."""

import glob
import http.server
import io
import os
import threading
from functools import partial

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import jsonl, rsyn, rsyn_here
from PIL import Image

RELEASE = ["raw_image_url", "text1", "text2", "text3", "syn_text"]


def image_record(i, n_texts=3, url="http://example.org", **extra):
    texts = [
        {"id": f"t{i}-{j}", "text": f"retrieved text {j} of image {i}", "score": round(0.5 - 0.1 * j, 2)}
        for j in range(n_texts)
    ]
    return {
        "id": f"img{i:04d}",
        "kind": "image",
        "doc": f"https://doc/{i // 3}",
        "url": f"{url}/{i}.jpg",
        "texts": texts,
        "caption": f"a photo number {i}",
        "tags": ["photo", "test"],
        "syn_text": f"a synthetic caption for image {i} with seven words",
        "sim": 0.55,
        "cluster": i % 4,
        **extra,
    }


def pack(*args, records, check=True):
    return rsyn_here("pack", *args, input=jsonl(records), check=check)


def read_rows(directory):
    return pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(f"{directory}/*.parquet"))).to_pylist()


def test_parquet_has_exactly_the_release_columns(tmp_path):
    records = [image_record(i, n_texts=i % 5) for i in range(25)]
    out = tmp_path / "release"
    proc = pack("-o", out, "--rows-per-shard", "10", records=records + [{"id": "t", "kind": "text", "text": "x"}])
    assert sorted(os.listdir(out)) == ["00000.parquet", "00001.parquet", "00002.parquet", "_SUCCESS", "_stats.json"]
    schema = pq.read_schema(out / "00000.parquet")
    assert schema.names == RELEASE and all(t == pa.string() for t in schema.types)
    rows = read_rows(out)
    assert len(rows) == 25
    for record, row in zip(records, rows):
        texts = [t["text"] for t in record["texts"][:3]]
        assert row == {
            "raw_image_url": record["url"],
            "syn_text": record["syn_text"],
            **{f"text{j + 1}": texts[j] if j < len(texts) else None for j in range(3)},
        }
    stats = orjson.loads((out / "_stats.json").read_bytes())
    assert stats["rows"] == 25 and [s["rows"] for s in stats["shards"]] == [10, 10, 5]
    real = sum(min(i % 5, 3) for i in range(25))
    assert stats["realistic_texts_per_image"] == round(real / 25, 4)
    assert stats["texts_per_image"] == round((real + 25) / 25, 4)
    assert stats["mean_tokens"]["syn_text"] == 9.0 and stats["mean_tokens"]["text1"] == 6.0
    assert "26 in, 25 out, 1 dropped (not_image 1)" in proc.stderr.decode()


def test_extra_columns_add_provenance(tmp_path):
    out = tmp_path / "release"
    pack("-o", out, "--extra-columns", records=[image_record(1), image_record(2, n_texts=1)])
    table = pq.read_table(out / "00000.parquet")
    assert table.schema.names[:5] == RELEASE
    row = table.to_pylist()[1]
    assert row["id"] == "img0002" and row["doc"] == "https://doc/0" and row["text1_id"] == "t2-0"
    assert row["text1_score"] == pytest.approx(0.5) and row["text2_id"] is None and row["text2_score"] is None
    assert row["cluster"] == 2 and row["sim"] == pytest.approx(0.55) and row["tags"] == ["photo", "test"]


def test_same_input_gives_identical_bytes(tmp_path):
    records = [image_record(i) for i in range(30)]
    pack("-o", tmp_path / "a", records=records)
    pack("-o", tmp_path / "b", records=records)
    for name in ["00000.parquet", "_stats.json", "_SUCCESS"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_record_fails_with_its_line_and_leaves_no_directory(tmp_path):
    records = [image_record(i) for i in range(5)]
    del records[3]["url"]
    out = tmp_path / "release"
    proc = rsyn("pack", "-o", out, "--rows-per-shard", "2", input=jsonl(records))  # a real process
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.strip() == "rsyn: error: <stdin>:4: image record has no `url`"
    assert os.listdir(tmp_path) == []  # neither the directory nor its temporary twin
    proc = pack("-o", out, "--on-error", "skip", records=records)
    assert len(read_rows(out)) == 4 and "1 skipped errors (bad_record 1)" in proc.stderr.decode()


def test_existing_directory_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "release"
    pack("-o", out, records=[image_record(i) for i in range(3)])
    proc = pack("-o", out, records=[image_record(9)], check=False)
    assert proc.returncode == 2 and "not empty (use --overwrite" in proc.stderr.decode()
    pack("-o", out, "--overwrite", records=[image_record(9)])
    assert [r["raw_image_url"] for r in read_rows(out)] == ["http://example.org/9.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["release"]


def test_dataset_readers_load_the_directory_itself(tmp_path):
    """The done marker and the stats are named so that Arrow (and Spark, datasets) skip them: no glob needed."""
    records = [image_record(i) for i in range(12)]
    out = tmp_path / "release"
    pack("-o", out, "--rows-per-shard", "5", records=records)
    table = pq.read_table(out)
    assert table.num_rows == 12 and table.column_names == RELEASE
    assert table.column("raw_image_url").to_pylist() == [r["url"] for r in records]


def test_hugging_face_datasets_loads_the_directory_itself(tmp_path):
    datasets = pytest.importorskip("datasets", reason="not a dependency of rsyn; pyarrow's reading is tested above")
    records = [image_record(i) for i in range(12)]
    out = tmp_path / "release"
    pack("-o", out, "--rows-per-shard", "5", records=records)
    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    assert loaded.num_rows == 12 and loaded["raw_image_url"] == [r["url"] for r in records]


def _jpeg(width, height, value):
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_webdataset_from_local_images(tmp_path):
    records = []
    for i in range(5):
        path = tmp_path / f"img{i}.{'png' if i == 4 else 'jpg'}"
        if i == 4:  # not a JPEG: re-encoded
            Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(path, format="PNG")
        else:
            path.write_bytes(_jpeg(32, 24, 40 * i))
        records.append(image_record(i, path=str(path)))
    out = tmp_path / "wds"
    pack(
        "-o",
        out,
        "--format",
        "webdataset",
        "--rows-per-shard",
        "3",
        "--extra-columns",
        "--path-root",
        tmp_path,
        records=records,
    )
    assert sorted(os.listdir(out)) == ["00000.tar", "00001.tar", "_SUCCESS", "_stats.json"]
    samples = list(
        wds.WebDataset(str(out / "{00000..00001}.tar"), shardshuffle=False)
        .decode("pil")
        .to_tuple("__key__", "jpg", "txt", "json")
    )
    assert [s[0] for s in samples] == ["000000000", "000000001", "000000002", "000010000", "000010001"]
    for record, (_, _image, text1, meta) in zip(records, samples):
        assert text1 == record["texts"][0]["text"]
        assert meta["text2"] == record["texts"][1]["text"] and meta["syn_text"] == record["syn_text"]
        assert meta["id"] == record["id"] and meta["raw_image_url"] == record["url"]
    assert samples[0][1].size == (32, 24) and samples[4][1].size == (30, 20)
    assert orjson.loads((out / "_stats.json").read_bytes())["reencoded_to_jpeg"] == 1
    del records[2]["path"]
    proc = pack("-o", tmp_path / "w2", "--format", "webdataset", "--path-root", tmp_path, records=records, check=False)
    assert proc.returncode == 2 and "<stdin>:3: no local image (`path`)" in proc.stderr.decode()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving generated JPEGs."""
    root = tmp_path / "www"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(_jpeg(64 + 8 * i, 48, 30 * i))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_img2dataset_downloads_a_packed_release(tmp_path, image_server):
    records = [image_record(i, url=image_server) for i in range(7)]  # 6.jpg does not exist: a 404
    records[5]["texts"] = records[5]["texts"][:1]  # text2, text3 missing: null in parquet
    release = tmp_path / "release"
    pack("-o", release, records=records)
    downloaded = tmp_path / "downloaded"
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations: no network check
    from img2dataset import download

    # the options of the RealSyn release's instructions; one worker process, few threads, no resizing
    download(
        url_list=str(release),
        input_format="parquet",
        url_col="raw_image_url",
        caption_col="text1",
        save_additional_columns=["text2", "text3", "syn_text"],
        output_format="webdataset",
        output_folder=str(downloaded),
        processes_count=1,
        thread_count=4,
        resize_mode="no",
        timeout=5,
        enable_wandb=False,
    )
    assert "success" in orjson.loads((downloaded / "00000_stats.json").read_bytes())["status_dict"]
    samples = list(
        wds.WebDataset(sorted(glob.glob(f"{downloaded}/*.tar")), shardshuffle=False)
        .decode("pil")
        .to_tuple("jpg", "txt", "json")
    )
    assert len(samples) == 6
    by_url = {meta["url"]: (image, text1, meta) for image, text1, meta in samples}
    for i, record in enumerate(records[:6]):
        image, text1, meta = by_url[record["url"]]
        assert image.size == (64 + 8 * i, 48)
        assert text1 == record["texts"][0]["text"] and meta["syn_text"] == record["syn_text"]
        texts = [t["text"] for t in record["texts"]] + [None, None]
        assert (meta["text2"], meta["text3"]) == (texts[1], texts[2])

    # the downloaded images, found by URL, packed into our own webdataset layout
    repacked = tmp_path / "repacked"
    proc = pack("-o", repacked, "--format", "webdataset", "--images", downloaded, records=records)
    assert "7 in, 6 out, 1 dropped (not_downloaded 1)" in proc.stderr.decode()
    mine = list(
        wds.WebDataset(str(repacked / "00000.tar"), shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json")
    )
    assert [(image.size, text1, meta["syn_text"]) for image, text1, meta in mine] == [
        ((64 + 8 * i, 48), r["texts"][0]["text"], r["syn_text"]) for i, r in enumerate(records[:6])
    ]
