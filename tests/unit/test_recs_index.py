import numpy as np

from models.recs.index import ItemIndex


def test_upsert_replaces_vector() -> None:
    idx = ItemIndex(dim=3, kind="flat")
    idx.upsert(np.array([1, 2, 3]), np.eye(3))
    assert len(idx) == 3
    _, ids = idx.search(np.array([[1.0, 0, 0]]), 1)
    assert ids[0, 0] == 1
    idx.upsert(np.array([3]), np.array([[2.0, 0, 0]]))  # item 3 now points where item 1 did, but longer
    assert len(idx) == 3
    scores, ids = idx.search(np.array([[1.0, 0, 0]]), 3)
    assert ids[0, 0] == 3 and scores[0, 0] == 2.0
    # the old vector of item 3 is gone: nothing scores on the z axis any more
    scores, ids = idx.search(np.array([[0, 0, 1.0]]), 3)
    assert scores[0].max() == 0.0


def test_upsert_with_repeated_ids_keeps_last() -> None:
    idx = ItemIndex(dim=2, kind="flat")
    idx.upsert(np.array([5, 5]), np.array([[1.0, 0], [0, 1.0]]))
    assert len(idx) == 1
    scores, ids = idx.search(np.array([[0, 1.0]]), 2)
    assert ids[0].tolist() == [5, -1] and scores[0, 0] == 1.0


def test_switches_to_ivf_and_still_upserts() -> None:
    rng = np.random.default_rng(0)
    idx = ItemIndex(dim=8, kind="ivf", ivf_min_train=300, nprobe=64)
    vecs = rng.normal(size=(400, 8)).astype(np.float32)
    idx.upsert(np.arange(400), vecs)
    assert idx.is_approximate and len(idx) == 400
    target = np.full((1, 8), 10.0, np.float32)
    idx.upsert(np.array([7]), target)
    assert len(idx) == 400
    _, ids = idx.search(target, 1)
    assert ids[0, 0] == 7
    got_ids, got_vecs = idx.all_items()
    assert sorted(got_ids.tolist()) == list(range(400))
    np.testing.assert_allclose(got_vecs[got_ids.tolist().index(7)], target[0])
