"""Image limits and defaults, apart from rsyn.images so the CLI can show them without importing PIL."""

# The paper's image quality rule (RealSyn §3.1): shorter side >= 100 px, 1/3 <= w/h <= 3.
MIN_SIDE = 100
MAX_ASPECT = 3.0

DEFAULT_MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; larger is a bomb or a scan, not a web photo
DEFAULT_MAX_BYTES = 25_000_000
DEFAULT_TIMEOUT = 10.0  # seconds, for connecting and for each read (within the deadline)
DEFAULT_DEADLINE = 30.0  # seconds for a whole download, retries included
DEFAULT_RETRIES = 2
MAX_REDIRECTS = 5  # followed whatever the retries; more is too_many_redirects (a loop, most often)
# Many image hosts refuse library user agents; this is what a current desktop browser sends.
DEFAULT_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def size_rule(
    width: int, height: int, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT
) -> tuple[bool, int, float]:
    """(passes, shorter side, aspect w/h) under the paper's rule (or the given thresholds).

    `rsyn extract` applies it to the sizes the documents state, `rsyn embed` to the decoded image
    when no size was known. The ratio is compared multiplied out, so that 300x100 is exactly
    ratio 3 (kept) and 301x100 is not, whatever the float rounding of w/h.
    """
    shorter = min(width, height)
    aspect = width / height if height else float("inf")
    ok = shorter >= min_side and width <= max_aspect * height and height <= max_aspect * width
    return ok, shorter, aspect
