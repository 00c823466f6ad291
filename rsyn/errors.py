"""The one exception type that library code raises for a user's mistake or bad input.

It lives apart from the CLI frame (`rsyn.command`) so that library modules (stream, records, filters,
models, ...) never import the CLI: the frame catches `RsynError` and prints it as one line,
`rsyn: error: ...`, with exit status 2.
"""

from __future__ import annotations


class RsynError(Exception):
    """A user-facing failure: printed as one line `rsyn: error: ...`, exit status 2."""
