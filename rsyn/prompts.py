"""The fusion prompt of `rsyn caption`: our default instruction, --prompt-file loading, rendering.

A prompt has two parts: the instruction (what to do) and the inputs of one
image (its best realistic text, its caption, its tags). Chat backends send the
instruction as the system message and the inputs as the user message;
completion backends send both as one text that ends with an answer cue.

A --prompt-file is either
- an instruction only (no placeholder): rsyn appends the inputs as above, or
- a full template that places the inputs itself with the placeholders
  {raw_text}, {caption} and {tags}; a line whose placeholder has no value
  (no caption with --captioner none, no tag above the threshold) is left out.
  Everything before a line `---` is the system message; the rest is the user
  message (and the whole file, without the `---` line, the completion prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_INSTRUCTION = """\
You rewrite image descriptions. You get three views of one web image:
- Raw text: a sentence from a real web page about this image. It holds the real-world facts (names, places, \
products, events, numbers).
- Caption: a short machine-written description of what the image shows. Use it to decide what the main subject \
is and how the description is structured.
- Tags: words for things a tagger saw in the image. Add the ones that agree with the caption and the raw text as \
visual detail; leave out any tag that does not fit.

Write one fluent description of the image, in English, of one to three sentences. Keep the real-world details of \
the raw text. Do not add anything that none of the three views supports. Do not list the inputs one after \
another; merge them into one description. Correct and simplify the grammar. Reply with the description only: no \
title, no label, no quotation marks, no explanation."""

ANSWER_CUE = "Description:"

PLACEHOLDERS = ("{raw_text}", "{caption}", "{tags}")


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt in both shapes: chat messages and a single completion text."""

    system: str
    user: str
    completion: str

    def messages(self) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.user}]


class PromptTemplate:
    """The instruction (default or from a file) and how the inputs of one image are laid out."""

    def __init__(self, text: str = DEFAULT_INSTRUCTION, source: str = "default"):
        self.source = source
        self.is_template = any(p in text for p in PLACEHOLDERS)
        if self.is_template:
            lines = text.strip("\n").split("\n")
            cut = next((i for i, line in enumerate(lines) if line.strip() == "---"), None)
            self.system = "\n".join(lines[:cut]).strip() if cut is not None else ""
            self.body = "\n".join(lines[cut + 1 :] if cut is not None else lines).strip()
        else:
            self.system = text.strip()
            self.body = ""

    @classmethod
    def from_file(cls, path: str | None) -> PromptTemplate:
        if path is None:
            return cls()
        from rsyn.errors import RsynError

        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RsynError(f"--prompt-file {path}: cannot read it: {exc}") from None
        if not text.strip():
            raise RsynError(f"--prompt-file {path}: the file is empty")
        return cls(text, source=str(path))

    def render(self, raw_text: str, caption: str | None, tags: list[str]) -> Prompt:
        values = {"{raw_text}": raw_text.strip(), "{caption}": (caption or "").strip(), "{tags}": ", ".join(tags)}
        if self.is_template:
            user = _fill(self.body, values)
            system = _fill(self.system, values)
            completion = f"{system}\n\n{user}" if system else user
            return Prompt(system=system, user=user, completion=completion)
        lines = [f"Raw text: {values['{raw_text}']}"]
        if values["{caption}"]:
            lines.append(f"Caption: {values['{caption}']}")
        if values["{tags}"]:
            lines.append(f"Tags: {values['{tags}']}")
        user = "\n".join(lines)
        return Prompt(system=self.system, user=user, completion=f"{self.system}\n\n{user}\n{ANSWER_CUE}")


def _fill(text: str, values: dict[str, str]) -> str:
    # str.format would choke on braces that users write in their own prompt, so replace only our placeholders
    out = []
    for line in text.split("\n"):
        if any(key in line and not value for key, value in values.items()):
            continue
        for key, value in values.items():
            line = line.replace(key, value)
        out.append(line)
    return "\n".join(out)
