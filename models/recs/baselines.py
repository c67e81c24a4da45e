"""Baselines scored in the same prequential run as the online model.

All share one interface: ``update(events)`` and ``score_all(user_ids) -> (n_users, n_items)`` over a fixed
catalog order, so evaluation treats them identically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models.recs.events import ClickEvent, event_weight


class _Catalog:
    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        self.iidx = {i: k for k, i in enumerate(self.item_ids)}

    def positives(self, events: Sequence[ClickEvent]) -> list[tuple[str, int, float]]:
        out = []
        for e in events:
            w = event_weight(e)
            if w > 0 and e.item_id in self.iidx:
                out.append((e.user_id, self.iidx[e.item_id], w))
        return out


class GlobalPopularity(_Catalog):
    """Count of interactions per item since the start of the stream."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        super().__init__(item_ids)
        self.counts = np.zeros(len(self.item_ids), np.float64)

    def update(self, events: Sequence[ClickEvent]) -> None:
        for _, i, _ in self.positives(events):
            self.counts[i] += 1

    def score_all(self, user_ids: Sequence[str]) -> np.ndarray:
        return np.broadcast_to(self.counts.astype(np.float32), (len(user_ids), len(self.item_ids)))


class RecentPopularity(_Catalog):
    """Interaction counts over the last ``window`` events: tracks trends that global counts smooth away."""

    def __init__(self, item_ids: Sequence[str], window: int = 5000) -> None:
        super().__init__(item_ids)
        self.window = window
        self.counts = np.zeros(len(self.item_ids), np.float64)
        self._buf: deque[int] = deque()

    def update(self, events: Sequence[ClickEvent]) -> None:
        for _, i, _ in self.positives(events):
            self._buf.append(i)
            self.counts[i] += 1
            if len(self._buf) > self.window:
                self.counts[self._buf.popleft()] -= 1

    def score_all(self, user_ids: Sequence[str]) -> np.ndarray:
        return np.broadcast_to(self.counts.astype(np.float32), (len(user_ids), len(self.item_ids)))


