"""Causal LM loading and perplexity with a tiny GPT-2 built locally (random weights, local BPE tokenizer)."""

import math

import numpy as np
import pytest

from rsyn.errors import RsynError
from rsyn.models.lm import load_causal_lm, perplexities
from rsyn.testing import build_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("lm") / "tiny-gpt2", seed=0)


def test_tiny_gpt2_loads_by_path_with_a_pad_token(tiny_gpt2):
    model, tokenizer = load_causal_lm(tiny_gpt2, "cpu")
    assert tokenizer.pad_token is not None
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    assert load_causal_lm(tiny_gpt2, "cpu")[0] is model  # cached per process


def test_batched_perplexities_match_one_at_a_time_in_input_order(tiny_gpt2):
    model, tokenizer = load_causal_lm(tiny_gpt2, "cpu")
    texts = [
        "A dog runs.",
        "",
        "The chef cooks pasta in a large kitchen with friends.",
        "x",
        "A dog runs.",
        "Snow covers the mountains " * 60,
    ]  # longer than the 128-token context: cut, not an error
    batched = perplexities(texts, model, tokenizer, batch_size=2)
    single = np.array([perplexities([t], model, tokenizer)[0] for t in texts])
    assert math.isnan(batched[1]) and math.isnan(single[1])  # no tokens, no perplexity
    ok = ~np.isnan(single)
    np.testing.assert_allclose(batched[ok], single[ok], rtol=1e-4)
    assert batched[0] == pytest.approx(batched[4])
    assert np.all(batched[ok] > 1)


def test_same_seed_same_model(tmp_path):
    a = load_causal_lm(build_tiny_gpt2(tmp_path / "a", seed=3), "cpu")
    b = load_causal_lm(build_tiny_gpt2(tmp_path / "b", seed=3), "cpu")
    text = ["Two children are playing with a red ball."]
    assert perplexities(text, *a)[0] == perplexities(text, *b)[0]


def test_missing_model_is_one_clear_line(tmp_path):
    with pytest.raises(RsynError) as info:
        load_causal_lm(str(tmp_path / "no-such-model"), "cpu")
    assert "\n" not in str(info.value) and "local model directory" in str(info.value)
    with pytest.raises(RsynError, match="cannot load causal LM 'gpt2-large'"):
        load_causal_lm("gpt2-large", "cpu")
