"""Fault injection over HTTP: `rsyn embed` and `rsyn caption`, with the tiny models, against loopback servers that
answer 404/500, reset, loop redirects, drip headers or bodies, send huge bodies, or (LLM) garbage JSON, wrong
types and bad Retry-After headers.

Every run must end without a traceback, within the stated deadlines plus a margin, and account for every
input record: in = out + dropped + errors (--stats). A run whose records mostly fail stops with exit 2.
Commands run in this process (the models load once); any exception other than the CLI's exit fails the test.
"""

import time

import faults
import orjson
import pytest
from conftest import jsonl, read_stream_file, rsyn_here
from test_images import ImageServer, jpeg_bytes
from test_llm import LoopbackLLMServer

DEADLINE = 1.5  # --deadline of the image downloads, and --llm-timeout
MARGIN = 3.0  # a loaded 2-core machine, thread start-up, one model batch
NET = ["--timeout", "0.5", "--deadline", str(DEADLINE), "--retries", "1", "--max-bytes", "1000000"]


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    for i in range(3):
        s.files[f"/img/ok{i}.jpg"] = jpeg_bytes(160 + 10 * i, 120)
    yield s
    s.close()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    import torch

    from rsyn.testing import build_tiny_captioner, build_tiny_clip

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    return {"clip": build_tiny_clip(root / "clip"), "captioner": build_tiny_captioner(root / "blip")}


# what each fault becomes: the drop (embed) or error (caption) reason
IMAGE_FAULTS = {
    "/status/404": "http_404",
    "/status/500": "http_500",
    "/reset": "fetch_failed",
    "/loop": "too_many_redirects",
    "/drip-headers": "fetch_timeout",
    "/drip": "fetch_timeout",
    "/slow": "fetch_timeout",
    "/huge": "too_large",
    "/huge-chunked": "too_large",
    "/garbage": "not_an_image",
    "/truncated": "decode_failed",
}


def _image(i, url, **fields):
    return {"id": f"img{i:03d}", "kind": "image", "doc": "d1", "pos": i, "url": url, **fields}


def _run(tmp_path, *args):
    stats = tmp_path / "stats.json"
    start = time.perf_counter()
    proc = rsyn_here(*args, "--stats", stats)
    seconds = time.perf_counter() - start
    err = proc.stderr.decode()
    assert "Traceback" not in err
    summary = orjson.loads(stats.read_bytes()) if proc.returncode == 0 else None
    return proc, err, summary, seconds


def _accounted(summary):
    return summary["in"] == summary["out"] + sum(summary["dropped"].values()) + sum(summary["errors"].values())


def test_embed_through_http_faults(server, tiny_models, tmp_path):
    records = [_image(i, server.url(f"/img/ok{i}.jpg")) for i in range(3)]
    records += [_image(10 + i, server.url(path)) for i, path in enumerate(IMAGE_FAULTS)]
    records += [{"id": "txt1", "kind": "text", "doc": "d1", "pos": 99, "text": "A red kite over the dunes."}]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl"
    proc, err, summary, _ = _run(
        tmp_path,
        "embed",
        source,
        "-o",
        out,
        "--model",
        tiny_models["clip"],
        "--image-workers",
        "16",
        "--allow-private-urls",
        *NET,
    )
    assert proc.returncode == 0, err
    assert summary["dropped"] == {
        reason: list(IMAGE_FAULTS.values()).count(reason) for reason in set(IMAGE_FAULTS.values())
    }
    assert summary["out"] == 4 and summary["errors"] == {} and _accounted(summary)
    # the downloads run side by side: the whole stage waits about one deadline (a retry included), no more
    assert summary["stage"]["embed_seconds"] < DEADLINE + MARGIN, summary["stage"]
    assert [r["id"] for r in read_stream_file(out)] == ["img000", "img001", "img002", "txt1"]

    # the same records by default: every loopback URL is refused, before any connect
    hits = sum(server.hits.values())
    proc, err, summary, seconds = _run(tmp_path, "embed", source, "-o", out, "--model", tiny_models["clip"], *NET)
    assert proc.returncode == 0, err
    assert summary["dropped"] == {"private_address": len(records) - 1} and _accounted(summary)
    assert sum(server.hits.values()) == hits


