import base64
import hashlib
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsyn.records import (
    content_id,
    decode_embedding,
    decode_embeddings,
    encode_embedding,
    encode_embeddings,
    image_id,
    stable_hash,
    text_id,
)

# Ids are written into records and compared across processes, machines and releases: pinned here, computed once.
PINNED_IDS = {
    ("image", "http://x/a.jpg"): "6ab2144dd392d09b7fc7",
    ("text", "a dog runs."): "a9488fe2b2611541bd91",
    ("text", "a cat runs."): "2254b6fc06c909360c14",
    ("text", "x"): "a8c0085d4484bade6b78",
}


def test_ids_are_pinned_and_depend_on_content_only():
    assert image_id("http://x/a.jpg") == image_id("  http://x/a.jpg \n") == "6ab2144dd392d09b7fc7"
    assert text_id("A dog  runs.") == text_id("a dog runs.") == "a9488fe2b2611541bd91"
    assert text_id("A cat runs.") == "2254b6fc06c909360c14"
    assert text_id("x") == "a8c0085d4484bade6b78"
    assert image_id("http://x/a.jpg") != text_id("http://x/a.jpg")
    assert content_id("a", "bc") == "2236f8c15ce961403a6f" and content_id("ab", "c") == "cd3480aa3c2183690fa6"
    # the pinned values are the contract's recipe: 10-byte blake2b of the UTF-8 parts, each followed by 0x1f
    for parts, expected in PINNED_IDS.items():
        recipe = hashlib.blake2b(b"".join(p.encode() + b"\x1f" for p in parts), digest_size=10).hexdigest()
        assert content_id(*parts) == recipe == expected


def test_stable_hash_is_crc32_whatever_the_process_salt():
    assert stable_hash("a dog runs") == 55550771 == zlib.crc32(b"a dog runs")
    code = "from rsyn.records import stable_hash, text_id; print(stable_hash('a dog runs'), text_id('x'))"
    for salt in ("1", "2"):  # Python's own hash() differs between these two processes; ours must not
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
        assert out.split() == ["55550771", "a8c0085d4484bade6b78"]


def test_embedding_codec_is_unit_norm_little_endian_f16_base64():
    v = np.array([3.0, 4.0, 0.0, 0.0], dtype=np.float32)
    s = encode_embedding(v)
    raw = base64.b64decode(s, validate=True)
    assert len(raw) == 8
    halves = np.frombuffer(raw, dtype="<f2")
    assert halves.tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0], abs=1e-3)
    np.testing.assert_allclose(decode_embedding(s), [0.6, 0.8, 0, 0], atol=1e-3)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(1, 600), st.integers(0, 2**32 - 1))
def test_embedding_round_trip(n, dim, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, dim)).astype(np.float32)
    back = decode_embeddings(encode_embeddings(m))
    assert back.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1.0, atol=2e-3)
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    np.testing.assert_allclose(back, unit, atol=2e-3)


def test_bad_embeddings_are_refused():
    with pytest.raises(ValueError):
        encode_embedding(np.zeros(4))
    with pytest.raises(ValueError):
        decode_embeddings(["not base64!!"])
    with pytest.raises(ValueError):
        decode_embeddings([encode_embedding(np.ones(4)), encode_embedding(np.ones(6))])
    with pytest.raises(ValueError):
        decode_embeddings([encode_embedding(np.ones(4))], dim=8)
