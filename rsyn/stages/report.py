"""`rsyn report`: the --stats files of a run, a sample of its records and its packed output -> one HTML page.

The page is for deciding whether the data is good by looking at it: a gallery
of sampled pairs (thumbnail, the three retrieved texts with their scores,
caption, tags, synthetic text and its cosine), one funnel from documents to
pairs with images and sentences apart (the paper's Figure 2), histograms of
the filter scores with the thresholds marked, the retrieval scores, the
image-synthetic-text cosine with the balance window marked, the cluster sizes
before and after balancing (its Figure 9), the text lengths of the packed
release (its Table 15), and the run's models, thresholds, version and date.

The page is self-contained and loads nothing: figures are inline SVG (text
stays text, so labels keep their size at any zoom), thumbnails are JPEG data
URIs, and a Content-Security-Policy forbids every other source. Every record
field is escaped and cut short; every image read is bounded (--max-bytes,
pixels) and only from the record's `path` under --path-root, an img2dataset
--images folder or the packed webdataset tars — never the network.
Same inputs and seed give the same bytes: samples are seeded and the date
shown is the newest stats file's, not the time of writing.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from rsyn import __version__
from rsyn.errors import RsynError
from rsyn.image_limits import DEFAULT_MAX_PIXELS
from rsyn.options.report import ReportOptions
from rsyn.records import decode_embeddings
from rsyn.stream import StreamError, read_records, write_bytes_atomic

if TYPE_CHECKING:
    from rsyn.command import Run

TEXT_COLUMNS = ["text1", "text2", "text3", "syn_text"]
DONE_MARKERS = ["_stats.json", "stats.json"]  # rsyn pack's done marker, new name first
SAMPLE_VALUES = 200_000  # per plotted quantity: a seeded reservoir keeps memory flat on any corpus
COSINE_BATCH = 4096  # image / syn_text embedding pairs decoded at a time
THUMB_SIDE = 240
FIELD_CHARS = {"text": 400, "caption": 300, "syn_text": 800, "url": 200, "tag": 60}
MAX_TAGS = 20
FONT_PT = 13  # matplotlib points; tick labels (FONT_PT - 1) measure >= 12 px in Chromium at the page width
FILTER_SCORES = [  # (key in scores, nested key, title, threshold names in extract's stats)
    ("words", None, "words per sentence", ("min_words", "max_words")),
    ("entropy", None, "word-frequency entropy", ("min_entropy", None)),
    ("ppl", None, "perplexity", ("min_ppl", "max_ppl")),
    ("cat", "complexity", "CAT complexity", ("min_complexity", None)),
]


class Reservoir:
    """At most `size` values, a uniform sample of all offered, seeded (Li's Algorithm L: once full, it draws
    how many offers to skip, so most offers cost one comparison)."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng
        self.items: list = []
        self.seen = 0
        self._w = 1.0
        self._next = -1  # the offer number that replaces an item next

    def offer(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            if len(self.items) == self.size:
                self._schedule()
        elif self.seen == self._next:
            self.items[self.rng.randrange(self.size)] = item
            self._schedule()

    def _schedule(self) -> None:
        self._w *= math.exp(math.log(max(self.rng.random(), 1e-300)) / self.size)
        skip = math.floor(math.log(max(self.rng.random(), 1e-300)) / math.log1p(-self._w))
        self._next = self.seen + skip + 1


# --------------------------------------------------------------------------- inputs


def load_stats(paths: list[str]) -> list[dict]:
    """The stats files in the order the run wrote them (file modification time), which is pipeline order."""
    stats = []
    for path in sorted(paths, key=lambda p: (os.path.getmtime(p), p)):
        try:
            data = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise RsynError(f"{path}: not a readable --stats JSON file: {type(exc).__name__}") from None
        _check_stats(data, path)
        data["_file"] = Path(path).name
        data["_mtime"] = os.path.getmtime(path)
        stats.append(data)
    return stats


def _check_stats(data, path) -> None:
    """The shape the report relies on; anything else is refused with one line, not a traceback."""
    if not isinstance(data, dict) or not isinstance(data.get("command"), str) or "in" not in data:
        raise RsynError(f"{path}: not an rsyn --stats file (no 'command' / 'in')")
    if not all(type(data.get(k)) is int for k in ("in", "out")):
        raise RsynError(f"{path}: not an rsyn --stats file ('in' / 'out' are not counts)")
    for key in ("dropped", "errors", "stage"):
        if not isinstance(data.get(key, {}), dict):
            raise RsynError(f"{path}: not an rsyn --stats file ('{key}' is not an object)")
        if key != "stage" and not all(type(v) is int for v in data.get(key, {}).values()):
            raise RsynError(f"{path}: not an rsyn --stats file ('{key}' holds something other than counts)")


def packed_marker(directory: str) -> dict | None:
    """The --stats summary rsyn pack left as its done marker (either name), or None."""
    for name in DONE_MARKERS:
        path = Path(directory) / name
        if path.is_file():
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                raise RsynError(f"{path}: not a readable rsyn pack done marker") from None
            if isinstance(data, dict) and "command" in data:
                _check_stats(data, path)
                data["_file"] = f"{Path(directory).name}/{name}"
                data["_mtime"] = path.stat().st_mtime
                return data
    return None


def _number(value) -> float | None:
    if type(value) in (int, float) and math.isfinite(value):  # bool is not a score
        return float(value)
    return None


def _text(value, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[:limit] + "…"


def gallery_item(record: dict) -> dict | None:
    """A bounded copy of what the gallery shows of an image record (None: nothing to show)."""
    texts = record.get("texts")
    texts = texts if isinstance(texts, list) else []
    shown = [
        {"text": _text(t.get("text"), FIELD_CHARS["text"]), "score": _number(t.get("score"))}
        for t in texts[:3]
        if isinstance(t, dict) and isinstance(t.get("text"), str)
    ]
    syn = _text(record.get("syn_text"), FIELD_CHARS["syn_text"])
    if not shown and syn is None:
        return None
    tags = record.get("tags")
    tags = (
        [_text(t, FIELD_CHARS["tag"]) for t in tags[:MAX_TAGS] if isinstance(t, str)] if isinstance(tags, list) else []
    )
    keep = {k: record.get(k) for k in ("url", "path") if isinstance(record.get(k), str)}
    return {
        "id": _text(record.get("id"), 80),
        "texts": shown,
        "caption": _text(record.get("caption"), FIELD_CHARS["caption"]),
        "tags": tags,
        "syn_text": syn,
        "sim": _number(record.get("sim")),
        "source": keep,
        "emb": record.get("emb"),
        "syn_emb": record.get("syn_emb"),
    }


def scan_records(paths: list[str], gallery_size: int, seed: int) -> dict:
    """One pass over the record streams: sampled score values, models used, and the gallery sample."""
    rng = random.Random(seed)
    values = {
        key: Reservoir(SAMPLE_VALUES, rng) for key in ["top1", "topk", "sim"] + [key for key, *_ in FILTER_SCORES]
    }
    gallery = Reservoir(gallery_size, rng)
    pairs: list[tuple[str, str]] = []  # (emb, syn_emb) of records without `sim`: cosines computed per batch

    def flush_pairs() -> None:
        for cos in _cosines([a for a, _ in pairs], [b for _, b in pairs]):
            values["sim"].offer(cos)
        pairs.clear()

    models: dict[str, dict[str, int]] = {}
    kinds = {"image": 0, "text": 0}
    try:
        for record in read_records(paths):
            kind = record.get("kind")
            if kind in kinds:
                kinds[kind] += 1
            for field in ("emb_model", "tag_model", "caption_model", "llm_model"):
                name = record.get(field)
                if isinstance(name, str) and name:
                    bucket = models.setdefault(field, {})
                    if len(bucket) < 20 or name[:200] in bucket:
                        bucket[name[:200]] = bucket.get(name[:200], 0) + 1
            scores = record.get("scores")
            if isinstance(scores, dict):
                for key, sub, *_ in FILTER_SCORES:
                    value = scores.get(key)
                    value = _number(value.get(sub) if sub and isinstance(value, dict) else value)
                    if value is not None:
                        values[key].offer(value)
            texts = record.get("texts")
            if isinstance(texts, list):
                found = [_number(t.get("score")) for t in texts if isinstance(t, dict)]
                found = [s for s in found if s is not None]
                if found:
                    values["top1"].offer(found[0])
                    for s in found:
                        values["topk"].offer(s)
            sim = _number(record.get("sim"))
            if sim is not None:
                values["sim"].offer(sim)
            elif isinstance(record.get("emb"), str) and isinstance(record.get("syn_emb"), str):
                pairs.append((record["emb"], record["syn_emb"]))
                if len(pairs) == COSINE_BATCH:
                    flush_pairs()
            if kind == "image":
                item = gallery_item(record)
                if item is not None:
                    gallery.offer(item)
        flush_pairs()
    except StreamError as exc:
        raise RsynError(str(exc)) from None
    numbers = {key: r.items for key, r in values.items()}
    for item in gallery.items:
        if item["sim"] is None and isinstance(item["emb"], str) and isinstance(item["syn_emb"], str):
            cos = _cosines([item["emb"]], [item["syn_emb"]])
            item["sim"] = cos[0] if cos else None
        item.pop("emb"), item.pop("syn_emb")
    return {"numbers": numbers, "gallery": gallery.items, "models": models, "kinds": kinds}


def _cosines(a: list[str], b: list[str]) -> list[float]:
    """cosine(a[i], b[i]) for every pair whose two embeddings decode to the same dimension; others left out."""
    try:
        x, y = decode_embeddings(a), decode_embeddings(b)
    except Exception:  # noqa: BLE001 - some vector is undecodable (hostile or foreign): go pair by pair
        if len(a) == 1:
            return []
        return [c for pair in zip(a, b) for c in _cosines([pair[0]], [pair[1]])]
    if x.shape != y.shape:
        return [] if len(a) == 1 else [c for pair in zip(a, b) for c in _cosines([pair[0]], [pair[1]])]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", x, y).astype(float).tolist()


def packed_text_stats(directory: str) -> list[dict]:
    """Per text column of the packed parquet: rows, non-empty, mean words and mean CLIP BPE tokens."""
    import pyarrow.parquet as pq

    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        return []
    columns: dict[str, list[str]] = {c: [] for c in TEXT_COLUMNS}
    for file in files:
        # ParquetFile, not pq.read_table: read_table goes through pyarrow.dataset, which imports pandas
        with pq.ParquetFile(file) as parquet:
            table = parquet.read(columns=[c for c in TEXT_COLUMNS if c in parquet.schema_arrow.names])
        for name in table.column_names:
            columns[name].extend(x for x in table.column(name).to_pylist())
    count_tokens = _bpe_counter()
    rows = []
    for name, values in columns.items():
        texts = [v for v in values if v]
        rows.append(
            {
                "column": name,
                "rows": len(values),
                "non_empty": len(texts),
                "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 2) if texts else 0.0,
                "mean_tokens": round(float(np.mean([count_tokens(t) for t in texts])), 2) if texts else 0.0,
            }
        )
    return rows


def _bpe_counter():
    """Token count with CLIP's BPE (the paper's Table 15 counts tokens); words if open_clip is absent."""
    try:
        from rsyn.models.imports import clip_bpe_tokenizer

        tok = clip_bpe_tokenizer()
        return lambda text: len(tok.encode(text))
    except Exception:  # noqa: BLE001 - a missing optional tokenizer only changes the unit
        return lambda text: len(text.split())


def cluster_sizes(stat: dict) -> tuple[list[int] | None, list[int] | None]:
    """Cluster sizes before/after balancing, from `rsyn balance --stats` (stage.before/after.size_counts)."""
    stage = stat.get("stage", {})
    if isinstance(stage.get("before"), dict) and "size_counts" in stage["before"]:
        after = stage.get("after")
        return (
            _expand(stage["before"]["size_counts"]),
            _expand(after.get("size_counts", {}) if isinstance(after, dict) else {}),
        )
    return None, None


def _expand(size_counts: dict) -> list[int]:
    """{size: number of clusters of that size} -> every cluster's size (for a rank plot)."""
    sizes: list[int] = []
    if not isinstance(size_counts, dict):
        return sizes
    for size, count in size_counts.items():
        if str(size).isdigit() and type(count) is int and 0 < count <= 10_000_000:
            sizes.extend([int(size)] * count)
    return sizes


# --------------------------------------------------------------------------- thumbnails


def add_thumbnails(
    items: list[dict], images: str | None, packed: str | None, path_root: str | None, max_bytes: int
) -> None:
    """Each gallery item gets `thumb` (a JPEG data URI and its size) or `missing` (why there is none)."""
    from rsyn.images import ImageError, ImageFolder, ImageLoader, decode_image, open_image_folder

    folder = open_image_folder(images, max_bytes) if images else None  # refused as in embed, caption and pack
    loader = ImageLoader(folder, None, max_bytes=max_bytes, root=path_root)
    # rsyn pack's webdataset tars hold KEY.jpg + KEY.json naming raw_image_url: the same reader finds them by URL
    from_pack = ImageFolder(packed, max_bytes) if packed and Path(packed).is_dir() else None
    for item in items:
        try:
            source = item["source"]
            data = None
            if from_pack is not None and "url" in source and not source.get("path"):
                try:
                    data = from_pack.get(source["url"])[0]
                except ImageError:  # not packed, or unreadable there: try --images / `path`
                    data = None
            if data is None:
                if not source:
                    raise ImageError("no_source", "no url or path")
                data, _, _ = loader.read_bytes(source)
            image = decode_image(data, DEFAULT_MAX_PIXELS, draft_side=THUMB_SIDE).image
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=80)
            item["thumb"] = ("data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode(), *image.size)
        except ImageError as exc:
            # the report never downloads: an image neither at `path` nor in --images / --packed is not shown
            item["missing"] = "not found locally" if exc.reason in ("fetch_failed", "not_downloaded") else exc.reason
    for opened in (folder, from_pack):
        if opened is not None:
            opened.close()


# --------------------------------------------------------------------------- the funnel


def funnel(stats: list[dict]) -> dict:
    """Documents, then what is left after each stage, walked in pipeline (stats file) order, images and
    sentences apart; dedup, which sees both kinds at once, gets rows of its own. A count that is not a
    count (a hand-edited or foreign stats file) leaves its row out."""
    documents, lanes = None, {"images": [], "sentences": [], "both": []}

    def add(lane: str, label: str, count) -> None:
        if type(count) is int and count >= 0:
            lanes[lane].append((label, count))

    for stat in stats:
        command, stage = stat["command"], stat.get("stage")
        stage = stage if isinstance(stage, dict) else {}
        if command == "extract" and "images_in" in stage:
            documents = stage.get("documents") if type(stage.get("documents")) is int else None
            add("images", "in the documents", stage.get("images_in"))
            add("images", "after the image filters", stage.get("images_out"))
            add("sentences", "in the documents", stage.get("sentences_in"))
            add("sentences", "after the text filters", stage.get("sentences_out"))
        elif command == "dedup":
            modes = [m for m in ("exact", "near", "perceptual", "semantic") if m in stage]
            add("both", f"after dedup ({', '.join(modes) or 'all modes'})", stat["out"])
        elif command == "embed" and "images" in stage and stage.get("emb_field") != "syn_emb":
            add("images", "embedded", stage["images"])
            add("sentences", "embedded", stage.get("texts", 0))
        elif command == "index" and "indexed" in stage:
            add("sentences", "indexed for retrieval", stage["indexed"])
        elif command == "retrieve":
            passed = stage.get("passed_through", 0)
            add("images", "with retrieved texts", stat["out"] - passed if type(passed) is int else None)
        elif command in FUNNEL_IMAGE_STEPS:
            add("images", FUNNEL_IMAGE_STEPS[command], stat["out"])
    return {"documents": documents, **lanes}


FUNNEL_IMAGE_STEPS = {
    "caption": "with caption, tags, synthetic text",
    "balance": "after semantic balancing",
    "pack": "packed image-text pairs",
}


def _funnel_html(data: dict) -> str:
    rows = []  # (css class, kind, step, count, share of the lane's first count)
    if data["documents"] is not None:
        rows.append(("documents", "documents", "documents", data["documents"], None))
    for lane, name in (("images", "images"), ("sentences", "sentences"), ("both", "images + sentences")):
        first = None
        for label, count in data[lane]:
            first = first or count
            rows.append((lane, name, label, count, count / first if first and lane != "both" else None))
    if not rows:
        return "<p>No extract / dedup / embed / index / retrieve / caption / balance / pack stats given.</p>"
    top = max(r[3] for r in rows) or 1
    body = []
    for css, kind, label, count, share in rows:
        width = max(0.3, 100 * count / top)
        pct = f"{share:.1%}" if share is not None else ""
        body.append(
            f"<tr class='lane-{css}'><th>{html.escape(kind)}</th><td>{html.escape(label)}</td>"
            f"<td class='num'>{count:,}</td><td class='num'>{pct}</td>"
            f"<td class='barcell'><div class='bar' style='width:{width:.1f}%'></div></td></tr>"
        )
    return (
        "<table class='funnel' id='funnel'><tr><th>kind</th><th>step</th><th>left</th>"
        "<th>of the first</th><th></th></tr>" + "".join(body) + "</table>"
    )


# --------------------------------------------------------------------------- figures


def _svg(fig) -> str:
    """The figure as inline SVG; text stays text (readable, searchable), ids salted for reproducible bytes."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _pyplot():
    """pyplot, drawing without a display; imported only when the report has a figure to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style():
    import matplotlib

    return matplotlib.rc_context(
        {
            "svg.fonttype": "none",
            "svg.hashsalt": "rsyn-report",
            "font.size": FONT_PT,
            "axes.titlesize": FONT_PT + 1,
            "axes.labelsize": FONT_PT,
            "xtick.labelsize": FONT_PT - 1,
            "ytick.labelsize": FONT_PT - 1,
            "legend.fontsize": FONT_PT - 1,
            "font.family": "DejaVu Sans",
        }
    )


def histogram(
    values: list[float],
    title: str,
    xlabel: str,
    marks: list[tuple[float, str]] = (),
    window: tuple[float, float] | None = None,
    log: bool = False,
) -> str:
    plt = _pyplot()
    with _style():
        fig, ax = plt.subplots(figsize=(5.4, 3.3))
        data = np.asarray(values, dtype=float)
        if log:
            data = data[data > 0]
            bins = np.geomspace(data.min(), data.max(), 41) if data.size and data.max() > data.min() else 40
            ax.set_xscale("log")
            _plain_ticks(ax.xaxis)
        else:
            bins = 40
        ax.hist(data, bins=bins, color="#4c72b0")
        if window is not None:
            ax.axvspan(
                window[0], window[1], color="#55a868", alpha=0.25, label=f"kept: {window[0]:.3g} to {window[1]:.3g}"
            )
        for x, label in marks:
            if _on_scale(x, data, log):
                ax.axvline(x, color="#c44e52", linestyle="--", label=label)
            else:  # a threshold far outside the data (opened up on purpose) would squash the histogram
                ax.plot([], [], " ", label=f"{label} (off scale)")
        if window is not None or marks:
            ax.legend(loc="best", framealpha=0.9)
        ax.set_title(f"{title} (n={len(values):,})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        fig.tight_layout()
        return _svg(fig)


def _on_scale(x: float, data: np.ndarray, log: bool) -> bool:
    if not data.size:
        return False
    lo, hi = float(data.min()), float(data.max())
    if log:
        return x > 0 and lo / 3 <= x <= hi * 3
    span = (hi - lo) or 1.0
    return lo - span / 2 <= x <= hi + span / 2


def _plain_ticks(axis) -> None:
    """Log-axis labels as plain numbers (20, 50, 100), only where they do not crowd each other."""
    import matplotlib.ticker

    axis.set_major_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1.2, 0.5)))


