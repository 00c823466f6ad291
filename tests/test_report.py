"""rsyn report: a page to look at the data, checked as HTML and in a real headless Chromium."""

import io
import json
import os
import re
import shutil
import subprocess
import tarfile

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compress, jsonl, rsyn_here
from PIL import Image

from rsyn.records import encode_embeddings

HOSTILE = "<script>alert(1)</script><img src=http://127.0.0.1:9/x>"


def _jpeg(color, size=(320, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def _stats(tmp_path, name, data, mtime):
    path = tmp_path / f"{name}.stats.json"
    path.write_bytes(orjson.dumps({"version": "0.1.0", "seed": 0, "errors": {}, "seconds": 1.0, **data}))
    os.utime(path, (mtime, mtime))  # pipeline order is file time order


@pytest.fixture
def run_dir(tmp_path):
    """A small finished run: stats of every stage, records with scores, local images and a webdataset pack."""
    t = 1_780_000_000
    _stats(
        tmp_path,
        "extract",
        {
            "command": "extract",
            "in": 40,
            "out": 140,
            "dropped": {"words": 30, "ppl": 12},
            "stage": {
                "documents": 40,
                "images_in": 50,
                "images_out": 30,
                "sentences_in": 160,
                "sentences_out": 110,
                "ppl_model": "tiny-gpt2",
                "cat": {"spacy_model": "en_core_web_sm"},
                "thresholds": {
                    "min_words": 3,
                    "max_words": 81,
                    "min_entropy": 0.3,
                    "min_ppl": 30.0,
                    "max_ppl": 200.0,
                    "min_complexity": 1,
                },
            },
        },
        t,
    )
    _stats(
        tmp_path,
        "dedup",
        {"command": "dedup", "in": 140, "out": 120, "dropped": {"near": 20}, "stage": {"exact": {}, "near": {}}},
        t + 0.5,
    )
    _stats(
        tmp_path,
        "embed",
        {
            "command": "embed",
            "in": 120,
            "out": 120,
            "dropped": {},
            "stage": {"model": "tiny-clip", "emb_field": "emb", "images": 25, "texts": 95},
        },
        t + 1,
    )
    _stats(
        tmp_path,
        "embed-syn",
        {
            "command": "embed",
            "in": 22,
            "out": 22,
            "dropped": {},  # syn_text: not a funnel step
            "stage": {"model": "tiny-clip", "emb_field": "syn_emb", "images": 0, "texts": 22},
        },
        t + 3.5,
    )
    _stats(tmp_path, "index", {"command": "index", "in": 95, "out": 0, "dropped": {}, "stage": {"indexed": 95}}, t + 2)
    _stats(
        tmp_path,
        "retrieve",
        {
            "command": "retrieve",
            "in": 25,
            "out": 22,
            "dropped": {"no_text": 3},
            "stage": {"k": 3, "nprobe": 8, "passed_through": 0},
        },
        t + 3,
    )
    _stats(
        tmp_path,
        "balance",
        {
            "command": "balance",
            "in": 22,
            "out": 12,
            "dropped": {"sim_window": 4, "cap": 6},
            "stage": {
                "sim_window": {"lo": 0.2, "hi": 0.35, "chosen": "quantiles"},
                "emb_model": "tiny-clip",
                "per_cluster": 3,
                "before": {"clusters": 4, "gini": 0.3, "size_counts": {"9": 1, "5": 2}},
                "after": {"clusters": 4, "gini": 0.1, "size_counts": {"3": 4}},
            },
        },
        t + 4,
    )
    rng = np.random.default_rng(0)
    texts = [
        {
            "id": f"t{i}",
            "kind": "text",
            "text": f"sentence {i}",
            "scores": {
                "words": int(rng.integers(3, 40)),
                "entropy": float(rng.uniform(0.3, 3)),
                "ppl": float(rng.uniform(30, 200)),
                "cat": {"complexity": int(rng.integers(1, 6)), "actions": 1},
            },
        }
        for i in range(60)
    ]
    (tmp_path / "img").mkdir()
    e = encode_embeddings(rng.normal(size=(6, 8)))
    s = encode_embeddings(rng.normal(size=(6, 8)))
    images = []
    colors = ["red", "green", "blue", "orange", "purple", "teal"]
    for i in range(6):
        rec = {
            "id": f"i{i}",
            "kind": "image",
            "url": f"http://example.invalid/{i}.jpg",
            "texts": [
                {"id": f"t{j}", "text": f"a {colors[i]} thing number {j}", "score": 0.3 - j / 100} for j in range(3)
            ],
            "caption": f"a {colors[i]} square",
            "tags": [colors[i], "square"],
            "syn_text": f"A {colors[i]} square.",
            "emb_model": "tiny-clip",
            "caption_model": "tiny-blip",
            "llm_model": "tiny-llm",
        }
        if i < 3:  # local file by `path`
            (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg(colors[i]))
            rec["path"] = str(tmp_path / "img" / f"{i}.jpg")
        if i % 2:
            rec["sim"] = 0.2 + i / 50
        else:
            rec["emb"], rec["syn_emb"] = e[i], s[i]
        images.append(rec)
    images[5]["texts"][0]["text"] = HOSTILE
    images += [  # hostile fields: skipped or shown without harm, never a traceback
        {
            "id": "h1",
            "kind": "image",
            "texts": "x",
            "tags": 5,
            "sim": "0.3",
            "scores": [1],
            "emb": "!!",
            "syn_emb": "!",
        },
        {"id": "h2", "kind": "image", "texts": [{"text": 5, "score": "high"}], "path": 7, "scores": {"words": "many"}},
        {"id": "h3", "kind": "image", "path": "/etc/passwd", "syn_text": "outside the root", "tags": ["a", 3]},
    ]
    (tmp_path / "records.jsonl.zst").write_bytes(compress(jsonl(texts + images), "zstd"))
    packed = tmp_path / "packed"  # rsyn pack --format webdataset: images 3 and 4 come from here, 5 has none
    packed.mkdir()
    with tarfile.open(packed / "00000.tar", "w") as tar:
        for i in (3, 4):
            for suffix, data in (
                (".jpg", _jpeg(colors[i])),
                (".json", orjson.dumps({"raw_image_url": f"http://example.invalid/{i}.jpg"})),
            ):
                info = tarfile.TarInfo(f"0000{i}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (packed / "_stats.json").write_bytes(
        orjson.dumps(
            {"command": "pack", "in": 12, "out": 12, "dropped": {}, "errors": {}, "version": "0.1.0", "seed": 0}
        )
    )
    os.utime(packed / "_stats.json", (t + 5, t + 5))
    return tmp_path


def _report(run_dir, *extra):
    out = run_dir / "report.html"
    rsyn_here(
        "report",
        str(run_dir / "*.stats.json"),
        "--records",
        run_dir / "records.jsonl.zst",
        "--packed",
        run_dir / "packed",
        "--path-root",
        run_dir,
        "-o",
        out,
        *extra,
        check=True,
    )
    return out


def test_report_shows_gallery_funnel_figures_and_settings(run_dir):
    page = _report(run_dir).read_text()
    # gallery: six cards; thumbnails of the five images found (3 by path, 2 from the packed tars) as JPEG data URIs
    assert page.count("<figure class='card'>") == 7  # h1 and h2 have nothing to show
    assert len(re.findall(r"<img class='thumb' src='data:image/jpeg;base64,", page)) == 5
    assert page.count("no image: not found locally") == 1 and page.count("no image: outside_root") == 1
    assert "0.300</span> a red thing number 0" in page and "<b>tags</b> red, square" in page
    assert "cos 0.220" in page  # syn_text cosine from `sim`
    assert len(re.findall(r"cos -?0\.\d{3}", page)) == 6  # and computed from emb / syn_emb where there is no `sim`
    assert "Image vs synthetic text (n=6)" in page  # 3 `sim` + 3 computed; h1's undecodable pair left out
    # a hostile text is escaped, and the page may load nothing at all
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "default-src 'none'; img-src data:" in page
    # one funnel, documents to packed pairs, images and sentences apart
    funnel = page[page.index("id='funnel'") :]
    for step in (
        "documents</td><td class='num'>40",
        "after the image filters</td><td class='num'>30",
        "after the text filters</td><td class='num'>110",
        "indexed for retrieval</td><td class='num'>95",
        "with retrieved texts</td><td class='num'>22",
        "packed image-text pairs</td><td class='num'>12",
        "<th>images</th><td>embedded</td><td class='num'>25",
        "<th>images + sentences</th><td>after dedup (exact, near)</td><td class='num'>120",
    ):
        assert step in funnel, step
    assert "lane-images" in funnel and "lane-sentences" in funnel
    # every figure, as inline SVG with its text as text; thresholds and the similarity window marked
    for fid in ("fig-words", "fig-entropy", "fig-ppl", "fig-cat", "fig-top1", "fig-topk", "fig-sim", "fig-clusters"):
        assert f"id='{fid}'><svg" in page, fid
    assert "min_words 3" in page and "max_ppl 200" in page and "min_complexity 1" in page
    assert "kept: 0.2 to 0.35" in page
    # models, settings, version, date
    for name in ("tiny-clip", "tiny-gpt2", "en_core_web_sm", "tiny-blip (6 records)", "tiny-llm (6 records)"):
        assert name in page, name
    assert "2026-05-28" in page and "0.1.0" in page


def test_report_is_byte_identical_for_the_same_inputs_and_seed(run_dir):
    first = _report(run_dir).read_bytes()
    assert _report(run_dir).read_bytes() == first


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"command": "x", "in": "12", "out": 1}',
        '{"command": "x", "in": 1, "out": 1, "dropped": {"a": "<b>"}}',
        '{"command": "x", "in": 1, "out": 1, "stage": [1]}',
        "{not json",
    ],
)
def test_report_refuses_what_is_not_a_stats_file(tmp_path, content):
    bad = tmp_path / "x.json"
    bad.write_text(content)
    proc = rsyn_here("report", bad, "-o", tmp_path / "r.html")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "not a" in err and "Traceback" not in err and "<b>" not in err
    assert not (tmp_path / "r.html").exists()


