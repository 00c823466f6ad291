"""`rsyn caption` through the real command line: tiny random CLIP, BLIP captioner and GPT-2 built locally and
loaded by path, a real OpenAI-compatible server on 127.0.0.1, a real SQLite sentence store.

Heavy runs go through the CLI in this process (typer's runner: the models load once) and, for byte-identical
output across processes, once in a subprocess."""

import shutil
import sqlite3

import numpy as np
import orjson
import pytest
from conftest import jsonl, read_stream_file, rsyn, rsyn_here
from test_llm import LoopbackLLMServer, expected_syn_text

TAGS = ["dog", "cat", "red car", "old house", "beach", "tree", "city street", "ball"]
N_IMAGES = 6


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The models are tiny: threads only wait for each other, badly so on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch
    from safetensors.torch import load_file, save_file

    from rsyn.testing import build_tiny_captioner, build_tiny_clip, build_tiny_gpt2

    root = tmp_path_factory.mktemp("models")
    gpt2 = build_tiny_gpt2(root / "gpt2")
    mute = shutil.copytree(gpt2, root / "mute-gpt2")
    # a GPT-2 whose final layer norm outputs zeros: every logit is 0, greedy picks token 0 (its end-of-text)
    # right away, so every generation is empty
    weights = load_file(f"{mute}/model.safetensors")
    weights["transformer.ln_f.weight"] = torch.zeros_like(weights["transformer.ln_f.weight"])
    weights["transformer.ln_f.bias"] = torch.zeros_like(weights["transformer.ln_f.bias"])
    save_file(weights, f"{mute}/model.safetensors", metadata={"format": "pt"})
    return {
        "clip": build_tiny_clip(root / "clip"),
        "captioner": build_tiny_captioner(root / "blip"),
        "gpt2": gpt2,
        "mute_gpt2": str(mute),
    }


@pytest.fixture(scope="module")
def corpus(models, tmp_path_factory):
    """Retrieved image records (real PNG files, tiny-CLIP embeddings) with two text records between them."""
    from PIL import Image

    from rsyn.models.clip import load_clip
    from rsyn.records import encode_embeddings

    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        path = root / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    clip = load_clip(models["clip"], None, "cpu")
    embeddings = encode_embeddings(clip.encode_images([Image.open(p).convert("RGB") for p in paths]))
    records = []
    for i in range(N_IMAGES):
        records.append(
            {
                "id": f"img{i}",
                "kind": "image",
                "doc": f"https://example.org/page{i}",
                "pos": 1,
                "url": f"https://example.org/{i}.jpg",
                "path": paths[i],
                "emb": embeddings[i],
                "emb_model": models["clip"],
                "scores": {"words": 9},
                "texts": [
                    {"id": f"t{i}", "text": f"Rex the dog plays with a red ball in Brighton, day {i}.", "score": 0.31},
                    {"id": "u", "text": "A second, weaker sentence.", "score": 0.2},
                ],
            }
        )
        if i in (1, 4):
            records.append({"id": f"text{i}", "kind": "text", "doc": "d", "text": "a sentence passing through"})
    tags = root / "tags.txt"
    tags.write_text("# a comment line\n" + "\n".join(TAGS) + "\nDog\n\n")
    source = root / "retrieved.jsonl"
    source.write_bytes(jsonl(records))
    return {"records": records, "input": str(source), "tags": str(tags), "root": root}


def local_args(models, corpus, out, *extra):
    return [
        corpus["input"],
        "-o",
        out,
        "--tags",
        corpus["tags"],
        "--tag-threshold",
        "-1",
        "--max-tags",
        "3",
        "--captioner",
        models["captioner"],
        "--caption-beams",
        "1",
        "--llm-backend",
        "hf",
        "--llm-model",
        models["gpt2"],
        "--llm-max-tokens",
        "12",
        "--cache-dir",
        corpus["root"] / "cache",
        "--device",
        "cpu",
        "--path-root",
        corpus["root"].parent,
        *extra,
    ]  # images under pytest's base temp


