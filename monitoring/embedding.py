"""Embedding drift as one scalar per event: how far a text's sentence embedding lies from the reference's.

Why a distance and not one signal per dimension: 16 projected dimensions as 16 signals would take 16 shares of
the false-alarm budget and still miss a shift spread thinly over many of them. The squared Mahalanobis
distance from the reference centroid (covariance from the same reference, ridge-regularised) grows with a shift
in any direction and with a wider spread; as a scalar signal it gets the monitor's usual treatment (its own
reference of distances, PIT, calibrated CUSUMs). The first ``n`` vectors fix the centroid and covariance; the
distances of later vectors are what the scalar signal sees, so its reference never reuses them (in-sample
distances would be too small).

>>> import numpy as np
>>> ref = EmbeddingReference(200)
>>> rng = np.random.default_rng(0)
>>> ref.distances(rng.normal(size=(150, 4)))
(array([], dtype=float64), 150)
>>> d, first = ref.distances(rng.normal(size=(100, 4)))
>>> first, d.size, 2 < float(d.mean()) < 7
(50, 50, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monitoring.signals import decode_array, encode_array

RIDGE = 1e-3  # relative to the mean variance: keeps the inverse stable for near-degenerate projections


class EmbeddingReference:
    def __init__(self, n: int) -> None:
        self.n = n
        self._collected: list[np.ndarray] = []
        self.mean: np.ndarray | None = None
        self.inverse: np.ndarray | None = None

    @property
    def ready(self) -> bool:
        return self.mean is not None

    @property
    def dim(self) -> int | None:
        """The vectors' length once one was seen: later ones must match it."""
        if self.mean is not None:
            return int(self.mean.size)
        return int(self._collected[0].size) if self._collected else None

    def distances(self, vectors: np.ndarray) -> tuple[np.ndarray, int]:
        """Squared distances of the vectors after the reference, and the index of the first one with a distance."""
        vectors = np.asarray(vectors, dtype=np.float64)
        first = 0
        if self.mean is None:
            first = min(len(vectors), self.n - len(self._collected))
            self._collected.extend(vectors[:first])
            if len(self._collected) >= self.n:
                self._fit(np.vstack(self._collected))
        if self.mean is None or self.inverse is None or first >= len(vectors):
            return np.zeros(0), first
        centred = vectors[first:] - self.mean
        return np.einsum("ij,jk,ik->i", centred, self.inverse, centred), first

    def _fit(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False)
        cov += np.eye(cov.shape[0]) * RIDGE * float(np.trace(cov)) / cov.shape[0]
        self.inverse = np.linalg.inv(cov)
        self._collected = []

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "collected": [encode_array(v) for v in self._collected],
                "mean": None if self.mean is None else encode_array(self.mean),
                "inverse": None if self.inverse is None else encode_array(self.inverse.ravel())}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EmbeddingReference:
        ref = cls(state["n"])
        ref._collected = [decode_array(v) for v in state["collected"]]
        if state["mean"] is not None:
            ref.mean = decode_array(state["mean"])
            ref.inverse = decode_array(state["inverse"]).reshape(ref.mean.size, ref.mean.size)
        return ref

