"""CLIP's BPE tokenizer (open_clip's SimpleTokenizer), the same token ids for less work per text.

With a small text tower, tokenizing costs more than the model: open_clip's tokenizer runs ftfy on
every text, re-encodes every word to bytes and looks its BPE up again, and builds each row with
its own torch.tensor. Here, for the tokenizers where it provably changes nothing:

- a text of plain printable ASCII without '&' is left unchanged by ftfy.fix_text and
  html.unescape (both only act on non-ASCII characters, control characters, line-break
  variants and HTML entities), so it skips them; every other text goes through open_clip's own
  cleaning function;
- the ids of each word (byte encoding, BPE, vocabulary lookup: a pure function of the word) are
  remembered, in a bounded cache;
- the (n, context) matrix is filled in numpy and handed to torch without a copy.

tests/test_embed.py checks the ids against open_clip's on real captions and on generated texts.
"""

from __future__ import annotations

import re

import numpy as np

_PLAIN = re.compile(r"[\t\n\x20-\x25\x27-\x7e]*")  # printable ASCII, tab and newline, no '&'
MAX_CACHED_WORDS = 1_000_000


class FastClipTokenizer:
    """Calls like open_clip's SimpleTokenizer (texts -> LongTensor (n, context_length)), same ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.context_length = tokenizer.context_length
        self._words: dict[str, list[int]] = {}

    @staticmethod
    def applies(tokenizer) -> bool:
        """True for a plain open_clip SimpleTokenizer with the 'lower' cleaning and no reduction."""
        try:
            from open_clip import tokenizer as oct
        except ImportError:
            return False
        return (
            type(tokenizer) is oct.SimpleTokenizer
            and tokenizer.clean_fn is oct._clean_lower
            and getattr(tokenizer, "reduction_fn", None) is None
            and bool(tokenizer.context_length)
        )

    def clean(self, text: str) -> str:
        if _PLAIN.fullmatch(text):
            return " ".join(text.split()).lower()  # what _clean_lower gives when ftfy and html change nothing
        return self.tokenizer.clean_fn(text)

    def encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        words = self._words
        ids: list[int] = []
        for word in tok.pat.findall(self.clean(text)):
            found = words.get(word)
            if found is None:
                byte_encoder, encoder = tok.byte_encoder, tok.encoder
                found = [
                    encoder[piece]
                    for piece in tok.bpe("".join(byte_encoder[b] for b in word.encode("utf-8"))).split(" ")
                ]
                if len(words) >= MAX_CACHED_WORDS:
                    words.clear()
                words[word] = found
            ids.extend(found)
        return ids

    def __call__(self, texts):
        import torch

        if isinstance(texts, str):
            texts = [texts]
        tok = self.tokenizer
        length = self.context_length
        sot, eot = tok.sot_token_id, tok.eot_token_id
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [sot, *self.encode(text), eot]
            if len(ids) > length:  # truncated, still ending with the end-of-text token (as open_clip)
                ids = ids[:length]
                ids[-1] = eot
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)
