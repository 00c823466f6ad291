"""`rsyn balance` through the real command line: similarity window, per-cluster cap, --target, reproducibility.

Records are built with known clusters (unit vectors around orthogonal
centres) and known image/syn_text cosines; real faiss does the clustering.
"""

import random

import numpy as np
import orjson
import pytest
from conftest import compress, decode_stream, jsonl, read_stream_file, rsyn, rsyn_here
from hypothesis import given, settings
from hypothesis import strategies as st

from rsyn.records import encode_embeddings
from rsyn.stages.balance import cap_for_target, rank_in_cluster, size_distribution

DIM = 32
MODEL = "ViT-B-32/openai"


def make_records(sizes, sims=0.56, dim=DIM, model=MODEL, seed=0, prefix="r"):
    """Image records in clusters of the given sizes around orthogonal centres; cos(emb, syn_emb) = sims."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[: len(sizes)]
    n = sum(sizes)
    sims = np.broadcast_to(np.asarray(sims, dtype=np.float64), (n,))
    records, row = [], 0
    for c, size in enumerate(sizes):
        image = centres[c] + 0.05 * rng.standard_normal((size, dim))
        image /= np.linalg.norm(image, axis=1, keepdims=True)
        other = rng.standard_normal((size, dim))
        other -= (other * image).sum(1, keepdims=True) * image
        other /= np.linalg.norm(other, axis=1, keepdims=True)
        s = sims[row : row + size, None]
        syn = s * image + np.sqrt(1 - s * s) * other
        for i, (emb, syn_emb) in enumerate(zip(encode_embeddings(image), encode_embeddings(syn))):
            records.append(
                {
                    "id": f"{prefix}{c}-{i}",
                    "kind": "image",
                    "doc": f"doc{c}",
                    "url": f"http://h/{c}/{i}.jpg",
                    "emb": emb,
                    "emb_model": model,
                    "syn_emb": syn_emb,
                    "texts": [{"id": f"t{c}{i}", "text": f"text {c} {i}", "score": 0.3}],
                    "syn_text": f"synthetic {c} {i}",
                    "true_cluster": c,
                }
            )
        row += size
    return records, centres


def balance(*args, records=None, check=True):
    return rsyn_here(
        "balance", "--device", "cpu", *args, input=jsonl(records) if records is not None else None, check=check
    )


def stage_stats(path):
    return orjson.loads(open(path, "rb").read())


def by_true_cluster(records):
    counts = {}
    for r in records:
        counts[r["true_cluster"]] = counts.get(r["true_cluster"], 0) + 1
    return counts


@pytest.fixture
def clustered(tmp_path):
    """Four clusters of 50, 12, 3 and 1 records and their true centres as a .npy file."""
    records, centres = make_records([50, 12, 3, 1])
    np.save(tmp_path / "centres.npy", centres)
    return records, str(tmp_path / "centres.npy")


def test_caps_big_clusters_and_keeps_small_ones_whole(tmp_path, clustered):
    records, centres = clustered
    stats = tmp_path / "stats.json"
    out = balance(
        "--sim-range", "0.5", "0.6", "--centroids", centres, "--per-cluster", "10", "--stats", stats, records=records
    ).stdout
    kept = decode_stream(out)
    assert by_true_cluster(kept) == {0: 10, 1: 10, 2: 3, 3: 1}
    # one label per true cluster, the sim on every record
    assert all(len({r["cluster"] for r in kept if r["true_cluster"] == c}) == 1 for c in range(4))
    assert all(abs(r["sim"] - 0.56) < 2e-3 for r in kept)
    assert [r["id"] for r in kept] == [r["id"] for r in records if r["id"] in {k["id"] for k in kept}]  # input order
    s = stage_stats(stats)
    assert s["in"] == 66 and s["out"] == 24 and s["dropped"]["over_cluster_cap"] == 42
    assert s["stage"]["before"] == {
        "images": 66,
        "clusters": 4,
        "largest": 50,
        "max_share": round(50 / 66, 6),
        "gini": 0.590909,
        "singletons": 1,
        "median": 7.5,
        "mean": 16.5,
        "size_counts": {"1": 1, "3": 1, "12": 1, "50": 1},
    }
    assert s["stage"]["after"]["largest"] == 10 and s["stage"]["after"]["singletons"] == 1
    assert s["stage"]["after"]["gini"] == 0.354167
    # the pinned values, by the other definition of Gini: mean absolute difference over all pairs / (2 * mean)
    assert round(gini_by_pairs([1, 3, 12, 50]), 6) == 0.590909
    assert round(gini_by_pairs([1, 3, 10, 10]), 6) == 0.354167


def gini_by_pairs(sizes: list[int]) -> float:
    n = len(sizes)
    return sum(abs(a - b) for a in sizes for b in sizes) / (2 * n * n * (sum(sizes) / n))


def test_window_drops_outside_pairs_and_logs_them(tmp_path, clustered):
    _, centres = clustered
    sims = [0.3] * 5 + [0.56] * 10 + [0.8] * 5
    records, _ = make_records([20], sims=sims)
    rejects = tmp_path / "rejects.jsonl"
    proc = balance(
        "--sim-range",
        "0.51,0.61",
        "--centroids",
        centres,
        "--per-cluster",
        "100",
        "--rejects",
        rejects,
        records=records,
    )
    kept = decode_stream(proc.stdout)
    assert len(kept) == 10 and all(0.51 <= r["sim"] <= 0.61 for r in kept)
    logged = read_stream_file(rejects)
    assert sorted(e["reason"] for e in logged) == ["sim_above_window"] * 5 + ["sim_below_window"] * 5
    assert all(
        e["where"] == f"<stdin>:{records.index(next(r for r in records if r['id'] == e['record']['id'])) + 1}"
        for e in logged
    )
    assert "10 dropped (sim_below_window 5, sim_above_window 5)" in proc.stderr.decode()


def test_window_edges_are_inclusive(clustered):
    _, centres = clustered
    records, _ = make_records([40], sims=np.linspace(0.45, 0.65, 40))
    everything = decode_stream(
        balance("--sim-range", "-1", "1", "--centroids", centres, "--per-cluster", "100", records=records).stdout
    )
    sims = sorted({r["sim"] for r in everything})
    lo, hi = sims[10], sims[30]  # stored values: re-applying the window to them gives balance's decision
    kept = decode_stream(
        balance("--sim-range", str(lo), str(hi), "--centroids", centres, "--per-cluster", "100", records=records).stdout
    )
    assert {r["id"] for r in kept} == {r["id"] for r in everything if lo <= r["sim"] <= hi}
    assert {r["sim"] for r in kept} >= {lo, hi}


def test_target_picks_the_largest_cap_that_fits(tmp_path, clustered):
    _, centres = clustered
    records, _ = make_records([40, 20, 5, 1])
    stats = tmp_path / "stats.json"
    # sum(min(size, t)): t=12 gives 12+12+5+1 = 30, t=13 gives 32
    for target, expected in [(30, 30), (31, 30), (1000, 66)]:
        kept = decode_stream(
            balance(
                "--sim-range", "auto:0,1", "--centroids", centres, "--target", target, "--stats", stats, records=records
            ).stdout
        )
        assert len(kept) == expected
    assert stage_stats(stats)["stage"]["per_cluster"] == 40
    proc = balance("--sim-range", "auto:0,1", "--centroids", centres, "--target", "3", records=records, check=False)
    assert proc.returncode == 2 and "below the number of non-empty clusters (4)" in proc.stderr.decode()


def test_cap_for_target_and_ranks_directly():
    sizes = np.array([40, 20, 5, 1, 0])
    assert [cap_for_target(sizes, n) for n in (4, 7, 30, 31, 32, 65, 66, 10**6)] == [1, 2, 12, 12, 13, 39, 40, 40]
    labels = np.array([1, 0, 1, 1, 0])
    keys = np.array([30, 5, 10, 20, 1], dtype=np.uint64)
    assert rank_in_cluster(labels, keys, 2).tolist() == [2, 1, 0, 1, 0]
    d = size_distribution(np.array([1, 1, 1, 1]))
    assert d["gini"] == 0.0 and d["singletons"] == 4 and d["max_share"] == 0.25
    assert size_distribution(np.array([50, 1, 12, 3]))["gini"] == round(gini_by_pairs([50, 1, 12, 3]), 6) == 0.590909


def test_same_seed_same_bytes_and_order_and_split_do_not_matter(tmp_path):
    records, _ = make_records([60, 30, 10, 5], seed=1)
    args = ["--sim-range", "auto", "--clusters", "4", "--per-cluster", "8"]
    first = balance(*args, records=records).stdout
    assert balance(*args, records=records).stdout == first
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    (tmp_path / "b.jsonl").write_bytes(jsonl(shuffled[:50]))
    (tmp_path / "a.jsonl").write_bytes(jsonl(shuffled[50:]))
    split = decode_stream(balance(*args, tmp_path / "a.jsonl", tmp_path / "b.jsonl").stdout)

    def summary(rs):
        return sorted((r["id"], r["cluster"], r["sim"]) for r in rs)

    assert summary(split) == summary(decode_stream(first))
    other_seed = decode_stream(balance(*args, "--seed", "5", records=records).stdout)
    assert {r["id"] for r in other_seed} != {r["id"] for r in decode_stream(first)}


def test_whole_run_refuses_shard_and_names_the_passes(tmp_path, clustered):
    records, centres = clustered
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    proc = balance(
        "--sim-range",
        "0.5,0.6",
        "--centroids",
        centres,
        "--per-cluster",
        "7",
        tmp_path / "in.jsonl",
        "--shard",
        "0/3",
        "-o",
        tmp_path / "part0.jsonl.zst",
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1
    assert "scan, plan, assign, cap, filter" in err and "rsyn balance scan --shard K/N" in err
    assert not (tmp_path / "part0.jsonl.zst").exists()


def test_default_window_only_for_the_paper_model(tmp_path, clustered):
    _, centres = clustered
    records, _ = make_records([10], sims=[0.5] + [0.55] * 8 + [0.62])
    proc = balance("--per-cluster", "5", records=records, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "0.51..0.61 holds for EVA02-E-14-plus only" in err and "--sim-range auto" in err
    eva, _ = make_records([10], sims=[0.5] + [0.55] * 8 + [0.62], model="EVA02-E-14-plus/laion2b_s9b_b144k")
    stats = tmp_path / "stats.json"
    kept = decode_stream(balance("--per-cluster", "100", "--centroids", centres, "--stats", stats, records=eva).stdout)
    assert len(kept) == 8
    assert stage_stats(stats)["stage"]["sim_window"] == {
        "lo": 0.51,
        "hi": 0.61,
        "chosen": "paper default for EVA02-E-14-plus",
    }


def test_auto_window_uses_quantiles_of_observed_sims(tmp_path, clustered):
    _, centres = clustered
    records, _ = make_records([200], sims=np.linspace(0.2, 0.4, 200))
    stats = tmp_path / "stats.json"
    kept = decode_stream(
        balance(
            "--sim-range", "auto", "--centroids", centres, "--per-cluster", "1000", "--stats", stats, records=records
        ).stdout
    )
    window = stage_stats(stats)["stage"]["sim_window"]
    assert "quantiles 0.075..0.925" in window["chosen"]
    assert 0.21 < window["lo"] < 0.22 and 0.38 < window["hi"] < 0.39
    assert 165 <= len(kept) <= 172  # 85% of 200


def test_bad_records_name_their_line_or_are_counted(tmp_path, clustered):
    _, centres = clustered
    records, _ = make_records([6])
    del records[3]["syn_emb"]
    records[4]["emb"] = "not base64!"
    records[5]["syn_emb_model"] = "another-model"
    text = {"id": "t", "kind": "text", "doc": "d", "text": "a sentence"}
    stream = jsonl(records[:2] + [text] + records[2:])
    args = ["--sim-range", "0.5", "0.6", "--centroids", centres, "--per-cluster", "9"]
    proc = rsyn("balance", "--device", "cpu", *args, input=stream)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.strip() == (
        "rsyn: error: <stdin>:5: image record has no `syn_emb` "
        "(run `rsyn embed --text-field syn_text --emb-field syn_emb`)"
    )
    stats = tmp_path / "stats.json"
    proc = rsyn_here(
        "balance", "--device", "cpu", *args, "--on-error", "skip", "--stats", stats, input=stream, check=True
    )
    assert len(decode_stream(proc.stdout)) == 3
    s = stage_stats(stats)
    assert s["errors"] == {"missing_field": 1, "bad_embedding": 1, "model_mismatch": 1}
    assert s["dropped"]["not_image"] == 1


def test_rerun_on_its_own_output_is_stable(clustered):
    records, centres = clustered
    args = ["--sim-range", "0.5,0.6", "--centroids", centres, "--per-cluster", "10"]
    once = balance(*args, records=records).stdout
    twice = rsyn_here("balance", "--device", "cpu", *args, input=once, check=True).stdout
    assert decode_stream(twice) == decode_stream(once)


def test_saved_centroids_reproduce_the_clusters(tmp_path):
    records, _ = make_records([30, 20, 10], seed=3)
    saved = tmp_path / "c.npy"
    first = decode_stream(
        balance(
            "--sim-range", "auto", "--clusters", "3", "--per-cluster", "100", "--save-centroids", saved, records=records
        ).stdout
    )
    assert np.load(saved).shape == (3, DIM)
    again = decode_stream(
        balance("--sim-range", "auto", "--centroids", saved, "--per-cluster", "100", records=records).stdout
    )
    assert [(r["id"], r["cluster"]) for r in again] == [(r["id"], r["cluster"]) for r in first]


def test_files_are_read_twice_and_give_the_same_bytes_as_stdin(tmp_path, clustered):
    records, centres = clustered
    lines = [orjson.dumps(r) for r in records]
    lines[3] = lines[3] + b"   "  # trailing blanks: still spliced correctly
    lines[63] = orjson.dumps(records[63], option=orjson.OPT_INDENT_2).replace(b"\n", b"")  # spaces inside, kept
    lines.insert(10, b"")  # a blank line does not shift the line numbers
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(compress(data, "gzip"))
    args = ["--sim-range", "0.5,0.6", "--centroids", centres, "--per-cluster", "10"]
    from_stdin = rsyn("balance", "--device", "cpu", *args, input=data, check=True).stdout  # a real pipe
    rejects = tmp_path / "rejects.jsonl"
    from_file = balance(*args, path, "--rejects", rejects).stdout
    # the same records; bytes differ only where the input line had blanks inside (kept as they were)
    assert decode_stream(from_file) == decode_stream(from_stdin) and len(decode_stream(from_file)) == 24
    assert balance(*args, path).stdout == from_file
    for entry in read_stream_file(rejects):
        lineno = int(entry["where"].rsplit(":", 1)[1])
        assert orjson.loads(data.split(b"\n")[lineno - 1])["id"] == entry["record"]["id"]


def test_sim_range_spellings():
    from rsyn.command import join_two_words
    from rsyn.errors import RsynError
    from rsyn.stages.balance import SimRange, parse_sim_range

    assert parse_sim_range("0.5..0.6") == parse_sim_range("0.5,0.6") == SimRange(lo=0.5, hi=0.6)
    assert parse_sim_range("auto") == SimRange(quantiles=(0.075, 0.925))
    assert parse_sim_range("auto:0.1,0.9") == SimRange(quantiles=(0.1, 0.9))
    assert parse_sim_range(None) == SimRange()
    for bad in ["0.6,0.5", "auto:0.9,0.1", "abc", "0.5,x", "2,3"]:
        with pytest.raises(RsynError):
            parse_sim_range(bad)
    with pytest.raises(RsynError, match="give the upper bound too"):
        parse_sim_range("0.5")
    # `--sim-range LO HI` is read as one two-word option: HI never lands among the inputs, even when a file of
    # that name exists or HI is negative; a range given in one word takes one word
    flags = {"--sim-range"}
    assert join_two_words(["a.jsonl", "--sim-range", "0.5", "0.6", "b"], flags) == [
        "a.jsonl",
        "--sim-range=0.5,0.6",
        "b",
    ]
    assert join_two_words(["--sim-range", "-0.2", "-0.1"], flags) == ["--sim-range=-0.2,-0.1"]
    assert join_two_words(["--sim-range=0.5", "0.6"], flags) == ["--sim-range=0.5,0.6"]
    assert join_two_words(["--sim-range", "0.5,0.6", "0.7"], flags) == ["--sim-range=0.5,0.6", "0.7"]
    assert join_two_words(["--sim-range", "auto", "0.7"], flags) == ["--sim-range=auto", "0.7"]
    assert join_two_words(["--", "--sim-range", "1", "2"], flags) == ["--", "--sim-range", "1", "2"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.integers(1, 2000))
def test_cap_for_target_is_the_largest_cap_that_fits(sizes, target):
    sizes = np.array(sizes)

    def total(t):
        return int(np.minimum(sizes, t).sum())

    t = cap_for_target(sizes, target)
    if (sizes > 0).sum() > target:
        assert t == 0
    elif sizes.sum() <= target:
        assert t == sizes.max()
    else:
        assert total(t) <= target < total(t + 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2**63)), min_size=1, max_size=60, unique_by=lambda x: x[1]))
def test_ranks_order_each_cluster_by_key(members):
    labels = np.array([m[0] for m in members])
    keys = np.array([m[1] for m in members], dtype=np.uint64)
    ranks = rank_in_cluster(labels, keys, 5)
    for c in range(5):
        mine = np.flatnonzero(labels == c)
        assert sorted(ranks[mine].tolist()) == list(range(len(mine)))
        assert ranks[mine[np.argsort(keys[mine])]].tolist() == list(range(len(mine)))


def test_old_option_name_still_works_hidden_and_negative_bounds_take_two_words(tmp_path, clustered):
    records, centres = clustered
    spill = tmp_path / "spill"
    spill.mkdir()
    args = ["--sim-range", "-0.9", "-0.1", "--centroids", centres, "--per-cluster", "5"]
    new = balance(*args, "--tmp-dir", spill, records=make_records([4], sims=-0.5)[0]).stdout
    old = balance(*args, "--spill-dir", spill, records=make_records([4], sims=-0.5)[0]).stdout
    assert new == old and len(decode_stream(new)) == 4  # -0.1 is the upper bound, not an option or an input
    proc = balance(*args, "--spill-dir", spill, "--tmp-dir", spill, records=records, check=False)
    assert proc.returncode == 2 and proc.stderr.decode() == (
        "rsyn: error: --spill-dir is the old name of --tmp-dir: give --tmp-dir only\n"
    )
