"""The one exception type that library code raises for a user's mistake or bad input.

It lives apart from the CLI frame (`rsyn.command`) so that library modules (stream, records, filters,
models, ...) never import the CLI: the frame catches `RsynError` and prints it as one line,
`rsyn: error: ...`, with exit status 2.
"""

from __future__ import annotations


class RsynError(Exception):
    """A user-facing failure: printed as one line `rsyn: error: ...`, exit status 2."""


def first_line(exc: BaseException | str) -> str:
    """The first non-blank line of an exception's message (stripped), or its type name when it says nothing.

    Library and model errors often carry a stack of lines (transformers, faiss, pyarrow); a one-line
    `rsyn: error: ...` shows only the first.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class CountedError(Exception):
    """One item (an image, a download) that failed in a way a run counts: `reason` is the drop or
    --on-error key (http_404, too_large, decode_failed...), `detail` a short line for the log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
