"""`rsyn embed` and the CLIP loader, with a tiny random-weight open_clip model loaded by path."""

import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsyn.errors import RsynError
from rsyn.models.clip import load_clip, model_spec
from rsyn.testing import build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


def test_tiny_clip_loads_by_its_spec_and_gives_unit_rows(tiny_clip):
    from PIL import Image

    clip = load_clip(tiny_clip, None, "cpu")
    assert clip.spec == tiny_clip and clip.dim == 32
    assert re.fullmatch(r"tiny-clip[0-9]*#[0-9a-f]{16}", clip.name)  # records carry basename + content hash
    texts = clip.encode_texts(["a dog on a beach", "a red car", ""])
    assert texts.dtype == np.float32 and texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    images = clip.encode_images([Image.new("RGB", (64, 40), (200, 30, 30)), Image.new("RGB", (40, 64), "blue")])
    assert images.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert load_clip(clip.spec, None, "cpu") is clip  # cached per process


def test_cutting_the_padding_changes_nothing_but_the_work(tiny_clip):
    clip = load_clip(tiny_clip, None, "cpu")
    assert clip.trims_padding  # a causal, end-of-text-pooled tower: the padding cannot matter
    texts = ["a", "a brown dog", "two hikers climbed the snowy hill before the rain started " * 3, ""]
    tokens = clip.tokenize(texts)
    assert list(clip.token_lengths(tokens))[:2] == [3, 5] and clip.token_lengths(tokens)[2] == 32
    np.testing.assert_allclose(clip.encode_tokens(tokens[:2]), clip.encode_tokens(tokens[:2], trim=False), atol=1e-5)
    np.testing.assert_allclose(clip.encode_tokens(tokens), clip.encode_tokens(tokens, trim=False), atol=1e-5)


# ASCII with every control and markup character that ftfy or html.unescape could act on, plus
# non-ASCII letters, entities, curly quotes, full-width forms and line-break variants
_TRICKY = "".join(map(chr, range(0, 128))) + "éÉü\u0301\u201c\u201d\u2028\u00a0\uff46\ufb01&amp;&lt;&#39;"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(), max_size=60), min_size=1, max_size=4))
def test_fast_tokenizer_gives_open_clips_ids(texts):
    import open_clip

    from rsyn.models.clip_tokens import FastClipTokenizer

    reference = _REFERENCE_TOKENIZER.setdefault("tok", open_clip.tokenizer.SimpleTokenizer(context_length=32))
    fast = FastClipTokenizer(reference)
    assert FastClipTokenizer.applies(reference)
    assert np.array_equal(fast(texts).numpy(), reference(texts).numpy())


def test_fast_tokenizer_on_real_captions(tiny_clip):
    import pyarrow.parquet as pq

    data = "/work/shared/data/laion-10k.parquet"
    if not os.path.exists(data):
        pytest.skip("no LAION sample on this machine")
    captions = [t for t in pq.read_table(data, columns=["TEXT"])["TEXT"].to_pylist() if t][:3000]
    clip = load_clip(tiny_clip, None, "cpu")
    assert type(clip._tokenize).__name__ == "FastClipTokenizer"
    for start in range(0, len(captions), 500):
        batch = captions[start : start + 500]
        assert np.array_equal(clip.tokenize(batch).numpy(), clip.tokenizer(batch).numpy())


_REFERENCE_TOKENIZER: dict = {}


def test_tiny_clip_is_seeded(tiny_clip, tmp_path):
    # (loading in a fresh process, from the command line, is what test_embed_mixed_stream_end_to_end does)
    again = load_clip(build_tiny_clip(tmp_path / "again", seed=0), None, "cpu")
    other = load_clip(build_tiny_clip(tmp_path / "other", seed=1), None, "cpu")
    first = load_clip(tiny_clip, None, "cpu")
    assert again is not first and again.name != first.name
    texts = ["a photo of a cat"]
    np.testing.assert_array_equal(again.encode_texts(texts), first.encode_texts(texts))
    assert not np.allclose(other.encode_texts(texts), first.encode_texts(texts))