def test_embed_stops_when_most_images_fail(server, tiny_models, tmp_path):
    records = [_image(i, server.url("/img/ok0.jpg" if i % 4 == 0 else "/status/404")) for i in range(120)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl"
    args = ["embed", source, "-o", out, "--model", tiny_models["clip"], "--allow-private-urls", *NET]
    proc, err, _, _ = _run(tmp_path, *args)
    assert proc.returncode == 2 and not out.exists()
    assert err.strip().splitlines()[-1] == (
        "rsyn: error: 90 of 120 images failed (75%), more than --max-error-rate 0.5 allows; most often http_404 90"
    )
    proc, err, summary, _ = _run(tmp_path, *args, "--max-error-rate", "0.8")
    assert proc.returncode == 0 and summary["dropped"] == {"http_404": 90} and summary["out"] == 30
    # what img2dataset could not download failed before this run: not counted
    from test_images import write_img2dataset_tar

    write_img2dataset_tar(
        tmp_path / "images", 0, [], with_parquet=True, failed=[(r["url"], "HTTP Error 404") for r in records]
    )
    proc, err, summary, _ = _run(tmp_path, *args, "--images", tmp_path / "images")
    assert proc.returncode == 0 and summary["dropped"] == {"not_downloaded": 120}


# --------------------------------------------------------------------------- caption: images and the LLM server


def _captionable(i, url):
    return _image(i, url, texts=[{"id": f"t{i}", "text": f"A brown dog runs on the beach, day {i}.", "score": 0.3}])


LIGHT = [
    "--max-tags",
    "0",
    "--captioner",
    "none",
    "--llm-backend",
    "openai",
    "--llm-model",
    "m",
    "--llm-timeout",
    str(DEADLINE),
    "--llm-retries",
    "1",
    "--on-error",
    "skip",
    "--device",
    "cpu",
]


def test_caption_fetches_images_through_http_faults(server, tiny_models, tmp_path):
    records = [_captionable(i, server.url(f"/img/ok{i}.jpg")) for i in range(3)]
    records += [_captionable(10 + i, server.url(path)) for i, path in enumerate(IMAGE_FAULTS)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl"
    light = [a for a in LIGHT if a not in ("--captioner", "none")]
    with LoopbackLLMServer() as llm:
        proc, err, summary, seconds = _run(
            tmp_path,
            "caption",
            source,
            "-o",
            out,
            *light,
            "--llm-url",
            llm.url,
            "--captioner",
            tiny_models["captioner"],
            "--caption-beams",
            "1",
            "--image-workers",
            "16",
            "--allow-private-urls",
            *NET,
            "--rejects",
            tmp_path / "rejects.jsonl",
        )
    assert proc.returncode == 0, err
    assert summary["errors"] == {"bad_image": len(IMAGE_FAULTS)} and summary["out"] == 3 and _accounted(summary)
    assert summary["stage"]["seconds"]["caption"] < DEADLINE + MARGIN, summary["stage"]
    messages = {e["record"]["url"]: e["message"] for e in read_stream_file(tmp_path / "rejects.jsonl")}
    for path, reason in IMAGE_FAULTS.items():
        assert f": {reason}" in messages[server.url(path)], messages[server.url(path)]


def _chat(content, **extra):
    return orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}], **extra})


def _send(body, status=200, headers=()):
    return lambda h, n: h._send(status, body, headers)


LLM_FAULTS = {
    "garbage JSON": (_send(b'{"choices": [{"mess'), "llm_failed"),
    "not an object": (_send(b'["A dog."]'), "llm_failed"),
    "content of the wrong type": (_send(_chat({"text": 5})), "llm_failed"),
    "usage of the wrong type": (_send(_chat("A dog runs.", usage={"completion_tokens": "many"})), None),
    "429 with a garbage Retry-After": (_send(b"{}", 429, [("Retry-After", "inf")]), "llm_failed"),
    "500": (_send(b"{}", 500), "llm_failed"),
    "reset": (lambda h, n: faults.reset(h), "llm_failed"),
    "dripping headers": (lambda h, n: faults.drip_headers(h, every=0.2, limit_s=6), "llm_failed"),
    "dripping body": (lambda h, n: faults.drip_body(h, every=0.2, limit_s=6), "llm_failed"),
    "huge reply": (lambda h, n: faults.stream_huge(h, content_type="application/json"), "llm_failed"),
    "empty reply": (_send(_chat("")), "empty_generation"),
}


@pytest.mark.parametrize("fault", list(LLM_FAULTS))
def test_caption_through_llm_server_faults(fault, tmp_path):
    answer, reason = LLM_FAULTS[fault]
    records = [_captionable(i, f"https://example.com/{i}.jpg") for i in range(4)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl"
    with LoopbackLLMServer(fault=answer) as llm:
        proc, err, summary, seconds = _run(
            tmp_path, "caption", source, "-o", out, *LIGHT, "--llm-url", llm.url, "--llm-max-reply-bytes", "65536"
        )
    assert proc.returncode == 0, err
    assert summary["errors"] == ({reason: 4} if reason else {}) and _accounted(summary)
    # two attempts of one --llm-timeout each, a backoff of at most 1 s between them, all requests side by side
    assert summary["stage"]["seconds"]["llm"] < 2 * DEADLINE + 1 + MARGIN, summary["stage"]
    if reason is None:
        assert [r["syn_text"] for r in read_stream_file(out)] == ["A dog runs."] * 4


def test_caption_stops_when_most_llm_calls_fail(tmp_path):
    records = [_captionable(i, f"https://example.com/{i}.jpg") for i in range(150)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(records))
    out = tmp_path / "out.jsonl"
    with LoopbackLLMServer(mode="500") as llm:
        proc, err, _, _ = _run(
            tmp_path,
            "caption",
            source,
            "-o",
            out,
            *LIGHT,
            "--llm-url",
            llm.url,
            "--llm-retries",
            "0",
            "--batch-size",
            "16",
            "--llm-concurrency",
            "4",
        )
    assert proc.returncode == 2 and not out.exists()
    # checked after each batch of 4 x 4 records, once at least 100 were seen
    assert err.strip().splitlines()[-1] == (
        "rsyn: error: 112 of 112 LLM generations failed (100%), more than "
        "--max-error-rate 0.5 allows; most often llm_failed 112"
    )