def plot_cluster_sizes(before: list[int], after: list[int] | None) -> str:
    plt = _pyplot()
    with _style():
        fig, ax = plt.subplots(figsize=(5.4, 3.3))
        for sizes, label, color in ((before, "before balancing", "#c44e52"), (after, "after balancing", "#4c72b0")):
            ordered = np.sort(np.asarray([s for s in sizes or [] if s > 0]))[::-1]
            if ordered.size:
                # at most ~2,000 points, log-spaced over the ranks: a million clusters stay a small SVG
                ranks = np.unique(np.geomspace(1, ordered.size, 2000).astype(int))
                ax.plot(ranks, ordered[ranks - 1], label=label, color=color)
        ax.set_xlabel("cluster rank")
        ax.set_ylabel("images in cluster")
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
        ax.legend()
        ax.set_title("Cluster sizes (paper's Figure 9)")
        fig.tight_layout()
        return _svg(fig)


def figures(numbers: dict, stats: list[dict]) -> list[tuple[str, str]]:
    """(id, svg) of every histogram there is data for, thresholds and the similarity window marked."""
    last = {s["command"]: s for s in stats}
    thresholds = last.get("extract", {}).get("stage", {}).get("thresholds")
    thresholds = thresholds if isinstance(thresholds, dict) else {}
    out = []
    for key, _, title, (low, high) in FILTER_SCORES:
        if numbers.get(key):
            marks = [
                (thresholds[name], f"{name} {thresholds[name]:g}")
                for name in (low, high)
                if name and _number(thresholds.get(name)) is not None
            ]
            out.append(
                (f"fig-{key}", histogram(numbers[key], f"Filter score: {title}", title, marks, log=(key == "ppl")))
            )
    if numbers.get("top1"):
        out.append(("fig-top1", histogram(numbers["top1"], "Retrieval score, best text", "cosine(image, text)")))
    if numbers.get("topk"):
        out.append(("fig-topk", histogram(numbers["topk"], "Retrieval scores, all top-k texts", "cosine(image, text)")))
    if numbers.get("sim"):
        window = last.get("balance", {}).get("stage", {}).get("sim_window")
        span = (_number(window.get("lo")), _number(window.get("hi"))) if isinstance(window, dict) else None
        span = span if span and None not in span else None
        out.append(
            ("fig-sim", histogram(numbers["sim"], "Image vs synthetic text", "cosine(image, syn_text)", window=span))
        )
    for stat in stats:
        before, after = cluster_sizes(stat)
        if before:
            out.append(("fig-clusters", plot_cluster_sizes(before, after)))
    return out


