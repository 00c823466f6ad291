"""`rsyn balance scan | plan | assign | cap | filter` over 4 shards equals the one-process `rsyn balance`.

The corpus has several input files, text records, bad records (--on-error skip), records that share an id (equal
keys: ties broken by file and line) and clusters larger and smaller than the cut-off. Real faiss trains k-means.
"""

import io
import json

import numpy as np
import orjson
import pytest
import zstandard
from conftest import jsonl, rsyn_here
from hypothesis import given, settings
from hypothesis import strategies as st
from test_balance import make_records

import rsyn.stages.balance as balance_stage
from rsyn.stages.balance import (
    HIST_BINS,
    SIM_SCALE,
    CellSearch,
    NearestCentroid,
    SimRange,
    build_cells,
    hist_value_at,
    quantile_position,
    window_bounds,
)

SHARDS = 4


def lines_of(path) -> list[bytes]:
    if not path.exists():  # --rejects is created by the first reject
        return []
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    return [line for line in data.split(b"\n") if line.strip()]


def call(*args):
    return rsyn_here(*map(str, args), check=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three input files; 480 image records around 8 Zipf-sized clusters with spread sims, plus noise."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(3)
    sizes = [150, 90, 60, 40, 25, 12, 6, 2]
    sims = np.round(rng.uniform(0.40, 0.70, sum(sizes)), 3)  # coarse: many equal sims at the window edges
    records, _ = make_records(sizes, sims=sims, seed=5)
    for i in range(0, len(records), 7):  # records sharing an id: equal keys, different lines
        twin = dict(records[i + 1])
        twin["id"] = records[i]["id"]
        records[i + 1] = twin
    order = rng.permutation(len(records))
    records = [records[i] for i in order]
    records.insert(17, {"id": "t1", "kind": "text", "doc": "d", "text": "a sentence"})
    records.insert(
        200, {"id": "bad", "kind": "image", "emb": "not base64!", "syn_emb": "x", "emb_model": records[5]["emb_model"]}
    )
    records.insert(
        333, {"id": "nosyn", "kind": "image", "emb": records[5]["emb"], "emb_model": records[5]["emb_model"]}
    )
    paths = []
    for f, part in enumerate(np.array_split(np.arange(len(records)), 3)):
        path = root / f"in{f}.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(jsonl([records[i] for i in part])))
        paths.append(path)
    return root, paths


def whole(root, paths, name, window, cut):
    out, rejects, stats = root / f"{name}.jsonl.zst", root / f"{name}.rejects.jsonl", root / f"{name}.stats.json"
    call(
        "balance",
        *paths,
        "--device",
        "cpu",
        "--sim-range",
        window,
        "--clusters",
        6,
        *cut,
        "--on-error",
        "skip",
        "-o",
        out,
        "--rejects",
        rejects,
        "--stats",
        stats,
    )
    return lines_of(out), lines_of(rejects), json.loads(stats.read_text())


@pytest.fixture(scope="module")
def scans(corpus):
    root, paths = corpus
    out = []
    for k in range(SHARDS):
        scan = root / "work" / "scan" / str(k)
        call(
            "balance",
            "scan",
            *paths,
            "--shard",
            f"{k}/{SHARDS}",
            "--on-error",
            "skip",
            "-o",
            scan,
            "--rejects",
            root / f"scan{k}.rejects.jsonl",
            "--stats",
            root / f"scan{k}.stats.json",
        )
        assert (scan / "done.json").exists()
        out.append(scan)
    return out


def assert_same_records(single: list[bytes], parts: list[list[bytes]]):
    """The same lines byte for byte, each part in the single run's order (whatever rule --shard used)."""
    assert sorted(line for part in parts for line in part) == sorted(single)
    position = {line: i for i, line in enumerate(single)}
    assert len(position) == len(single)  # lines are unique, so the order check below means something
    for part in parts:
        places = [position[line] for line in part]
        assert places == sorted(places)


@pytest.mark.parametrize(
    "window, search", [("0.5,0.6", "exact"), ("auto", "exact"), ("auto", "cells"), ("0.5,0.6", "cells")]
)
def test_four_shards_equal_the_single_run(corpus, scans, window, search, monkeypatch):
    root, paths = corpus
    if search == "cells":  # the assignment through cells of the centroids, used from CELLS_FROM clusters on
        monkeypatch.setattr(balance_stage, "CELLS_FROM", 2)
        monkeypatch.setattr(balance_stage, "CELL_PROBES", 1)
        # and a capped training sample (the default cap is 65,536): the same rows whichever shard holds them
        monkeypatch.setattr(balance_stage, "KMEANS_SAMPLE_MAX", 100)
    work = root / "work" / f"{window.replace(',', '-')}-{search}"
    plan = work / "plan"
    call(
        "balance",
        "plan",
        *scans,
        "--device",
        "cpu",
        "--sim-range",
        window,
        "--clusters",
        6,
        "-o",
        plan,
        "--stats",
        work / "plan.stats.json",
    )
    assigns = [work / "assign" / str(k) for k in range(SHARDS)]
    for scan, assign in zip(scans, assigns):
        call("balance", "assign", scan, "--plan", plan, "--device", "cpu", "-o", assign)
    scan_rejects = [line for k in range(SHARDS) for line in lines_of(root / f"scan{k}.rejects.jsonl")]
    for name, cut in [("per-cluster", ["--per-cluster", 20]), ("target", ["--target", 130])]:
        single, single_rejects, single_stats = whole(root, paths, f"{window}-{name}", window, cut)
        cap = work / f"cap-{name}"
        call("balance", "cap", *assigns, *cut, "-o", cap, "--stats", work / f"cap-{name}.stats.json")
        outputs, rejects, dropped = [], list(scan_rejects), {}
        for k, assign in enumerate(assigns):
            out, rej, stats = (
                work / f"{name}-{k}.jsonl.zst",
                work / f"{name}-{k}.rejects.jsonl",
                work / f"{name}-{k}.stats.json",
            )
            call("balance", "filter", assign, "--cap", cap, "-o", out, "--rejects", rej, "--stats", stats)
            outputs.append(lines_of(out))
            rejects += lines_of(rej)
            for reason, n in json.loads(stats.read_text())["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + n
        assert_same_records(single, outputs)
        assert sorted(rejects) == sorted(single_rejects)
        # every reason occurs: the test covers the window, the cap and bad input
        reasons = {orjson.loads(line)["reason"] for line in single_rejects}
        assert reasons == {
            "not_image",
            "sim_below_window",
            "sim_above_window",
            "over_cluster_cap",
            "missing_field",
            "bad_embedding",
        }
        assert {**single_stats["dropped"], "not_image": 0} == {**dropped, "not_image": 0}
        cap_stage = json.loads((work / f"cap-{name}.stats.json").read_text())["stage"]
        for key in ("per_cluster", "before", "after", "clusters"):
            assert cap_stage[key] == single_stats["stage"][key], key
        plan_stage = json.loads((work / "plan.stats.json").read_text())["stage"]
        assert plan_stage["sim_window"] == single_stats["stage"]["sim_window"]
        assert plan_stage["assign"]["search"] == single_stats["stage"]["assign"]["search"] == search
        assert plan_stage["kmeans"] == single_stats["stage"]["kmeans"]
        if search == "cells":
            assert plan_stage["kmeans"]["train_points"] == 100
        if name == "target":
            assert len(single) <= 130 and single_stats["stage"]["per_cluster"] > 1


def test_pass_directories_are_checked(corpus, scans, tmp_path):
    root, paths = corpus
    proc = rsyn_here("balance", "plan", str(root), "--sim-range", "auto", "-o", str(tmp_path / "p"))
    assert proc.returncode == 2 and "not a finished `rsyn balance scan` directory" in proc.stderr.decode()
    assert not (tmp_path / "p").exists() and not list(tmp_path.iterdir())  # a failed pass leaves nothing
    proc = rsyn_here(
        "balance", "plan", *map(str, scans), "--seed", "3", "--sim-range", "auto", "-o", str(tmp_path / "p")
    )
    assert proc.returncode == 2 and "give every pass the same --seed" in proc.stderr.decode()
    proc = rsyn_here("balance", "plan", *map(str, scans), "--shard", "0/2", "-o", str(tmp_path / "p"))
    assert proc.returncode == 2 and "takes no --shard" in proc.stderr.decode()
    proc = rsyn_here("balance", "plan", *map(str, scans), "-o", str(tmp_path / "p"))
    assert proc.returncode == 2 and "holds for EVA02-E-14-plus only" in proc.stderr.decode()


def test_filter_refuses_an_input_that_changed(tmp_path):
    records, _ = make_records([30, 10], sims=0.55)
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(records))
    call("balance", "scan", src, "-o", tmp_path / "scan")
    call(
        "balance",
        "plan",
        tmp_path / "scan",
        "--sim-range",
        "auto",
        "--clusters",
        2,
        "--device",
        "cpu",
        "-o",
        tmp_path / "plan",
    )
    call(
        "balance",
        "assign",
        tmp_path / "scan",
        "--plan",
        tmp_path / "plan",
        "--device",
        "cpu",
        "-o",
        tmp_path / "assign",
    )
    call("balance", "cap", tmp_path / "assign", "--per-cluster", 5, "-o", tmp_path / "cap")
    src.write_bytes(jsonl(records[::-1]))
    proc = rsyn_here(
        "balance",
        "filter",
        str(tmp_path / "assign"),
        "--cap",
        str(tmp_path / "cap"),
        "-o",
        str(tmp_path / "out.jsonl.zst"),
    )
    assert proc.returncode == 2 and "changed since `rsyn balance scan` read it" in proc.stderr.decode()
    assert not (tmp_path / "out.jsonl.zst").exists()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-SIM_SCALE, SIM_SCALE), min_size=1, max_size=300),
    st.floats(0, 1),
    st.sampled_from([0.0, 0.075, 0.5, 0.925, 1.0]),
)
def test_histogram_quantiles_equal_numpy_inverted_cdf(codes, q, fixed):
    """The auto window from merged histograms is exactly np.quantile(sims, q, method="inverted_cdf")."""
    codes = np.array(codes)
    sims = codes / SIM_SCALE
    hist = np.bincount(codes + SIM_SCALE, minlength=HIST_BINS)
    cumulative = np.cumsum(hist)
    for quantile in (q, fixed):
        expected = np.quantile(sims, quantile, method="inverted_cdf")
        assert hist_value_at(cumulative, quantile_position(len(codes), quantile)) / SIM_SCALE == expected
    lo, hi, _ = window_bounds(SimRange(quantiles=(min(q, fixed), max(q, fixed) or 1.0)), hist)
    assert lo == np.quantile(sims, min(q, fixed), method="inverted_cdf")


