"""`rsyn export`: clip-retrieval's embeddings layout (.npy + parquet, rows in the same order) and an img2dataset
url/caption parquet, read back with numpy, pyarrow and a real img2dataset run against 127.0.0.1."""

import os

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jsonl, rsyn_here
from test_pack import image_server  # noqa: F401 - the fixture: a real HTTP server of JPEGs on 127.0.0.1

from rsyn.records import decode_embeddings, encode_embeddings

DIM = 16


def make_records(n_images=7, n_texts=5, url="http://example.org", seed=0):
    rng = np.random.default_rng(seed)
    img_emb = encode_embeddings(rng.normal(size=(n_images, DIM)))
    txt_emb = encode_embeddings(rng.normal(size=(n_texts, DIM)))
    records = []
    for i in range(max(n_images, n_texts)):
        if i < n_images:
            records.append(
                {
                    "id": f"img{i}",
                    "kind": "image",
                    "url": f"{url}/{i}.jpg",
                    "doc": f"d{i // 2}",
                    "texts": [{"id": f"t{i}", "text": f"retrieved text {i}", "score": 0.5}],
                    "syn_text": f"synthetic caption {i}" if i % 2 else None,
                    "emb": img_emb[i],
                    "emb_model": "clip-x",
                }
            )
        if i < n_texts:
            records.append(
                {
                    "id": f"txt{i}",
                    "kind": "text",
                    "text": f"sentence {i}",
                    "doc": f"d{i}",
                    "emb": txt_emb[i],
                    "emb_model": "clip-x",
                }
            )
    records.append({"id": "img-no-emb", "kind": "image", "url": f"{url}/no-emb.jpg", "caption": "a photo"})
    records.append({"id": "txt-no-emb", "kind": "text", "text": "not embedded"})  # nothing to export
    return records


def export(*args, records, check=True):
    return rsyn_here("export", *args, input=jsonl(records), check=check)


def load_all(directory, folder, stem, meta_folder, meta_stem):
    files = sorted(os.listdir(directory / folder), key=lambda n: int(n.rsplit("_", 1)[1].split(".")[0]))
    vectors = np.concatenate([np.load(directory / folder / f) for f in files])
    metas = pa.concat_tables(
        pq.read_table(directory / meta_folder / f"{meta_stem}_{f.rsplit('_', 1)[1][:-4]}.parquet") for f in files
    ).to_pylist()
    return files, vectors, metas


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_in_clip_retrieval_layout(tmp_path, dtype):
    records = make_records()
    out = tmp_path / "exported"
    proc = export("-o", out, "--rows-per-shard", "3", "--dtype", dtype, records=records)
    # clip-retrieval's documented names: img_emb/img_emb_0.npy, text_emb/text_emb_0.npy, metadata/metadata_0.parquet
    assert sorted(os.listdir(out)) == [
        "_SUCCESS",
        "_stats.json",
        "img2dataset",
        "img_emb",
        "metadata",
        "text_emb",
        "text_metadata",
    ]
    assert sorted(os.listdir(out / "img_emb")) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert sorted(os.listdir(out / "metadata")) == ["metadata_0.parquet", "metadata_1.parquet", "metadata_2.parquet"]
    assert sorted(os.listdir(out / "text_emb")) == ["text_emb_0.npy", "text_emb_1.npy"]
    images = [r for r in records if r["kind"] == "image" and "emb" in r]
    texts = [r for r in records if r["kind"] == "text" and "emb" in r]
    _, vectors, metas = load_all(out, "img_emb", "img_emb", "metadata", "metadata")
    assert vectors.dtype == np.dtype(dtype) and vectors.shape == (7, DIM)
    assert np.array_equal(vectors.astype(np.float32), decode_embeddings([r["emb"] for r in images]))
    assert [m["id"] for m in metas] == [r["id"] for r in images]
    assert metas[1] == {
        "id": "img1",
        "url": "http://example.org/1.jpg",
        "caption": "synthetic caption 1",
        "doc": "d0",
        "emb_model": "clip-x",
    }
    assert metas[0]["caption"] == "retrieved text 0"  # no syn_text: the best retrieved text
    _, tvectors, tmetas = load_all(out, "text_emb", "text_emb", "text_metadata", "text_metadata")
    assert np.array_equal(tvectors.astype(np.float32), decode_embeddings([r["emb"] for r in texts]))
    assert [m["text"] for m in tmetas] == [r["text"] for r in texts]
    assert np.load(out / "img_emb" / "img_emb_0.npy", mmap_mode="r").shape == (3, DIM)  # a plain .npy header
    urls = pq.read_table(out / "img2dataset").to_pylist()  # a directory, read as a dataset: no glob
    assert [u["id"] for u in urls] == [r["id"] for r in records if r["kind"] == "image"]
    assert urls[-1] == {"url": "http://example.org/no-emb.jpg", "caption": "a photo", "id": "img-no-emb"}
    stats = orjson.loads((out / "_stats.json").read_bytes())
    assert (stats["image_embeddings"], stats["text_embeddings"], stats["img2dataset_rows"]) == (7, 5, 8)
    assert "1 dropped (nothing_to_export 1)" in proc.stderr.decode()


