import numpy as np

from rsyn.records import encode_embeddings
from rsyn.vectors import VectorSpill, nearest_centroid, train_kmeans


def _clusters(seed=0, k=5, per=200, d=32):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    x = np.repeat(centers, per, axis=0) + 0.05 * rng.normal(size=(k * per, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(k), per)


def test_kmeans_recovers_planted_clusters_and_is_seeded():
    x, truth = _clusters()
    c1 = train_kmeans(x, 5, seed=3, nredo=5)
    c2 = train_kmeans(x, 5, seed=3, nredo=5)
    np.testing.assert_array_equal(c1, c2)
    labels, sims = nearest_centroid(x, c1)
    # every planted cluster maps to exactly one centroid
    for t in range(5):
        assert len(set(labels[truth == t])) == 1
    assert len(set(labels)) == 5 and sims.min() > 0.9


def test_spill_round_trips_through_disk():
    x, _ = _clusters(k=2, per=5000, d=16)
    with VectorSpill() as spill:
        for e in encode_embeddings(x):
            spill.add_encoded(e)
        m = spill.finish()
        assert m.shape == x.shape and m.dtype == np.float16
        np.testing.assert_allclose(np.asarray(m, dtype=np.float32), x, atol=2e-3)
        path = spill.path
    assert not path.exists()