def test_report_reads_packs_done_marker_by_either_name(run_dir):
    (run_dir / "packed" / "_stats.json").rename(run_dir / "packed" / "stats.json")
    page = _report(run_dir).read_text()
    assert "packed image-text pairs</td><td class='num'>12" in page


def test_report_packed_parquet_text_table(tmp_path):
    (tmp_path / "pack.stats.json").write_bytes(orjson.dumps({"command": "pack", "in": 2, "out": 2, "dropped": {}}))
    packed = tmp_path / "packed"
    packed.mkdir()
    pq.write_table(
        pa.table(
            {
                "raw_image_url": ["u1", "u2"],
                "text1": ["a dog runs", "two cats sleep on a mat"],
                "text2": ["x", None],
                "text3": [None, None],
                "syn_text": ["a b c d", "e f"],
            }
        ),
        packed / "00000.parquet",
    )
    out = tmp_path / "report.html"
    rsyn_here("report", tmp_path / "pack.stats.json", "--packed", packed, "-o", out, check=True)
    page = out.read_text()
    assert "Table 15" in page and "<td>text1</td><td>2</td><td>2</td><td>4.5</td>" in page


# --------------------------------------------------------------------------- in a real browser

PROBE = """<script>
window.addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  const visible = e => { const [w, h] = box(e); const s = getComputedStyle(e);
                         return w > 0 && h > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const gallery = document.getElementById('gallery'), funnel = document.getElementById('funnel');
  const thumbs = [...document.querySelectorAll('img.thumb')];
  const figures = [...document.querySelectorAll('.figure')].map(f => {
    const svg = f.querySelector('svg');
    return {id: f.id, visible: !!svg && visible(svg), size: svg ? box(svg) : null};
  });
  let svgFont = 1e9;  // the smallest label of any figure, in screen pixels
  for (const t of document.querySelectorAll('.figure svg text')) {
    const m = t.getScreenCTM(), px = parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b);
    if (t.textContent.trim()) svgFont = Math.min(svgFont, px);
  }
  let htmlFont = 1e9;
  for (const e of document.querySelectorAll('body *:not(svg):not(svg *)'))
    if ([...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) htmlFont = Math.min(htmlFont, parseFloat(getComputedStyle(e).fontSize));
  document.getElementById('probe-out').textContent = JSON.stringify({
    gallery: !!gallery && visible(gallery), cards: document.querySelectorAll('.card').length,
    funnel: !!funnel && visible(funnel), funnelRows: funnel ? funnel.querySelectorAll('tr').length : 0,
    thumbs: thumbs.map(i => ({data: i.src.startsWith('data:image/jpeg;base64,'), loaded: i.complete && i.naturalWidth > 0,
                              visible: visible(i)})),
    figures, svgFont, htmlFont});
});
</script><pre id="probe-out"></pre>"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _headless(browser, tmp_path, *args):
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--mute-audio",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2000",
            "--virtual-time-budget=5000",
            *map(str, args),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    # the page runs no script of its own: any console message is a failed load, a CSP refusal or an error
    console = [line for line in proc.stderr.decode(errors="replace").splitlines() if ":CONSOLE" in line]
    return proc.stdout.decode(errors="replace"), console


def test_report_in_headless_chromium(run_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here: .ci/run installs it (apt-get install chromium); this check needs a real browser")
    page = _report(run_dir)
    shot = run_dir / "report.png"
    _, console = _headless(browser, tmp_path, f"--screenshot={shot}", page.as_uri())
    assert console == []
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        assert len(image.convert("L").getcolors(1 << 16) or []) > 20  # drawn, not a blank page
    # the same page with a measuring script (and the CSP line letting only that inline script run)
    probed = run_dir / "probed.html"
    text = page.read_text().replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    dom, console = _headless(browser, tmp_path, "--dump-dom", probed.as_uri())
    assert console == []
    found = re.search(r'<pre id="probe-out">(.*?)</pre>', dom, re.DOTALL)
    assert found and found.group(1), "the measuring script did not run"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["gallery"] and result["cards"] == 7
    assert result["funnel"] and result["funnelRows"] == 13  # header, documents, 6 image, 4 sentence, 1 dedup
    assert len(result["thumbs"]) == 5
    assert all(t["data"] and t["loaded"] and t["visible"] for t in result["thumbs"]), result["thumbs"]
    assert {f["id"] for f in result["figures"]} == {
        "fig-words",
        "fig-entropy",
        "fig-ppl",
        "fig-cat",
        "fig-top1",
        "fig-topk",
        "fig-sim",
        "fig-clusters",
    }
    assert all(f["visible"] for f in result["figures"]), result["figures"]
    assert result["svgFont"] >= 11, result  # figure labels readable at the page's size
    assert result["htmlFont"] >= 11, result


def test_reservoir_sample_is_uniform_and_seeded():
    import random
    from collections import Counter

    from rsyn.stages.report import Reservoir

    counts = Counter()
    for seed in range(2000):
        sample = Reservoir(10, random.Random(seed))
        for i in range(100):
            sample.offer(i)
        assert len(sample.items) == len(set(sample.items)) == 10
        counts.update(sample.items)
    # each of the 100 items kept 200 times in expectation (sd 13.4): early and late items alike
    assert all(130 <= counts[i] <= 270 for i in range(100)), counts
    assert abs(sum(counts[i] for i in range(20)) - sum(counts[i] for i in range(80, 100))) < 250
    first, again = Reservoir(5, random.Random(7)), Reservoir(5, random.Random(7))
    for i in range(1000):
        first.offer(i), again.offer(i)
    assert first.items == again.items