def test_model_specs_round_trip(tmp_path):
    assert model_spec("ViT-B-32", "laion2b_s34b_b79k") == "ViT-B-32@laion2b_s34b_b79k"
    assert model_spec("ViT-B-32@laion2b_s34b_b79k") == "ViT-B-32@laion2b_s34b_b79k"
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    assert model_spec("ViT-B-32", str(ckpt)) == f"ViT-B-32@{ckpt.resolve()}"
    assert model_spec(str(tmp_path)) == f"local-dir:{tmp_path.resolve()}"
    with pytest.raises(ValueError, match="needs --pretrained"):
        model_spec("ViT-B-32")
    with pytest.raises(ValueError, match="cannot be used"):
        model_spec(f"local-dir:{tmp_path}", "laion2b_s34b_b79k")


def test_default_model_offline_fails_with_one_helpful_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RsynError) as err:
        load_clip(device="cpu")
    message = str(err.value)
    assert "EVA02-E-14-plus@laion2b_s9b_b144k" in message and "local-dir:DIR" in message and "\n" not in message


# --------------------------------------------------------------------------- rsyn embed, through the command line


import orjson  # noqa: E402
from conftest import jsonl, read_stream_file, rsyn, rsyn_here  # noqa: E402
from test_images import ImageServer, jpeg_bytes, png_bytes, write_img2dataset_tar  # noqa: E402

from rsyn.images import decode_image  # noqa: E402
from rsyn.records import decode_embeddings  # noqa: E402

FAST_NET = ["--timeout", "0.5", "--deadline", "2", "--retries", "1", "--max-bytes", "1000000", "--allow-private-urls"]


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    yield s
    s.close()


def _image(i, **fields):
    return {"id": f"img{i:03d}", "kind": "image", "doc": "d1", "pos": i, **fields}


def _text(i, text):
    return {"id": f"txt{i:03d}", "kind": "text", "doc": "d1", "pos": i, "text": text, "scores": {"words": 5}}


@pytest.fixture(scope="module")
def mixed_stream(tmp_path_factory, server):
    """Image records (local files and loopback URLs, some broken) and text records, with what each must become."""
    root = tmp_path_factory.mktemp("mixed")
    photo = jpeg_bytes(300, 200)
    (root / "photo.jpg").write_bytes(photo)
    (root / "small.jpg").write_bytes(jpeg_bytes(50, 200))
    (root / "wide.jpg").write_bytes(jpeg_bytes(600, 150))
    (root / "rotated.jpg").write_bytes(jpeg_bytes(300, 120, exif_orientation=6))
    server.files["/img/photo.jpg"] = photo
    server.files["/img/logo.png"] = png_bytes(__import__("PIL.Image", fromlist=["Image"]).new("RGBA", (160, 120)))
    for i in range(24):
        server.files[f"/img/many{i}.jpg"] = jpeg_bytes(120 + 7 * i, 110 + 5 * i, color=(10 * i, 100, 200 - 5 * i))
    unknown = {"scores": {"size": "unknown"}}
    records, expect = [], []  # expect: None = kept (with emb), or the drop reason
    plan = [
        (_image(0, path=str(root / "photo.jpg"), **unknown), None),
        (_text(1, "A brown dog is carrying a kite near the harbour."), None),
        (_image(2, url=server.url("/slow")), "fetch_timeout"),  # early and slow: order must still hold
        (_image(3, url=server.url("/img/photo.jpg")), None),
        (_image(4, url=server.url("/status/404")), "http_404"),
        (_image(5, path=str(root / "small.jpg")), "size_rule"),
        (_image(6, path=str(root / "wide.jpg"), **unknown), "size_rule"),
        (_image(7, path=str(root / "rotated.jpg")), None),
        ({"id": "doc1", "kind": "document", "url": "https://example.com/page"}, None),  # passes untouched
        (_image(9, url=server.url("/garbage")), "not_an_image"),
        (_image(10, url=server.url("/truncated")), "decode_failed"),
        (_image(11, url=server.url("/huge")), "too_large"),
        (_image(12, url=server.url("/img/photo.jpg"), width=640, height=480), None),  # known size: no rule
        (_image(13, path=str(root / "missing.jpg")), "file_not_found"),
        (_image(14, url=server.url("/img/logo.png")), None),
        (_text(15, "Two hikers climbed the snowy hill before the rain started."), None),
    ]
    plan += [(_image(100 + i, url=server.url(f"/img/many{i}.jpg")), None) for i in range(24)]
    plan += [(_text(200 + i, f"The baker sold {i} loaves of bread in the village square."), None) for i in range(9)]
    for record, outcome in plan:
        records.append(record)
        expect.append(outcome)
    path = root / "in.jsonl"
    path.write_bytes(jsonl(records))
    return path, records, expect, root


