from collections.abc import Sequence

import numpy as np
import pytest

from models.recs.baselines import BatchALS
from models.recs.events import ClickEvent
from models.recs.metrics import recall_ndcg_at_k, target_ranks
from models.recs.prequential import run_prequential


def test_target_ranks_ties_and_exclusion() -> None:
    scores = np.array([[0.1, 0.5, 0.3, 0.5], [0.9, 0.8, 0.7, 0.6]])
    # row 0: item 1 ties item 3 and comes first by index -> rank 1... plus nothing strictly greater -> 1
    assert target_ranks(scores, np.array([3, 3])).tolist() == [1, 3]
    assert target_ranks(scores, np.array([3, 3]), [[1], [0, 2]]).tolist() == [0, 1]
    rec, ndcg = recall_ndcg_at_k(np.array([0, 1, 2, 5]), k=2)
    assert rec == 0.5
    assert ndcg == pytest.approx((1.0 + 1.0 / np.log2(3)) / 4)


class _Fixed:
    """Always ranks items in a fixed order; records what it was trained on."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = np.array(scores, np.float32)
        self.updates: list[int] = []

    def update(self, events: Sequence[ClickEvent]) -> None:
        self.updates.append(len(events))

    def score_all(self, user_ids: Sequence[str]) -> np.ndarray:
        return np.tile(self.scores, (len(user_ids), 1))


def test_run_prequential_exact_on_hand_made_stream() -> None:
    catalog = [{"item_id": i} for i in "abcd"]
    ev = [
        ClickEvent("1", "u", "a", "rating", 5.0),  # batch 1: rank 0 -> hit@1
        ClickEvent("2", "u", "d", "rating", 2.0),  # below threshold: trained on, not evaluated
        ClickEvent("3", "u", "b", "rating", 4.0),  # batch 2: a and d are excluded as seen -> b ranks 0
        ClickEvent("4", "v", "c", "rating", 4.0),  # batch 2: v is cold, rank 2 -> miss@1
    ]
    m = _Fixed([4.0, 3.0, 2.0, 1.0])
    res = run_prequential(catalog, ev, methods={"fixed": m}, batch_size=2, k=1, verbose=False)
    row = res["methods"]["fixed"]
    assert res["n_eval"] == 3 and res["n_eval_warm"] == 1
    assert row["recall@1"] == pytest.approx(2 / 3)
    assert row["ndcg@1"] == pytest.approx(2 / 3)
    assert row["recall@1_warm"] == 1.0
    assert m.updates == [2, 2]


def _cluster_stream(n_users: int = 40) -> list[ClickEvent]:
    """Half the users like items a0..a9, half b0..b9; b items are more popular overall."""
    events = []
    for u in range(n_users):
        group = "a" if u % 4 == 0 else "b"
        for k in range(10):
            events.append(ClickEvent(f"{u}-{k}", f"u{u}", f"{group}{k}", "click", ts=len(events)))
    return events


@pytest.mark.parametrize("fold_in", [True, False])
def test_batch_als_serves_clicks_since_the_last_refit_only_with_fold_in(fold_in: bool) -> None:
    items = [f"{g}{k}" for g in "ab" for k in range(10)]
    als = BatchALS(items, refit_every=10_000, factors=4, reg=0.1, iters=10, fold_in=fold_in)
    als.update(_cluster_stream())
    als.fit()
    als.update([ClickEvent("new-1", "newcomer", "a1", "click"), ClickEvent("new-2", "newcomer", "a2", "click")])
    scores = als.score_all(["newcomer"])[0]
    a_mean, b_mean = scores[:10].mean(), scores[10:].mean()
    if fold_in:
        assert a_mean > b_mean  # solved from the newcomer's two clicks against the frozen item factors
    else:
        assert a_mean < b_mean  # unseen at the refit: served popularity, where b items lead
