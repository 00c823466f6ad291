"""`rsyn report`: the --stats files of a run (plus, optionally, its records and packed output) -> one HTML page.

The page is self-contained (plots are inline PNGs) so it can be mailed or
attached to a dataset card. It shows what the paper reports for RealSyn:
the filter funnel per stage (its Figure 2), retrieval scores and image-
synthetic-text similarities, the cluster-size distribution before and after
balancing (its Figure 9) and the text-length statistics of the packed
release (its Table 15).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np
import orjson

from rsyn.command import RsynError, Run
from rsyn.records import decode_embeddings
from rsyn.stream import read_records, StreamError, write_bytes_atomic

TEXT_COLUMNS = ["text1", "text2", "text3", "syn_text"]


def load_stats(paths: list[str]) -> list[dict]:
    """The stats files in the order the run wrote them (file modification time), which is pipeline order."""
    stats = []
    for path in sorted(paths, key=lambda p: (os.path.getmtime(p), p)):
        try:
            data = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise RsynError(f"{path}: not a readable --stats JSON file: {exc}") from None
        if not isinstance(data, dict) or "command" not in data or "in" not in data:
            raise RsynError(f"{path}: not an rsyn --stats file (no 'command' / 'in')")
        data["_file"] = Path(path).name
        stats.append(data)
    return stats


def funnel_rows(stat: dict) -> list[tuple[str, int]]:
    """(label, records left) after each drop reason, in the order the stage applied them."""
    rows = [("in", stat["in"])]
    left = stat["in"]
    for reason, count in stat.get("dropped", {}).items():
        if count:
            left -= count
            rows.append((f"- {reason}", left))
    for reason, count in stat.get("errors", {}).items():
        if count:
            left -= count
            rows.append((f"- {reason} (error)", left))
    rows.append(("out", stat["out"]))
    return rows


def record_numbers(paths: list[str]) -> dict[str, list[float]]:
    """Retrieval scores (best text and all top-k) and image-syn_text cosine from record streams."""
    top1, all_k, sims = [], [], []
    emb, syn = [], []
    try:
        for record in read_records(paths):
            texts = record.get("texts") or []
            scores = [t.get("score") for t in texts if isinstance(t, dict) and t.get("score") is not None]
            if scores:
                top1.append(scores[0])
                all_k.extend(scores)
            if record.get("sim") is not None:
                sims.append(record["sim"])
            elif record.get("emb") and record.get("syn_emb"):
                emb.append(record["emb"])
                syn.append(record["syn_emb"])
    except StreamError as exc:
        raise RsynError(str(exc)) from None
    if emb:
        a, b = decode_embeddings(emb), decode_embeddings(syn)
        sims.extend(np.einsum("ij,ij->i", a, b).tolist())
    return {"top1": top1, "topk": all_k, "sim": sims}


def packed_text_stats(directory: str) -> list[dict]:
    """Per text column of the packed parquet: rows, non-empty, mean words and mean CLIP BPE tokens."""
    import pyarrow.parquet as pq

    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise RsynError(f"{directory}: no parquet shards to report on")
    columns: dict[str, list[str]] = {c: [] for c in TEXT_COLUMNS}
    for file in files:
        table = pq.read_table(file, columns=[c for c in TEXT_COLUMNS if c in pq.read_schema(file).names])
        for name in table.column_names:
            columns[name].extend(x for x in table.column(name).to_pylist())
    count_tokens = _bpe_counter()
    rows = []
    for name, values in columns.items():
        texts = [v for v in values if v]
        rows.append({
            "column": name,
            "rows": len(values),
            "non_empty": len(texts),
            "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 2) if texts else 0.0,
            "mean_tokens": round(float(np.mean([count_tokens(t) for t in texts])), 2) if texts else 0.0,
        })
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
        return (_expand(stage["before"]["size_counts"]),
                _expand(stage.get("after", {}).get("size_counts", {})))
    return None, None


def _expand(size_counts: dict) -> list[int]:
    """{size: number of clusters of that size} -> every cluster's size (for a rank plot)."""
    sizes: list[int] = []
    for size, count in size_counts.items():
        sizes.extend([int(size)] * int(count))
    return sizes