def test_embed_mixed_stream_end_to_end(mixed_stream, tiny_clip, tmp_path):
    path, records, expect, root = mixed_stream
    out, rejects, stats = tmp_path / "out.jsonl.zst", tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    args = [
        "embed",
        path,
        "--model",
        tiny_clip,
        "--batch-size",
        "4",
        "-o",
        out,
        "--rejects",
        rejects,
        "--stats",
        stats,
        "--path-root",
        root,
        *FAST_NET,
    ]
    proc = rsyn(*args, check=True)  # the real command line, in a fresh process
    err = proc.stderr.decode()
    identity = load_clip(tiny_clip, None, "cpu").name
    assert "rsyn embed: device cpu" in err and f"model {identity}, 32 dims" in err
    got = read_stream_file(out)

    # order is input order, minus the drops
    kept = [r for r, outcome in zip(records, expect) if outcome is None]
    assert [r["id"] for r in got] == [r["id"] for r in kept]
    by_id = {r["id"]: r for r in got}
    embedded = [r for r in got if r.get("kind") in ("image", "text")]
    matrix = decode_embeddings([r["emb"] for r in embedded], dim=32)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, atol=2e-3)
    assert {r["emb_model"] for r in embedded} == {identity}
    assert by_id["doc1"] == records[8]  # another kind: untouched

    # the size rule, applied where the size was unknown, filled in where it passed
    assert (by_id["img000"]["width"], by_id["img000"]["height"]) == (300, 200)
    assert by_id["img000"]["scores"] == {"size": "ok", "min_side": 200, "aspect": 1.5}
    assert (by_id["img007"]["width"], by_id["img007"]["height"]) == (120, 300)  # EXIF rotation
    assert by_id["img012"]["width"] == 640 and "scores" not in by_id["img012"]  # known size: left alone

    # the same picture from a file and from a URL gives the same embedding
    assert by_id["img000"]["emb"] == by_id["img003"]["emb"] == by_id["img012"]["emb"]
    # ... which is what the model gives when called directly
    clip = load_clip(tiny_clip, None, "cpu")
    direct_image = clip.encode_images([decode_image((root / "photo.jpg").read_bytes()).image])
    np.testing.assert_allclose(decode_embeddings([by_id["img000"]["emb"]]), direct_image, atol=2e-3)
    direct_text = clip.encode_texts([records[1]["text"]])
    np.testing.assert_allclose(decode_embeddings([by_id["txt001"]["emb"]]), direct_text, atol=2e-3)

    # drops: counted by reason, in --rejects with the record and its place
    summary = orjson.loads(stats.read_bytes())
    reasons = [o for o in expect if o]
    assert summary["dropped"] == {r: reasons.count(r) for r in set(reasons)}
    assert summary["in"] == len(records) and summary["out"] == len(kept)
    assert summary["stage"]["images"] == sum(1 for r in kept if r.get("kind") == "image")
    assert summary["stage"]["texts"] == sum(1 for r in kept if r.get("kind") == "text")
    logged = {e["record"]["id"]: e for e in read_stream_file(rejects)}
    assert logged["img004"]["reason"] == "http_404" and logged["img004"]["where"] == f"{path}:5"
    assert logged["img005"]["record"]["scores"] == {"min_side": 50, "aspect": 0.25, "size": "fail"}

    # same input, same bytes: again, in this process this time
    out2 = tmp_path / "again.jsonl.zst"
    proc = rsyn_here(*args[:7], out2, *args[8:], text=True)
    assert proc.returncode == 0, proc.stderr
    assert out2.read_bytes() == out.read_bytes()


