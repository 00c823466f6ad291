"""--max-error-rate: stop a run whose records mostly fail (a dead network or LLM server), instead of
finishing with exit 0 and next to nothing written."""

from __future__ import annotations

from rsyn.errors import RsynError

DEFAULT_MAX_ERROR_RATE = 0.5
MIN_RECORDS = 100  # fewer records say too little about the rate: a short run is never stopped by it


class ErrorRate:
    """Counts records tried and failed, by reason; `add` raises RsynError once more than `limit` of at least
    MIN_RECORDS records failed. The stages call it once per batch, so where it stops does not depend on
    thread timing."""

    def __init__(self, limit: float, what: str):
        self.limit = limit
        self.what = what  # "images", "image records"
        self.tried = 0
        self.failed = 0
        self.reasons: dict[str, int] = {}

    def add(self, tried: int, failures: list[str]) -> None:
        """`tried` records, of which `failures` (their reasons) failed."""
        self.tried += tried
        self.failed += len(failures)
        for reason in failures:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.tried >= MIN_RECORDS and self.failed > self.limit * self.tried:
            common = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            raise RsynError(
                f"{self.failed} of {self.tried} {self.what} failed ({self.failed / self.tried:.0%}), "
                f"more than --max-error-rate {self.limit:g} allows; most often "
                f"{', '.join(f'{reason} {n}' for reason, n in common)}"
            )
