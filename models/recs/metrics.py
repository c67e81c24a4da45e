"""Full-ranking metrics for prequential evaluation.

Ties are broken by catalog position (lower index ranks first), the same order a stable sort gives, so
popularity baselines with many zero scores are ranked deterministically rather than optimistically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """0-based rank of ``targets[r]`` in row ``r`` of ``scores`` after removing ``exclude[r]`` items."""
    s = np.array(scores, dtype=np.float64, copy=True)
    n, m = s.shape
    if exclude is not None:
        for r, ex in enumerate(exclude):
            if len(ex):
                s[r, np.fromiter(ex, np.int64)] = -np.inf
    rows = np.arange(n)
    ts = s[rows, targets]
    greater = (s > ts[:, None]).sum(1)
    cols = np.arange(m)[None, :]
    ties_before = ((s == ts[:, None]) & (cols < targets[:, None])).sum(1)
    return greater + ties_before


def recall_ndcg_at_k(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Single-target Recall@k (= hit rate) and NDCG@k (ideal DCG is 1) averaged over events."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0, 0.0
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(hit.mean()), float(ndcg.mean())