# --------------------------------------------------------------------------- the page


def _table(rows: list[dict], cls: str = "") -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _card(item: dict) -> str:
    esc = html.escape
    if "thumb" in item:
        uri, w, h = item["thumb"]
        picture = f"<img class='thumb' src='{uri}' width='{w}' height='{h}' alt='sample image'>"
    else:
        picture = f"<div class='noimg'>no image: {esc(item.get('missing', 'unknown'))}</div>"
    texts = "".join(
        f"<li><span class='score'>{t['score']:.3f}</span> {esc(t['text'])}</li>"
        if t["score"] is not None
        else f"<li>{esc(t['text'])}</li>"
        for t in item["texts"]
    )
    lines = [f"<ol class='texts'>{texts}</ol>" if texts else "<p class='none'>no retrieved texts</p>"]
    if item["caption"]:
        lines.append(f"<p><b>caption</b> {esc(item['caption'])}</p>")
    if item["tags"]:
        lines.append(f"<p><b>tags</b> {esc(', '.join(item['tags']))}</p>")
    if item["syn_text"]:
        sim = f" <span class='score'>cos {item['sim']:.3f}</span>" if item["sim"] is not None else ""
        lines.append(f"<p><b>syn_text</b>{sim} {esc(item['syn_text'])}</p>")
    where = item["source"].get("url") or item["source"].get("path") or ""
    return (
        f"<figure class='card'>{picture}<figcaption><p class='src'>{esc(_text(where, FIELD_CHARS['url']))}</p>"
        f"{''.join(lines)}</figcaption></figure>"
    )