def _als_half(
    Y: np.ndarray,
    X: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    conf: np.ndarray,
    reg: float,
    cg_steps: int = 3,
) -> np.ndarray:
    """Implicit-ALS (Hu, Koren, Volinsky 2008) row update: a few conjugate-gradient steps, all rows at once.

    CG touches only the non-zeros (Takacs et al. 2011), so a refit on the full prefix takes about a second
    instead of solving one dense f x f system per user and per item in a Python loop (~30 s).
    """
    n_rows, f = X.shape
    order = np.argsort(rows, kind="stable")
    r, c, cf = rows[order], cols[order], conf[order]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
    YtY = Y.T @ Y + reg * np.eye(f)
    Yc = Y[c]

    def sparse_rows(data: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((data, c, indptr), shape=(n_rows, Y.shape[0]))

    def apply_a(V: np.ndarray) -> np.ndarray:
        t = (Yc * V[r]).sum(1) * (cf - 1.0)
        return V @ YtY + sparse_rows(t) @ Y

    b = sparse_rows(cf) @ Y
    X = X.copy()
    res = b - apply_a(X)
    p = res.copy()
    rs = (res * res).sum(1)
    for _ in range(cg_steps):
        Ap = apply_a(p)
        alpha = rs / np.maximum((p * Ap).sum(1), 1e-12)
        X += alpha[:, None] * p
        res -= alpha[:, None] * Ap
        rs_new = (res * res).sum(1)
        p = res + (rs_new / np.maximum(rs, 1e-20))[:, None] * p
        rs = rs_new
    return X


class BatchALS(_Catalog):
    """Implicit-feedback ALS refit from scratch on the whole prefix every ``refit_every`` events.

    Item factors are frozen between refits, like a nightly-retrained production model. With ``fold_in``
    (the default) a user's vector is solved at query time from all of their interactions so far against the
    frozen item factors -- the standard way to serve a batch MF model to users who clicked since the last
    refit. Without it, user vectors are frozen too and users unseen at the last refit get global popularity;
    on MovieLens' time-ordered stream (users rate in bursts) that leaves it no better than popularity.
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        refit_every: int = 5000,
        factors: int = 48,
        reg: float = 20.0,  # reg and alpha tuned on the prequential stream itself (README), as the online model was
        alpha: float = 1.0,
        iters: int = 10,
        seed: int = 0,
        fold_in: bool = True,
    ) -> None:
        super().__init__(item_ids)
        self.fold_in = fold_in
        self._history: dict[str, dict[int, float]] = {}  # user -> item -> summed weight, for fold-in
        self.refit_every, self.factors, self.reg, self.alpha, self.iters = (
            refit_every,
            factors,
            reg,
            alpha,
            iters,
        )
        self._rng = np.random.default_rng(seed)
        self._u: list[int] = []
        self._i: list[int] = []
        self._w: list[float] = []
        self._uidx: dict[str, int] = {}
        self._since = 0
        self.counts = np.zeros(len(self.item_ids), np.float64)
        self.X: np.ndarray | None = None
        self.Y: np.ndarray | None = None
        self._Y64 = np.zeros((0, factors))
        self._YtY_reg = np.zeros((factors, factors))
        self._fitted_users: dict[str, int] = {}
        self.n_refits = 0

    def update(self, events: Sequence[ClickEvent]) -> None:
        for u, i, w in self.positives(events):
            self._u.append(self._uidx.setdefault(u, len(self._uidx)))
            self._i.append(i)
            self._w.append(w)
            self.counts[i] += 1
            hist = self._history.setdefault(u, {})
            hist[i] = hist.get(i, 0.0) + w
        self._since += len(events)
        if self._since >= self.refit_every:
            self.fit()
            self._since = 0

    def fit(self) -> None:
        rows, cols = np.asarray(self._u, np.int64), np.asarray(self._i, np.int64)
        conf = 1.0 + self.alpha * np.asarray(self._w, np.float64)
        nu, ni = len(self._uidx), len(self.item_ids)
        Y = self._rng.normal(0, 0.01, (ni, self.factors))
        X = self._rng.normal(0, 0.01, (nu, self.factors))
        for _ in range(self.iters):
            X = _als_half(Y, X, rows, cols, conf, self.reg)
            Y = _als_half(X, Y, cols, rows, conf, self.reg)
        self.X, self.Y = X.astype(np.float32), Y.astype(np.float32)
        self._Y64, self._YtY_reg = Y, Y.T @ Y + self.reg * np.eye(self.factors)
        self._fitted_users = dict(self._uidx)
        self.n_refits += 1

    def score_all(self, user_ids: Sequence[str]) -> np.ndarray:
        out = np.empty((len(user_ids), len(self.item_ids)), np.float32)
        out[:] = self.counts.astype(np.float32)  # live popularity for users unseen at the last refit
        if self.X is not None and self.fold_in:
            for k, u in enumerate(user_ids):
                if u in self._history:
                    out[k] = self.Y @ self._fold_in(self._history[u]).astype(np.float32)
        elif self.X is not None:
            known = [(k, self._fitted_users[u]) for k, u in enumerate(user_ids) if u in self._fitted_users]
            if known:
                ks, us = zip(*known, strict=True)
                out[list(ks)] = self.X[list(us)] @ self.Y.T
        return out

    def _fold_in(self, history: dict[int, float]) -> np.ndarray:
        """The ALS user step for one user against the frozen item factors (Hu et al. eq. 4)."""
        items = np.fromiter(history.keys(), np.int64, len(history))
        conf = 1.0 + self.alpha * np.fromiter(history.values(), np.float64, len(history))
        Yh = self._Y64[items]
        A = self._YtY_reg + (Yh.T * (conf - 1.0)) @ Yh
        return np.linalg.solve(A, Yh.T @ conf)
