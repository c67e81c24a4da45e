"""FAISS item index with upserts.

Item embeddings move on every online update, so the index must replace vectors in place. Exact search
(``IndexIDMap2`` over ``IndexFlatIP``) is used up to ``flat_max`` items; beyond that an IVF-Flat index is
trained on the current vectors, because IVF supports ``remove_ids`` (HNSW in FAISS does not, which would
force tombstones and periodic rebuilds).
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["auto", "flat", "ivf"]


class ItemIndex:
    """Maximum-inner-product search over int64 item ids with ``upsert``/``remove``."""

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "auto",
        flat_max: int = 100_000,
        ivf_min_train: int = 4096,
        nprobe: int = 16,
    ) -> None:
        if kind not in ("auto", "flat", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}")
        self.dim = dim
        self.kind = kind
        self.flat_max = flat_max
        self.ivf_min_train = ivf_min_train
        self.nprobe = nprobe
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.is_approximate = False

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def _switch_threshold(self) -> int | None:
        if self.kind == "flat" or self.is_approximate:
            return None
        return self.flat_max if self.kind == "auto" else self.ivf_min_train

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace vectors; the last occurrence wins if ``ids`` repeats."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(ids.size, self.dim)
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(ids.size - 1 - last)
        ids, vectors = ids[keep], vectors[keep]
        self._index.remove_ids(ids)
        self._index.add_with_ids(vectors, ids)
        threshold = self._switch_threshold()
        if threshold is not None and len(self) > threshold:
            self._to_ivf()

    def replace_all(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Drop everything and load ``ids``/``vectors``: cheaper than remove+add when every row changed."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(np.unique(ids)) != ids.size:
            raise ValueError("replace_all needs unique ids")
        self._index.reset()
        self._index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32).reshape(ids.size, self.dim), ids
        )
        threshold = self._switch_threshold()
        if threshold is not None and len(self) > threshold:
            self._to_ivf()

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(np.asarray(ids, dtype=np.int64).ravel()))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each (n, k); missing slots have id -1 and score -inf."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k_eff = min(k, len(self))
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        if k_eff == 0:
            return scores, ids
        s, i = self._index.search(q, k_eff)
        valid = i >= 0
        scores[:, :k_eff] = np.where(valid, s, -np.inf)
        ids[:, :k_eff] = i
        return scores, ids

    def all_items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) currently stored; used for snapshots and for the flat→IVF switch."""
        n = len(self)
        if n == 0:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        if self.is_approximate:
            ivf = faiss.extract_index_ivf(self._index)
            inv = ivf.invlists
            ids_l, vec_l = [], []
            for lst in range(ivf.nlist):
                sz = inv.list_size(lst)
                if sz == 0:
                    continue
                ids_l.append(faiss.rev_swig_ptr(inv.get_ids(lst), sz).copy())
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), sz * self.dim * 4).copy()
                vec_l.append(codes.view(np.float32).reshape(sz, self.dim))
            return np.concatenate(ids_l), np.concatenate(vec_l)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vecs = self._index.index.reconstruct_n(0, n)
        return ids, vecs

    def _to_ivf(self) -> None:
        ids, vecs = self.all_items()
        nlist = max(1, int(4 * math.sqrt(len(ids))))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vecs)
        ivf.nprobe = self.nprobe
        ivf.add_with_ids(vecs, ids)
        self._index = ivf
        self.is_approximate = True
