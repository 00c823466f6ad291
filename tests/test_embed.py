"""`rsyn embed` and the CLIP loader, with a tiny random-weight open_clip model loaded by path."""

import subprocess
import sys

import numpy as np
import pytest

from rsyn.command import RsynError
from rsyn.models.clip import build_tiny_clip, load_clip, model_spec


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


def test_tiny_clip_loads_by_its_spec_and_gives_unit_rows(tiny_clip):
    from PIL import Image

    clip = load_clip(tiny_clip, None, "cpu")
    assert clip.name == tiny_clip and clip.dim == 32
    texts = clip.encode_texts(["a dog on a beach", "a red car", ""])
    assert texts.dtype == np.float32 and texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    images = clip.encode_images([Image.new("RGB", (64, 40), (200, 30, 30)), Image.new("RGB", (40, 64), "blue")])
    assert images.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert load_clip(clip.name, None, "cpu") is clip  # cached per process


def test_tiny_clip_is_seeded_and_reloads_in_a_fresh_process(tiny_clip, tmp_path):
    again = build_tiny_clip(tmp_path / "again", seed=0)
    assert (tmp_path / "again" / "open_clip_pytorch_model.bin").exists()
    here = load_clip(again, None, "cpu").encode_texts(["a photo of a cat"])
    code = ("import sys, numpy as np; from rsyn.models.clip import load_clip; "
            f"np.save(sys.argv[1], load_clip({again!r}, None, 'cpu').encode_texts(['a photo of a cat']))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), here)
    other = load_clip(build_tiny_clip(tmp_path / "other", seed=1), None, "cpu").encode_texts(["a photo of a cat"])
    assert not np.allclose(other, here)


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