def test_nearest_centroid_is_exact_and_batch_invariant():
    """Near-ties (points midway between centroids, duplicate centroids) get the exact float64 argmax, lowest index."""
    rng = np.random.default_rng(0)
    dim, k = 64, 40
    centroids = rng.standard_normal((k, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids[7] = centroids[3]  # an exact tie: label 3 must win
    pairs = rng.integers(0, k, (3000, 2))
    x = centroids[pairs[:, 0]] + centroids[pairs[:, 1]] + 1e-4 * rng.standard_normal((3000, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    scores = x.astype(np.float64) @ centroids.astype(np.float64).T
    nearest = NearestCentroid(centroids, "cpu")
    batch = nearest.labels(x)
    one_by_one = np.concatenate([nearest.labels(x[i : i + 1]) for i in range(0, 3000, 1)][:3000])
    # exact: within float64 rounding of the best, the lowest index
    best = scores.max(axis=1, keepdims=True)
    exact = np.argmax(scores >= best - 1e-12, axis=1)
    assert (batch == exact).all() and (one_by_one == batch).all()
    assert 7 not in set(batch.tolist())


def test_cell_search_is_batch_invariant_on_near_ties_of_cells():
    """Images midway between two cells or two centroids get the same label in any batch: a function of the row."""
    rng = np.random.default_rng(0)
    dim, k = 64, 400
    centroids = rng.standard_normal((k, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(balance_stage, "CELL_PROBES", 1)  # one cell: which one decides the label
        search = CellSearch(centroids, *build_cells(centroids, seed=0))
        cells = search.coarse
        x = []
        for vectors in (cells, centroids):  # near-ties between cells, and between centroids
            pairs = rng.integers(0, len(vectors), (1500, 2))
            x.append(vectors[pairs[:, 0]] + vectors[pairs[:, 1]] + 1e-6 * rng.standard_normal((1500, dim)))
        x = np.concatenate(x)
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        batch = search.labels(x)
        one_by_one = np.concatenate([search.labels(x[i : i + 1]) for i in range(len(x))])
    assert (batch == one_by_one).all()


# The documented tolerance (docs/balance_pack.md): with the default CELL_PROBES, at least this share of the
# images get the exact nearest centroid. Clustered data whose true clusters are split over several centroids,
# so many images lie near a border between centroids.
CELL_AGREEMENT = 0.985


def test_cell_search_agrees_with_the_exact_nearest_centroid():
    rng = np.random.default_rng(1)
    dim, k, true_clusters = 64, 2500, 600
    centres = rng.standard_normal((true_clusters, dim)).astype(np.float32)

    def points(n):
        x = centres[rng.integers(0, true_clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)

    from rsyn.vectors import train_kmeans

    centroids = train_kmeans(points(4 * k), k, seed=0, niter=4, max_points_per_centroid=4, two_level=False)
    assert k >= balance_stage.CELLS_FROM  # the default plan would choose the cells at this k
    x = points(4000)
    exact = NearestCentroid(centroids, "cpu").labels(x)
    approximate = CellSearch(centroids, *build_cells(centroids, seed=0)).labels(x)
    agreement = float((approximate == exact).mean())
    assert agreement >= CELL_AGREEMENT, agreement
    assert agreement < 1.0  # the search is approximate here: the bound above is what the test checks


def test_default_sample_is_capped_but_keeps_a_floor_per_cluster():
    """256 per cluster, at most 262,144 in all (training cost stops growing with N), at least 8 per cluster."""
    assert balance_stage.default_kmeans_sample(100) == 25_600
    assert balance_stage.default_kmeans_sample(1024) == balance_stage.default_kmeans_sample(4049) == 262_144
    assert balance_stage.default_kmeans_sample(1_000_000) == 8_000_000  # the floor: 8 per cluster


def test_plan_trains_with_faiss_on_one_thread(tmp_path, monkeypatch):
    """faiss's float32 products change in the last bits with its thread count; plan pins it while it trains."""
    import faiss

    import rsyn.vectors

    records, _ = make_records([30, 10], sims=0.55)
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(records))
    call("balance", "scan", src, "-o", tmp_path / "scan")
    seen = []
    train = rsyn.vectors.train_kmeans

    def spy(*args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return train(*args, **kwargs)

    monkeypatch.setattr(rsyn.vectors, "train_kmeans", spy)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        call("balance", "plan", tmp_path / "scan", "--sim-range", "auto", "--clusters", 2, "-o", tmp_path / "plan")
        assert faiss.omp_get_max_threads() == 2  # restored afterwards
    finally:
        faiss.omp_set_num_threads(before)
    assert seen == [1]