# --------------------------------------------------------------------------- rendering


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_funnels(stats: list[dict]) -> str:
    import matplotlib.pyplot as plt

    n = len(stats)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.2 * rows), squeeze=False)
    for ax, stat in zip(axes.flat, stats):
        data = funnel_rows(stat)
        labels = [label for label, _ in data][::-1]
        values = [v for _, v in data][::-1]
        ax.barh(range(len(values)), values, color=["#4c72b0" if lab in ("in", "out") else "#dd8452" for lab in labels])
        ax.set_yticks(range(len(values)), labels, fontsize=8)
        ax.set_title(f"rsyn {stat['command']}  ({stat['_file']})", fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,}", va="center", fontsize=7)
        ax.set_xlim(0, max(values + [1]) * 1.25)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Filter funnel per stage (records left after each drop reason)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_histograms(numbers: dict[str, list[float]]) -> str | None:
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in (("top1", "retrieval score of the best text"),
                                  ("topk", "retrieval scores of all top-k texts"),
                                  ("sim", "cosine(image, syn_text)")) if numbers.get(k)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        ax.hist(numbers[key], bins=40, color="#55a868")
        ax.set_title(f"{title} (n={len(numbers[key]):,})", fontsize=9)
        ax.set_xlabel("cosine similarity", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_cluster_sizes(before: list[int], after: list[int] | None) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for sizes, label, color in ((before, "before balancing", "#c44e52"), (after, "after balancing", "#4c72b0")):
        if sizes:
            ordered = sorted((s for s in sizes if s > 0), reverse=True)
            ax.plot(range(1, len(ordered) + 1), ordered, label=label, color=color)
    ax.set_xlabel("cluster rank", fontsize=8)
    ax.set_ylabel("images in cluster", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Cluster-size distribution (paper's Figure 9)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def render(stats: list[dict], numbers: dict | None, text_rows: list[dict] | None, title: str) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    overview = [{"stage": s["command"], "file": s["_file"], "in": s["in"], "out": s["out"],
                 "dropped": sum(s.get("dropped", {}).values()), "errors": sum(s.get("errors", {}).values()),
                 "seconds": s.get("seconds", "")} for s in stats]
    parts += ["<h2>Stages</h2>", _table(overview)]
    if stats:
        parts += ["<h2>Filter funnel</h2>", f'<img src="{plot_funnels(stats)}" alt="funnel">']
    if numbers:
        hist = plot_histograms(numbers)
        if hist:
            parts += ["<h2>Retrieval scores and image–synthetic-text similarity</h2>", f'<img src="{hist}" alt="scores">']
    for stat in stats:
        before, after = cluster_sizes(stat)
        if before:
            parts += ["<h2>Semantic balance</h2>", f'<img src="{plot_cluster_sizes(before, after)}" alt="clusters">']
            stage = stat.get("stage", {})
            rows = [{"": label, **{k: v for k, v in stage[key].items() if not isinstance(v, (list, dict))}}
                    for key, label in (("before", "before"), ("after", "after")) if isinstance(stage.get(key), dict)]
            if rows:
                parts.append(_table(rows))
    if text_rows:
        parts += ["<h2>Packed texts (paper's Table 15)</h2>", _table(text_rows)]
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def run_report(run: Run, records: list[str], packed: str | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    if not run.inputs:
        raise RsynError("give the --stats JSON files of a run, e.g. rsyn report 'work/*.stats.json' -o report.html")
    if not run.output or run.output == "-":
        raise RsynError("the report is an HTML file: give -o PATH")
    stats = load_stats(run.input_paths())
    run.n_in = len(stats)
    numbers = record_numbers(records) if records else None
    text_rows = packed_text_stats(packed) if packed else None
    page = render(stats, numbers, text_rows, title)
    write_bytes_atomic(run.output, page.encode())
    run.extra.update(stats_files=len(stats), records_files=len(records), packed=packed)
    run.note(f"wrote {run.output}")
