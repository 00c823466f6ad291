"""Model identity (rsyn.models.identity): records name a local model by basename + content hash, not by the path
as typed, so relative and absolute paths, symlinks and copies give the same records."""

import os
import shutil

import pytest
from conftest import jsonl, read_stream_file, rsyn_here

from rsyn.models import identity
from rsyn.models.identity import is_local_identity, local_identity, model_identity


def _model_folder(path, weights=b"w" * 1000):
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"layers": 2}')
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_local_identity_is_basename_and_content_hash(tmp_path, monkeypatch):
    model = _model_folder(tmp_path / "models" / "tiny")
    name = model_identity(str(model))
    assert is_local_identity(name) and name.startswith("tiny#")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(model)
    copy = shutil.copytree(model, tmp_path / "elsewhere" / "tiny")
    assert {model_identity(p) for p in ("models/tiny", "./models/../models/tiny", str(copy))} == {name}
    assert model_identity("link") == name  # a symlink is the model it points to
    (model / ".cache").mkdir()  # hidden files (hub download caches, .git) are no part of the model
    (model / ".cache" / "lock").write_text("x")
    assert model_identity(str(model)) == name
    (model / "model.safetensors").write_bytes(b"v" * 1000)  # other weights, same size: another identity
    assert model_identity(str(model)) != name
    for hub in ("Salesforce/blip-image-captioning-base", "gpt2-large", "served-model", ""):
        assert model_identity(hub) == hub and not is_local_identity(hub)


def test_big_files_are_sampled_not_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "FULL_HASH_BYTES", 4 << 20)
    big = tmp_path / "big.bin"
    size = 40 << 20
    with open(big, "wb") as fh:
        fh.truncate(size)  # sparse: 40 MiB of zeros
    before = local_identity(big)
    blocks = identity._blocks(size)
    assert sum(n for _, n in blocks) < 8 << 20 and blocks[0][0] == 0 and blocks[-1] == (size - (1 << 20), 1 << 20)
    with open(big, "r+b") as fh:  # a change inside a sampled block changes the identity
        fh.seek(blocks[len(blocks) // 2][0] + 10)
        fh.write(b"x")
    identity._CACHE.clear()
    assert local_identity(big) != before


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from rsyn.testing import build_tiny_captioner, build_tiny_gpt2

    root = tmp_path_factory.mktemp("identity-models")
    return build_tiny_captioner(root / "blip"), build_tiny_gpt2(root / "gpt2")


def test_caption_records_the_same_models_from_relative_and_absolute_paths(tiny_models, tmp_path, monkeypatch):
    from PIL import Image

    captioner, gpt2 = tiny_models
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "a.png")
    record = {
        "id": "img1",
        "kind": "image",
        "url": "https://example.org/a.png",
        "path": "a.png",
        "texts": [{"id": "t", "text": "Rex the dog plays with a red ball in Brighton, day 0.", "score": 0.3}],
    }
    (tmp_path / "in.jsonl").write_bytes(jsonl([record]))
    os.symlink(os.path.dirname(captioner), tmp_path / "models")
    seen = []
    for i, (cap, llm) in enumerate([(captioner, gpt2), ("models/blip", "models/gpt2")]):
        proc = rsyn_here(
            "caption",
            "in.jsonl",
            "--max-tags",
            "0",
            "--captioner",
            cap,
            "--caption-beams",
            "1",
            "--llm-backend",
            "hf",
            "--llm-model",
            llm,
            "--llm-max-tokens",
            "12",
            "--temperature",
            "0.9",
            "--seed",
            "5",
            "--device",
            "cpu",
            "-o",
            f"out{i}.jsonl",
        )
        assert proc.returncode == 0, proc.stderr.decode()
        out = read_stream_file(tmp_path / f"out{i}.jsonl")[0]
        seen.append((out["caption_model"], out["llm_model"]))
    assert seen[0] == seen[1] and seen[0][0].startswith("blip#") and seen[0][1].startswith("gpt2#")


def test_a_local_identity_is_not_taken_for_a_place_to_load_from():
    from rsyn.errors import RsynError
    from rsyn.models.clip import load_clip

    with pytest.raises(RsynError, match="pass its folder, --model DIR"):
        load_clip("tiny-clip#0123456789abcdef", None, "cpu")
