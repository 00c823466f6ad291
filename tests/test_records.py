import base64

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
    text_id,
)


def test_ids_depend_on_content_only():
    assert text_id("A dog  runs.") == text_id("a dog runs.")
    assert text_id("A dog runs.") != text_id("A cat runs.")
    assert image_id("http://x/a.jpg") == image_id("http://x/a.jpg")
    assert image_id("http://x/a.jpg") != text_id("http://x/a.jpg")
    assert content_id("a", "bc") != content_id("ab", "c")
    assert len(text_id("x")) == 20 and int(text_id("x"), 16) >= 0


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