def test_split_run_equals_the_one_process_run(tmp_path):
    records = make_records(n_images=9, n_texts=6)
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    rsyn_here("export", tmp_path / "in.jsonl", "-o", tmp_path / "whole", check=True)
    parts = []
    for k in range(3):
        rsyn_here("export", tmp_path / "in.jsonl", "--shard", f"{k}/3", "-o", tmp_path / f"part{k}", check=True)
        parts.append(tmp_path / f"part{k}")
    whole = np.load(tmp_path / "whole" / "img_emb" / "img_emb_0.npy")
    split = np.concatenate([np.load(p / "img_emb" / "img_emb_0.npy") for p in parts])
    whole_ids = pq.read_table(tmp_path / "whole" / "metadata").column("id").to_pylist()
    split_ids = [i for p in parts for i in pq.read_table(p / "metadata").column("id").to_pylist()]
    # records are dealt to shards by position (one input file): the same rows, in shard-then-position order
    order = [whole_ids.index(i) for i in split_ids]
    assert sorted(split_ids) == sorted(whole_ids) and np.array_equal(split, whole[order])


def test_bad_input_leaves_no_directory_and_existing_output_needs_overwrite(tmp_path):
    records = make_records()
    records[3]["emb"] = "not base64!"
    out = tmp_path / "exported"
    proc = export("-o", out, records=records, check=False)
    assert proc.returncode == 2 and "<stdin>:4: " in proc.stderr.decode() and "embedding" in proc.stderr.decode()
    assert not out.exists() and os.listdir(tmp_path) == []
    skipped = export("-o", out, "--on-error", "skip", records=records)
    assert "skipped errors (bad_embedding 1)" in skipped.stderr.decode()
    again = export("-o", out, records=make_records(), check=False)
    assert again.returncode == 2 and "use --overwrite" in again.stderr.decode()
    export("-o", out, "--overwrite", records=make_records(n_images=2))
    assert np.load(out / "img_emb" / "img_emb_0.npy").shape == (2, DIM)
    other = make_records()
    other[0]["emb"] = encode_embeddings(np.ones((1, DIM + 1)))[0]  # another dimension
    mixed = export("-o", tmp_path / "mixed", records=other[::-1], check=False)
    assert (
        mixed.returncode == 2 and "embedding of 17 dims, the earlier image embeddings have 16" in mixed.stderr.decode()
    )


def test_img2dataset_downloads_the_exported_url_list(tmp_path, image_server):  # noqa: F811
    records = make_records(n_images=6, n_texts=1, url=image_server)  # no-emb.jpg is not served: a 404
    out = tmp_path / "exported"
    export("-o", out, records=records)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download

    downloaded = tmp_path / "downloaded"
    download(
        url_list=str(out / "img2dataset"),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["id"],
        output_format="files",
        output_folder=str(downloaded),
        processes_count=1,
        thread_count=2,
        resize_mode="no",
        timeout=5,
        retries=0,
        enable_wandb=False,
    )
    got = pq.read_table(downloaded / "00000.parquet").to_pylist()
    ok = {row["id"]: row["caption"] for row in got if row["status"] == "success"}
    assert ok == {f"img{i}": (f"synthetic caption {i}" if i % 2 else f"retrieved text {i}") for i in range(6)}
