import base64
import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import compress, jsonl, rsyn
from rsyn.records import encode_embeddings


def test_report_builds_a_self_contained_page(tmp_path):
    (tmp_path / "extract.stats.json").write_bytes(orjson.dumps(
        {"command": "extract", "in": 100, "out": 60, "dropped": {"words": 25, "cat": 15}, "errors": {}, "seconds": 1}))
    (tmp_path / "balance.stats.json").write_bytes(orjson.dumps(
        {"command": "balance", "in": 60, "out": 30, "dropped": {"sim_window": 10, "cluster_cap": 20}, "errors": {},
         "stage": {"before": {"clusters": 4, "gini": 0.3, "size_counts": {"30": 1, "20": 1, "5": 2}},
                   "after": {"clusters": 4, "gini": 0.1, "size_counts": {"10": 2, "5": 2}}}}))
    rng = np.random.default_rng(0)
    e = encode_embeddings(rng.normal(size=(5, 8)))
    s = encode_embeddings(rng.normal(size=(5, 8)))
    recs = [{"id": str(i), "kind": "image", "texts": [{"id": "a", "text": "t", "score": 0.3 + i / 100}],
             "emb": e[i], "syn_emb": s[i]} for i in range(5)]
    (tmp_path / "r.jsonl.zst").write_bytes(compress(jsonl(recs), "zstd"))
    packed = tmp_path / "packed"
    packed.mkdir()
    pq.write_table(pa.table({"raw_image_url": ["u1", "u2"], "text1": ["a dog runs", "two cats sleep on a mat"],
                             "text2": ["x", None], "text3": [None, None], "syn_text": ["a b c d", "e f"]}),
                   packed / "part-00000.parquet")
    out = tmp_path / "report.html"
    rsyn("report", str(tmp_path / "*.stats.json"), "--records", tmp_path / "r.jsonl.zst", "--packed", packed,
         "-o", out, check=True)
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # funnel, score histograms, cluster sizes
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "Table 15" in page and "<td>text1</td><td>2</td><td>2</td><td>4.5</td>" in page
    assert "<td>text3</td><td>2</td><td>0</td>" in page


def test_report_refuses_what_is_not_a_stats_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    proc = rsyn("report", bad, "-o", tmp_path / "r.html")
    assert proc.returncode == 2 and "not an rsyn --stats file" in proc.stderr.decode()
    assert not (tmp_path / "r.html").exists()