def settings(stats: list[dict], models: dict) -> tuple[list[dict], list[dict]]:
    """(models, thresholds) rows: what the stats files and records say the run used."""
    model_rows = []
    for s in stats:
        stage = s.get("stage", {})
        for key, what in (("model", "CLIP (embed)"), ("emb_model", "CLIP (balance)"), ("ppl_model", "perplexity LM")):
            if isinstance(stage.get(key), str):
                model_rows.append({"stage": s["command"], "role": what, "model": stage[key]})
        if isinstance(stage.get("cat"), dict) and stage["cat"].get("spacy_model"):
            model_rows.append({"stage": s["command"], "role": "spaCy (CAT)", "model": stage["cat"]["spacy_model"]})
    model_rows = [dict(t) for t in dict.fromkeys(tuple(r.items()) for r in model_rows)]  # a model once per role
    roles = {"emb_model": "CLIP (records)", "tag_model": "tagger", "caption_model": "captioner", "llm_model": "LLM"}
    for field, names in models.items():
        for name, count in sorted(names.items()):
            model_rows.append({"stage": "records", "role": roles[field], "model": f"{name} ({count:,} records)"})
    threshold_rows = []
    for s in stats:
        stage = s.get("stage", {})
        picked = {}
        if isinstance(stage.get("thresholds"), dict):
            picked.update(stage["thresholds"])
        for key in ("filters", "k", "nprobe", "sim_window", "per_cluster", "target", "clusters"):
            value = stage.get(key)
            if value is not None and (key in ("filters", "sim_window") or not isinstance(value, (list, dict))):
                picked[key] = value
        if picked:
            threshold_rows.append({"stage": s["command"], "settings": picked})
    return model_rows, threshold_rows