def test_embed_images_from_an_img2dataset_folder(tmp_path, tiny_clip):
    nowhere = "http://127.0.0.1:9"  # nothing listens: a fetch would fail, --images must not fetch
    samples = [(f"{nowhere}/{i}.jpg", jpeg_bytes(150 + i, 140), None) for i in range(6)]
    samples.append((f"{nowhere}/resized-ok.jpg", jpeg_bytes(256, 256), (1024, 2000)))
    samples.append((f"{nowhere}/resized-thin.jpg", jpeg_bytes(256, 256), (1000, 200)))
    write_img2dataset_tar(
        tmp_path / "dl", 0, samples[:4], with_parquet=True, failed=[(f"{nowhere}/dead.jpg", "HTTP Error 404")]
    )
    write_img2dataset_tar(tmp_path / "dl", 1, samples[4:])
    records = [_image(i, url=url) for i, (url, _, _) in enumerate(samples)]
    records.insert(3, _image(50, url=f"{nowhere}/dead.jpg"))
    records.insert(5, _text(51, "The gardener is building a stone wall beside the old church."))
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    proc = rsyn_here(
        "embed",
        tmp_path / "in.jsonl",
        "--model",
        tiny_clip,
        "--images",
        tmp_path / "dl",
        "-o",
        out,
        "--rejects",
        rejects,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 images indexed by URL" in proc.stderr
    got = {r["id"]: r for r in read_stream_file(out)}
    assert set(got) == {r["id"] for r in records} - {"img050", "img007"}
    assert (got["img006"]["width"], got["img006"]["height"]) == (1024, 2000)  # img2dataset's original size
    assert all(len(decode_embeddings([r["emb"]], dim=32)) == 1 for r in got.values())
    logged = {e["record"]["id"]: e for e in read_stream_file(rejects)}
    assert logged["img050"]["reason"] == "not_downloaded" and "404" in logged["img050"]["detail"]
    assert logged["img007"]["reason"] == "size_rule" and logged["img007"]["width"] == 1000


def test_embed_another_text_field(tmp_path, tiny_clip):
    records = [
        _image(
            i, url=f"http://127.0.0.1:9/{i}.jpg", syn_text=f"A cyclist rode {i} miles along the river.", emb="keep-me"
        )
        for i in range(5)
    ]
    records.append(_text(9, "not this field"))
    records[-1]["syn_text"] = "A street musician is holding a big drum."
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl"
    proc = rsyn_here(
        "embed", tmp_path / "in.jsonl", "--model", tiny_clip, "--text-field", "syn_text", "-o", out, text=True
    )
    assert proc.returncode == 0, proc.stderr
    got = read_stream_file(out)
    assert [r["id"] for r in got] == [r["id"] for r in records]
    clip = load_clip(tiny_clip, None, "cpu")
    expected = clip.encode_texts([r["syn_text"] for r in records])
    np.testing.assert_allclose(decode_embeddings([r["syn_emb"] for r in got]), expected, atol=2e-3)
    assert all(r["syn_emb_model"] == clip.name and r["emb"] == "keep-me" for r in got[:5])
    assert "emb" not in got[5]


def test_bad_input_is_one_line_naming_file_and_line(tmp_path, tiny_clip):
    records = [
        _text(0, "A tall man opened the red door."),
        {"id": "t1", "kind": "text", "txt": "typo"},
        _image(2),
        _text(3, "The pilot caught a kite."),
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(records))
    proc = rsyn_here("embed", src, "--model", tiny_clip, "-o", tmp_path / "out.jsonl", text=True)
    assert (
        proc.returncode == 2
        and proc.stderr.strip().splitlines()[-1] == f"rsyn: error: {src}:2: text record t1 has no string `text`"
    )
    assert not (tmp_path / "out.jsonl").exists()
    proc = rsyn_here(
        "embed",
        src,
        "--model",
        tiny_clip,
        "-o",
        tmp_path / "out.jsonl",
        "--on-error",
        "skip",
        "--stats",
        tmp_path / "stats.json",
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_stream_file(tmp_path / "out.jsonl")] == ["txt000", "txt003"]
    assert orjson.loads((tmp_path / "stats.json").read_bytes())["errors"] == {"missing_field": 2}


def test_model_errors_are_one_line(tmp_path):
    proc = rsyn_here("embed", "--model", "ViT-B-32", "-o", tmp_path / "out.jsonl", text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "rsyn: error: --model ViT-B-32 needs --pretrained"
    )
    proc = rsyn_here("embed", "--model", f"local-dir:{tmp_path}/none", "-o", tmp_path / "out.jsonl", text=True)
    assert proc.returncode == 2 and "cannot load CLIP model" in proc.stderr and "Traceback" not in proc.stderr


def test_kinds_limits_what_is_embedded(tmp_path, tiny_clip):
    records = [_image(0, url="http://127.0.0.1:9/never-fetched.jpg"), _text(1, "The chef opened the red door.")]
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    proc = rsyn_here(
        "embed", tmp_path / "in.jsonl", "--model", tiny_clip, "--kinds", "text", "-o", tmp_path / "out.jsonl", text=True
    )
    assert proc.returncode == 0, proc.stderr
    image, text = read_stream_file(tmp_path / "out.jsonl")
    assert image == records[0] and text["emb_model"] == load_clip(tiny_clip, None, "cpu").name


def test_a_nan_embedding_is_a_drop_not_a_crash(tmp_path):
    import torch

    from rsyn.models.clip import clear_clip_cache

    spec = build_tiny_clip(tmp_path / "broken", seed=2)
    clip = load_clip(spec, None, "cpu")
    try:
        with torch.no_grad():
            clip.model.text_projection.fill_(float("nan"))  # a model whose text tower overflows
        (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(200, 150))
        records = [_text(0, "The farmer fed the horses."), _image(1, path=str(tmp_path / "photo.jpg"))]
        (tmp_path / "in.jsonl").write_bytes(jsonl(records))
        proc = rsyn_here(
            "embed",
            tmp_path / "in.jsonl",
            "--model",
            spec,
            "-o",
            tmp_path / "out.jsonl",
            "--rejects",
            tmp_path / "rejects.jsonl",
            "--path-root",
            tmp_path,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert [r["id"] for r in read_stream_file(tmp_path / "out.jsonl")] == ["img001"]
        assert read_stream_file(tmp_path / "rejects.jsonl")[0]["reason"] == "bad_embedding"
    finally:
        clear_clip_cache(spec)


def test_model_identity_is_the_same_from_a_relative_and_an_absolute_path(tmp_path, tiny_clip, monkeypatch):
    """emb_model names a local model by basename + content hash: not the path as typed, not the machine's layout."""
    import shutil

    from rsyn.models.clip import clear_clip_cache

    shutil.copytree(tiny_clip.removeprefix("local-dir:"), tmp_path / "models" / "clip")
    (tmp_path / "in.jsonl").write_bytes(jsonl([_text(0, "The farmer fed the horses.")]))
    monkeypatch.chdir(tmp_path)
    outputs = []
    for i, model in enumerate(
        [
            "models/clip",
            f"local-dir:{tmp_path}/models/clip",
            "local-dir:./models/../models/clip",
            f"{tiny_clip}/../{os.path.basename(tiny_clip)}",
        ]
    ):
        proc = rsyn_here("embed", "in.jsonl", "--model", model, "-o", f"out{i}.jsonl", text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append(read_stream_file(tmp_path / f"out{i}.jsonl")[0]["emb_model"])
    hash_part = outputs[0].partition("#")[2]
    assert outputs[:3] == [f"clip#{hash_part}"] * 3 and outputs[3] == f"{os.path.basename(tiny_clip)}#{hash_part}"
    # other weights in the same folder: another identity
    clear_clip_cache()
    build_tiny_clip(tmp_path / "models" / "clip", seed=5)
    proc = rsyn_here("embed", "in.jsonl", "--model", "models/clip", "-o", "out9.jsonl", text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_stream_file(tmp_path / "out9.jsonl")[0]["emb_model"] not in outputs
    clear_clip_cache()