def assert_captioned(records, corpus, caption_model, llm_model):
    """caption_model, llm_model: as given on the command line (a local folder is recorded by name and hash)."""
    from rsyn.models.clip import load_clip
    from rsyn.models.identity import model_identity

    caption_model, llm_model = model_identity(caption_model), model_identity(llm_model)
    assert [r["id"] for r in records] == [r["id"] for r in corpus["records"]]  # order kept, nothing lost
    for got, source in zip(records, corpus["records"]):
        if source["kind"] == "text":
            assert got == source  # other kinds pass through untouched
            continue
        assert {k: got[k] for k in source} == source  # fields are added, none changed
        assert isinstance(got["syn_text"], str) and got["syn_text"].strip() == got["syn_text"] != ""
        assert "\n" not in got["syn_text"] and "Raw text:" not in got["syn_text"]
        assert got["caption"] and got["caption_model"] == caption_model
        assert got["llm_model"] == llm_model
        assert 1 <= len(got["tags"]) <= 3 and len(set(got["tags"])) == len(got["tags"])
        assert got["tag_scores"] == sorted(got["tag_scores"], reverse=True)
        assert set(got["tags"]) <= set(TAGS) and got["tag_model"] == load_clip(source["emb_model"], None, "cpu").name


def test_local_models_end_to_end_and_byte_identical_across_processes(models, corpus, tmp_path):
    first, second, stats = tmp_path / "a.jsonl.zst", tmp_path / "b.jsonl.zst", tmp_path / "stats.json"
    sampling = ["--temperature", "0.9", "--top-p", "0.9", "--seed", "5"]
    proc = rsyn(
        "caption", *local_args(models, corpus, first, "--stats", stats, *sampling), env={"OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr.decode()
    records = read_stream_file(first)
    assert_captioned(records, corpus, models["captioner"], models["gpt2"])
    assert {r["llm_backend"] for r in records if r["kind"] == "image"} == {"hf"}
    summary = orjson.loads(stats.read_bytes())
    assert summary["in"] == summary["out"] == len(corpus["records"]) and summary["errors"] == {}
    stage = summary["stage"]
    assert stage["tag_vocabulary"] == {"given": len(TAGS), "mined": 0, "total": len(TAGS)}
    assert stage["llm"]["prompts"] == N_IMAGES and stage["llm"]["generated_tokens"] > 0
    assert stage["counts"]["captioned"] == N_IMAGES
    # the same input and seed in another process (this one): the same bytes
    result = rsyn_here("caption", *local_args(models, corpus, second, "--quiet", *sampling), text=True)
    assert result.returncode == 0, result.stderr
    assert second.read_bytes() == first.read_bytes()


def test_progress_follows_finished_batches(models, corpus, tmp_path, monkeypatch):
    """Progress counts a batch once its records are written, not when it is read (rsyn/progress.py)."""
    from rsyn.command import Run

    calls = []
    advance = Run.advance
    monkeypatch.setattr(Run, "advance", lambda self, n: (calls.append((n, self.n_in)), advance(self, n)))
    sampling = ["--temperature", "0.9", "--top-p", "0.9", "--seed", "5"]  # as above: usable random-model text
    result = rsyn_here(
        "caption",
        *local_args(models, corpus, tmp_path / "out.jsonl", "--quiet", "--batch-size", "2", *sampling),
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # one call per batch of 2 images (texts ride along with the batch they were read in)
    images = sum(r["kind"] == "image" for r in corpus["records"])
    assert len(calls) == -(-images // 2) and sum(n for n, _ in calls) == len(corpus["records"])


def test_tags_are_cosine_scores_of_the_records_model_best_first(models, corpus, tmp_path):
    from rsyn.models.clip import load_clip
    from rsyn.records import decode_embeddings

    out = tmp_path / "out.jsonl"
    cache = tmp_path / "cache"
    args = [
        corpus["input"],
        "-o",
        out,
        "--tags",
        corpus["tags"],
        "--max-tags",
        "4",
        "--tag-threshold",
        "0.0",
        "--captioner",
        "none",
        "--cache-dir",
        cache,
        "--quiet",
    ]
    with LoopbackLLMServer() as server:
        result = rsyn_here("caption", *args, "--llm-backend", "openai", "--llm-url", server.url, text=True)
        assert result.returncode == 0, result.stderr
        assert len(list(cache.glob("tag-embeddings-*.npy"))) == 1  # computed once, then read from the disk cache
        again = rsyn_here(
            "caption",
            *args[:2],
            tmp_path / "again.jsonl",
            *args[3:],
            "--llm-backend",
            "openai",
            "--llm-url",
            server.url,
            text=True,
        )
        assert again.returncode == 0 and len(list(cache.glob("tag-embeddings-*.npy"))) == 1
    records = [r for r in read_stream_file(out) if r["kind"] == "image"]
    assert read_stream_file(tmp_path / "again.jsonl") == read_stream_file(out)
    clip = load_clip(models["clip"], None, "cpu")
    tag_matrix = clip.encode_texts([f"a photo of {t}." for t in TAGS])
    for record in records:
        scores = decode_embeddings([record["emb"]])[0] @ tag_matrix.T
        expected = [TAGS[i] for i in np.argsort(-scores, kind="stable")[:4] if scores[i] >= 0.0]
        assert record["tags"] == expected
        assert record["tag_scores"] == pytest.approx([float(scores[TAGS.index(t)]) for t in expected], abs=1e-4)
        assert "caption" not in record and "caption_model" not in record  # --captioner none
    # the LLM saw no caption line and only the tags above the threshold
    users = sorted(r["body"]["messages"][1]["content"] for r in server.requests)
    assert all("Caption:" not in u and u.startswith("Raw text: Rex the dog") for u in users)
    assert [r["syn_text"] for r in records] == [expected_syn_text(r["texts"][0]["text"], r["tags"]) for r in records]


def test_server_backend_with_captioner_tags_and_a_prompt_file(models, corpus, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Fuse these.\n---\nRaw text: {raw_text}\nCaption: {caption}\nTags: {tags}\n")
    out = tmp_path / "out.jsonl"
    with LoopbackLLMServer(latency=0.05) as server:
        result = rsyn_here(
            "caption",
            corpus["input"],
            "-o",
            out,
            "--tags",
            corpus["tags"],
            "--tag-threshold",
            "-1",
            "--max-tags",
            "3",
            "--captioner",
            models["captioner"],
            "--caption-beams",
            "1",
            "--path-root",
            corpus["root"],
            "--llm-backend",
            "openai",
            "--llm-url",
            server.url,
            "--llm-model",
            "served-model",
            "--llm-concurrency",
            "4",
            "--prompt-file",
            prompt_file,
            "--cache-dir",
            tmp_path,
            "--quiet",
            text=True,
        )
    assert result.returncode == 0, result.stderr
    records = read_stream_file(out)
    assert_captioned(records, corpus, models["captioner"], "served-model")
    images = [r for r in records if r["kind"] == "image"]
    assert [r["syn_text"] for r in images] == [expected_syn_text(r["texts"][0]["text"], r["tags"]) for r in images]
    assert {r["body"]["messages"][0]["content"] for r in server.requests} == {"Fuse these."}
    assert server.max_in_flight > 1
    by_raw = {r["body"]["messages"][1]["content"].splitlines()[0]: r["body"] for r in server.requests}
    for record in images:
        body = by_raw[f"Raw text: {record['texts'][0]['text']}"]
        assert body["messages"][1]["content"].splitlines()[1:] == [
            f"Caption: {record['caption']}",
            f"Tags: {', '.join(record['tags'])}",
        ]
        assert body["model"] == "served-model"


def _faulty_input(corpus, tmp_path):
    """Images on file lines 2, 4 and 5 ask the loopback server for a fault; the one on line 8 has no retrieved text."""
    records = [dict(r) for r in corpus["records"]]
    faults = {1: "[500]", 3: "[malformed]", 4: "[empty]"}
    for index, marker in faults.items():
        records[index] = {**records[index], "texts": [{"id": "x", "text": f"A photo {marker} of a dog.", "score": 0.3}]}
    records[7] = {**records[7], "texts": []}
    path = tmp_path / "faulty.jsonl"
    path.write_bytes(jsonl(records))
    return path, records


def test_server_faults_are_per_record_errors_under_the_shared_rules(corpus, tmp_path):
    path, records = _faulty_input(corpus, tmp_path)
    # one request at a time in batches of 4 images: two batches are in flight at once, output order must hold
    light = [
        "--max-tags",
        "0",
        "--captioner",
        "none",
        "--llm-backend",
        "openai",
        "--llm-retries",
        "1",
        "--llm-timeout",
        "5",
        "--llm-concurrency",
        "1",
        "--batch-size",
        "1",
    ]
    with LoopbackLLMServer() as server:
        only_500 = tmp_path / "only500.jsonl"
        only_500.write_bytes(jsonl(records[:3]))
        proc = rsyn("caption", only_500, *light, "--llm-url", server.url)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "Traceback" not in err
        assert (
            err.strip()
            .splitlines()[-1]
            .startswith(f"rsyn: error: {only_500}:2: LLM openai:loopback-llm failed: http_500")
        )
        out, rejects, stats = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl", tmp_path / "stats.json"
        proc = rsyn(
            "caption",
            path,
            *light,
            "--llm-url",
            server.url,
            "--on-error",
            "skip",
            "-o",
            out,
            "--rejects",
            rejects,
            "--stats",
            stats,
        )
        assert proc.returncode == 0, proc.stderr.decode()
    summary = orjson.loads(stats.read_bytes())
    assert summary["errors"] == {"llm_failed": 2, "empty_generation": 1, "missing_texts": 1}
    kept = read_stream_file(out)
    assert [r["id"] for r in kept] == [r["id"] for i, r in enumerate(records) if i not in (1, 3, 4, 7)]
    assert all(r["syn_text"] for r in kept if r["kind"] == "image")
    logged = {entry["where"]: entry for entry in read_stream_file(rejects)}
    assert sorted(logged) == [f"{path}:{n}" for n in (2, 4, 5, 8)]
    assert logged[f"{path}:4"]["reason"] == "llm_failed" and "malformed" in logged[f"{path}:4"]["message"]
    assert logged[f"{path}:5"]["reason"] == "empty_generation"
    assert logged[f"{path}:8"]["reason"] == "missing_texts" and logged[f"{path}:8"]["record"] == records[7]


def test_unreachable_server_and_missing_vocabulary_stop_with_one_line(corpus, tmp_path):
    with LoopbackLLMServer() as server:
        url = server.url  # closed when the block ends: nothing listens there any more
    proc = rsyn(
        "caption",
        corpus["input"],
        "--max-tags",
        "0",
        "--captioner",
        "none",
        "--llm-backend",
        "openai",
        "--llm-url",
        url,
        "--llm-model",
        "m",
        "--llm-retries",
        "1",
        "--on-error",
        "skip",
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "cannot connect" in err and "Traceback" not in err
    assert not [line for line in err.splitlines() if line.startswith("rsyn: error:")][1:]
    proc = rsyn("caption", corpus["input"], "--captioner", "none", "--llm-backend", "openai", "--llm-url", url)
    assert proc.returncode == 2 and "no tag vocabulary: give --tags FILE" in proc.stderr.decode()


def test_empty_generation_and_bad_images_fail_per_record(models, corpus, tmp_path):
    records = [dict(r) for r in corpus["records"]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records[0] = {**records[0], "path": str(broken)}
    records[3] = {**records[3], "path": str(tmp_path / "missing.png")}
    del records[5]["path"]
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(records))
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    args = local_args(models, corpus, out, "--stats", stats, "--quiet", "--no-fetch")
    args[0] = path
    with LoopbackLLMServer() as server:
        served = [*args, "--llm-backend", "openai", "--llm-url", server.url]
        result = rsyn_here("caption", *served, text=True)
        # records are checked first, images read after: the record without any image source fails first
        assert result.returncode == 2 and f"{path}:6: image record has no image for the captioner" in result.stderr
        result = rsyn_here("caption", *served, "--on-error", "skip", "--rejects", tmp_path / "rejects.jsonl", text=True)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(stats.read_bytes())["errors"] == {"bad_image": 2, "missing_image": 1}
    logged = {e["where"]: e["message"] for e in read_stream_file(tmp_path / "rejects.jsonl")}
    assert logged[f"{path}:1"].startswith(f"cannot read image {str(broken)!r}: decode_failed")
    assert logged[f"{path}:4"] == f"cannot read image {records[3]['path']!r}: fetch_failed: fetching is switched off"
    mute = [*args, "--on-error", "skip"]
    mute[mute.index(models["gpt2"])] = models["mute_gpt2"]
    result = rsyn_here("caption", *mute, text=True)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(stats.read_bytes())["errors"] == {"bad_image": 2, "missing_image": 1, "empty_generation": 3}
    assert [r["kind"] for r in read_stream_file(out)] == ["text", "text"]  # no image record without a syn_text


def _sentence_store(path, sentences):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sentences(row INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, doc TEXT)")
    db.executemany(
        "INSERT INTO sentences(row, id, text, doc) VALUES (?, ?, ?, ?)",
        [(i, f"s{i}", text, "d") for i, text in enumerate(sentences)],
    )
    db.commit()
    db.close()


def test_tags_mined_from_the_index_sentence_store(models, corpus, tmp_path):
    from rsyn.tags import mine_tags

    index = tmp_path / "index"
    index.mkdir()
    sentences = (
        ["The two red cars were parked near the old lighthouse."] * 4
        + ["A red car drives past a wooden lighthouse at night."] * 3
        + ["Our chef cooks fresh pasta in the kitchen."] * 3
        + ["She bought it yesterday."] * 5
        + ["A unique zebra crossing."]
    )
    _sentence_store(index / "sentences.sqlite", sentences)
    mined = mine_tags(str(index), n_tags=10, min_count=3, exclude={"kitchen"}, cache_dir=tmp_path / "cache")
    assert mined[:2] == ["red car", "old lighthouse"]  # most frequent first; plural lemmatised
    assert set(mined) == {"red car", "old lighthouse", "wooden lighthouse", "night", "chef", "fresh pasta"}
    assert "kitchen" not in mined and "zebra crossing" not in mined  # excluded; below --mine-min-count
    assert mine_tags(str(index), n_tags=2, min_count=3, cache_dir=tmp_path / "cache") == ["red car", "old lighthouse"]
    sample = mine_tags(str(index), n_tags=50, min_count=1, sample=5, seed=1, cache_dir=tmp_path / "cache")
    assert sample == mine_tags(str(index), n_tags=50, min_count=1, sample=5, seed=1, cache_dir=tmp_path / "none")

    saved, out = tmp_path / "vocabulary.txt", tmp_path / "out.jsonl"
    with LoopbackLLMServer() as server:
        result = rsyn_here(
            "caption",
            corpus["input"],
            "-o",
            out,
            "--tags",
            corpus["tags"],
            "--index",
            index,
            "--mine-min-count",
            "3",
            "--save-tags",
            saved,
            "--tag-threshold",
            "-1",
            "--max-tags",
            "20",
            "--captioner",
            "none",
            "--llm-backend",
            "openai",
            "--llm-url",
            server.url,
            "--cache-dir",
            tmp_path / "cache",
            "--quiet",
            text=True,
        )
    assert result.returncode == 0, result.stderr
    vocabulary = saved.read_text().splitlines()
    assert vocabulary[: len(TAGS)] == TAGS and "red car" in vocabulary and "old lighthouse" in vocabulary
    assert len(vocabulary) == len(set(vocabulary)) == len(TAGS) + 6  # "red car" was given already
    tagged = {t for r in read_stream_file(out) for t in r.get("tags", [])}
    assert tagged == set(vocabulary)  # with no threshold and room for all, every tag scores


def test_missing_sentence_store_is_one_line(corpus, tmp_path):
    proc = rsyn("caption", corpus["input"], "--index", tmp_path, "--captioner", "none")
    assert proc.returncode == 2 and "no sentence store" in proc.stderr.decode()


def test_images_found_by_url_in_an_img2dataset_folder(models, corpus, tmp_path):
    """Records without `path` (as the example pipeline has them): the captioner reads the image by URL from
    an img2dataset folder (SHARD/KEY.jpg beside SHARD/KEY.json)."""
    import shutil as sh

    folder = tmp_path / "images" / "00000"
    folder.mkdir(parents=True)
    records = []
    for i, record in enumerate(corpus["records"]):
        record = dict(record)
        if record["kind"] == "image":
            sh.copy(record.pop("path"), folder / f"{i:09d}.png")
            (folder / f"{i:09d}.json").write_bytes(orjson.dumps({"url": record["url"], "key": f"{i:09d}"}))
        records.append(record)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(jsonl(records))
    with LoopbackLLMServer() as server:
        result = rsyn_here(
            "caption",
            source,
            "-o",
            out,
            "--images",
            tmp_path / "images",
            "--max-tags",
            "0",
            "--captioner",
            models["captioner"],
            "--caption-beams",
            "1",
            "--llm-backend",
            "openai",
            "--llm-url",
            server.url,
            "--quiet",
            text=True,
        )
    assert result.returncode == 0, result.stderr
    captioned = [r for r in read_stream_file(out) if r["kind"] == "image"]
    assert len(captioned) == N_IMAGES and all(r["caption"] and r["syn_text"] for r in captioned)
    assert all("path" not in r for r in captioned)


def test_tag_embedding_cache_notices_other_weights_under_the_same_name(tmp_path):
    import rsyn.models.clip as clip_models
    from rsyn.models.clip import load_clip
    from rsyn.tags import tag_embeddings
    from rsyn.testing import build_tiny_clip

    spec = build_tiny_clip(tmp_path / "clip", seed=0)
    first = tag_embeddings(["dog", "red car"], load_clip(spec, None, "cpu"), "a photo of {}.", tmp_path / "cache")
    build_tiny_clip(tmp_path / "clip", seed=1)  # the same spec, other weights
    clip_models._CACHE.pop((spec, "cpu", "fp32"), None)
    clip = load_clip(spec, None, "cpu")
    second = tag_embeddings(["dog", "red car"], clip, "a photo of {}.", tmp_path / "cache")
    assert not np.allclose(first, second)
    assert np.allclose(second, clip.encode_texts(["a photo of dog.", "a photo of red car."]), atol=1e-5)
