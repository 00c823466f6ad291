"""The text style of the published RealSyn release, for `rsyn pack --text-style release`.

The released parquet's texts are lowercased; text1..text3 (the retrieved real sentences) are also split into
space-separated Penn Treebank tokens ("it 's just epcot now )"), while syn_text (the synthetic caption) keeps
normal punctuation. `original` (the default) writes the texts as they are.

Penn Treebank tokenization, as the rules below implement it (no library here: nltk and sacremoses are not
dependencies of rsyn):

- double quotes become `` (opening: at the start, after a space or an opening bracket) and '' (any other);
  curly quotes “ ” ‘ ’ are read as their ASCII forms first;
- clitics are split from their word: 's 'm 'd 're 've 'll n't ("don't" -> "do n't", "can't" -> "ca n't",
  "it's" -> "it 's"), and cannot / gonna / gotta / wanna become "can not", "gon na", "got ta", "wan na";
- brackets ( ) [ ] { } < >, ? ! ; @ # $ % & and "--" and "..." are tokens of their own; a comma or colon is one
  unless it stands between two digits ("1,000", "10:30");
- a final period (before any closing brackets and quotes) is a token; inner periods stay ("u.s.", "3.5");
- a single quote that ends a word ("dogs'") or opens one ("'hello") is a token (` when it opens).
"""

from __future__ import annotations

import re
from enum import Enum


class TextStyle(str, Enum):
    original = "original"
    release = "release"


STYLES = tuple(style.value for style in TextStyle)

_CURLY = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})

# Each (pattern, replacement) runs in order on the lowercased text; spaces are squeezed at the end.
_RULES = [
    # opening double quotes, then every other double quote closes
    (re.compile(r'(^|[\s(\[{<])"'), r"\1 `` "),
    (re.compile(r'"'), " '' "),
    # ellipsis and dashes before the single-character punctuation
    (re.compile(r"\.\.\.|\u2026"), " ... "),
    (re.compile(r"--"), " -- "),
    (re.compile(r"[?!;@#$%&()\[\]{}<>]"), r" \g<0> "),
    (re.compile(r"(?<!\d)[,:]|[,:](?!\d)"), r" \g<0> "),
    # the sentence-final period, before whatever closing brackets or quotes follow it
    (re.compile(r"(?<!\.)\.(\s*(?:[)\]}>]|''|\s)*)$"), r" . \1"),
    # a single quote opening a word (`), before the clitics make "'s" start a token
    (re.compile(r"(^|\s)'(?=\w)"), r"\1` "),
    # clitics: the word keeps its stem ("do n't", "we 'll")
    (re.compile(r"(?<=\w)(n't|'s|'m|'d|'re|'ve|'ll)\b"), r" \1"),
    (re.compile(r"\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"\b(gon|got|wan)(na|ta)\b"), r"\1 \2"),
    # a single quote closing a word ("dogs'")
    (re.compile(r"(?<=\w)'(?=\s|$)"), " ' "),
]
_SPACES = re.compile(r"\s+")


def ptb_tokens(text: str) -> str:
    """The lowercased Penn Treebank tokens of a sentence, joined by single spaces."""
    text = text.translate(_CURLY).lower()
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return _SPACES.sub(" ", text).strip()


def apply_text_style(row: dict, style: str) -> dict:
    """A release row (raw_image_url, text1..3, syn_text, ...) in `style`: original (as is) or release."""
    if style == "original":
        return row
    if style != "release":
        raise ValueError(f"unknown text style {style!r}: expected one of {', '.join(STYLES)}")
    for column in ("text1", "text2", "text3"):
        if row.get(column) is not None:
            row[column] = ptb_tokens(row[column])
    if row.get("syn_text") is not None:
        row["syn_text"] = row["syn_text"].lower()
    return row