STYLE = """
body{font:15px/1.45 system-ui,'DejaVu Sans',sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:26px}h2{font-size:20px;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.num{text-align:right}.funnel{width:100%}.barcell{width:40%}.bar{height:14px;background:#4c72b0}
.lane-sentences .bar{background:#dd8452}.lane-both .bar{background:#8172b3}.lane-documents .bar{background:#555}
.figures{display:flex;flex-wrap:wrap;gap:12px}.figure{flex:0 1 560px}.figure svg{max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.card{margin:0;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:14px;overflow-wrap:anywhere}
.thumb{display:block;margin:0 auto 6px;max-width:100%;height:auto}.noimg{padding:2em;background:#f3f3f3;text-align:center}
.card p{margin:.3em 0}.texts{margin:.3em 0;padding-left:1.4em}.score{color:#2a6f3a;font-variant-numeric:tabular-nums}
.src{color:#666;font-size:13px}.none{color:#999}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render(stats: list[dict], scan: dict | None, text_rows: list[dict] | None, title: str) -> str:
    esc = html.escape
    versions = sorted({str(s.get("version")) for s in stats if s.get("version")})
    newest = max((s["_mtime"] for s in stats), default=None)
    date = dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if newest else "unknown"
    run_rows = [
        {
            "run by rsyn": ", ".join(versions) or "unknown",
            "report by rsyn": __version__,
            "last stats written": date,
            "seeds": ", ".join(sorted({str(s.get("seed")) for s in stats})),
        }
    ]
    parts = [f"<h1>{esc(title)}</h1>", _table(run_rows, "run")]
    if scan and scan["gallery"]:
        parts += [
            f"<h2>Sample pairs ({len(scan['gallery'])} drawn at random)</h2>",
            "<div class='gallery' id='gallery'>" + "".join(_card(i) for i in scan["gallery"]) + "</div>",
        ]
    parts += ["<h2>From documents to pairs</h2>", _funnel_html(funnel(stats))]
    figs = figures(scan["numbers"], stats) if scan else []
    if figs:
        parts += [
            "<h2>Scores</h2>",
            "<div class='figures'>"
            + "".join(f"<div class='figure' id='{fid}'>{svg}</div>" for fid, svg in figs)
            + "</div>",
        ]
    model_rows, threshold_rows = settings(stats, scan["models"] if scan else {})
    parts += [
        "<h2>Models and settings</h2>",
        _table(model_rows, "models") or "<p>No model named in the inputs.</p>",
        _table(threshold_rows, "settings"),
    ]
    overview = [
        {
            "stage": s["command"],
            "file": s["_file"],
            "in": s["in"],
            "out": s["out"],
            "dropped": {k: v for k, v in s.get("dropped", {}).items() if v},
            "errors": {k: v for k, v in s.get("errors", {}).items() if v},
            "seconds": s.get("seconds"),
            "device": s.get("device"),
        }
        for s in stats
    ]
    parts += ["<h2>Stages</h2>", _table(overview, "stages")]
    for stat in stats:
        stage = stat.get("stage", {})
        rows = [
            {"": key, **{k: v for k, v in stage[key].items() if not isinstance(v, (list, dict))}}
            for key in ("before", "after")
            if isinstance(stage.get(key), dict)
        ]
        if rows:
            parts += ["<h2>Semantic balance</h2>", _table(rows)]
    if text_rows:
        parts += ["<h2>Packed texts (paper's Table 15)</h2>", _table(text_rows)]
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def run_report(run: Run, opts: ReportOptions) -> None:
    records, packed, images, title, gallery = opts.records, opts.packed, opts.images, opts.title, opts.gallery
    path_root, max_bytes = opts.path_root, opts.max_bytes
    if not run.inputs:
        raise RsynError("give the --stats JSON files of a run, e.g. rsyn report 'work/*.stats.json' -o report.html")
    if not run.output or run.output == "-":
        raise RsynError("the report is an HTML file: give -o PATH")
    for option, folder in (("--packed", packed), ("--images", images)):
        if folder and not Path(folder).is_dir():  # before the pass over the records, not after it
            raise RsynError(f"{option} {folder}: no such folder")
    stats = load_stats(run.input_paths())
    if packed and not any(s["command"] == "pack" for s in stats):
        marker = packed_marker(packed)
        if marker is not None:
            stats.append(marker)
    run.count_in(len(stats))
    scan = scan_records(records, gallery, run.seed) if records else None
    if scan:
        add_thumbnails(scan["gallery"], images, packed, path_root, max_bytes)
    text_rows = packed_text_stats(packed) if packed else None
    page = render(stats, scan, text_rows, title)
    write_bytes_atomic(run.output, page.encode())
    run.extra.update(
        stats_files=len(stats),
        records_files=len(records),
        packed=packed,
        gallery=len(scan["gallery"]) if scan else 0,
        thumbnails=sum("thumb" in i for i in scan["gallery"]) if scan else 0,
    )
    run.note(f"wrote {run.output}")
