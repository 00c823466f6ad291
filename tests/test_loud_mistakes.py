"""Mistakes that used to run and exit 0 (or spend a minute on retries) are loud: usage errors, warnings, one line."""

import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jsonl, rsyn, rsyn_here

RECORDS = [{"id": "i1", "kind": "image", "url": "http://x/1.jpg"}, {"id": "t1", "kind": "text", "text": "a b c"}]


@pytest.mark.parametrize(
    "args", [("cat", "--kind", "images"), ("embed", "--kinds", "images"), ("embed", "--kinds", "image,txt")]
)
def test_unknown_kind_is_a_usage_error(args):
    proc = rsyn_here(*args, input=jsonl(RECORDS))
    assert proc.returncode == 2
    assert "Invalid value for '--kind" in proc.stderr.decode() and proc.stdout == b""


def test_known_kinds_still_work():
    proc = rsyn_here("cat", "--kind", "text", "--plain", input=jsonl(RECORDS), check=True)
    assert b'"id":"t1"' in proc.stdout and b'"id":"i1"' not in proc.stdout


def test_cuda_asked_of_a_command_that_uses_no_gpu_draws_a_warning():
    proc = rsyn_here("cat", "--device", "cuda", input=jsonl(RECORDS), check=True)
    assert "warning: --device cuda was given, but this run used no GPU" in proc.stderr.decode()
    quiet = rsyn_here("cat", input=jsonl(RECORDS), check=True)
    assert "warning" not in quiet.stderr.decode()


def test_hub_model_missing_offline_fails_at_once_with_one_line(tmp_path):
    docs = tmp_path / "docs.parquet"
    pq.write_table(
        pa.table(
            {
                "texts": [["A cat sits on the red mat near the old door today."]],
                "images": [[None]],
                "url": ["http://example.org/doc"],
            }
        ),
        docs,
    )
    proc = rsyn(
        "extract",
        docs,
        "--ppl-model",
        "gpt2-large",
        "-o",
        tmp_path / "out.jsonl.zst",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2
    assert (
        err[-1].startswith(
            "rsyn: error: perplexity filter: cannot load causal LM 'gpt2-large' (Hugging Face "
            "id): not in the Hugging Face cache"
        )
        and "HF_HUB_OFFLINE" in err[-1]
    )
    assert not any("Traceback" in line or "etry" in line for line in err)  # no retries, no traceback
    assert not (tmp_path / "out.jsonl.zst").exists()


def test_unreachable_hub_fails_without_retries(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from rsyn.errors import RsynError
    from rsyn.models.hub import require_hub_model

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    expected = r"captioner 'org/model' \(Hugging Face id\): not in the Hugging Face cache .* cannot be reached"
    with pytest.raises(RsynError, match=expected + r" \(Connection refused\)"):
        require_hub_model("org/model", "captioner", "pass a folder")
    # a cached model is never checked against the network
    snapshot = tmp_path / "models--org--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--model" / "refs").mkdir()
    (tmp_path / "models--org--model" / "refs" / "main").write_text("abc")
    require_hub_model("org/model", "captioner", "pass a folder")
    require_hub_model(str(tmp_path), "captioner", "pass a folder")  # a local folder: nothing to check
