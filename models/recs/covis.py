"""Item co-occurrence counts in typed arrays: ~20 bytes of RSS a (item, neighbour) entry instead of ~45 in dicts.

The counts are the recommender's largest learned state (up to ``covis_row_cap`` neighbours for every item:
2M entries at 10k items); in dicts of ints they grew a worker's RSS past its +10% soak budget. Each row is a
pair of ``array.array``s: neighbour ids (int32) sorted ascending and their counts (int64, so a count never
wraps, as a Python int never did), updated in place with ``bisect``. The table changes per event, a few
entries at a time: a numpy call per entry would cost microseconds where a dict costs ~100 ns, while ``bisect``
on a typed array costs a few hundred ns, and the rows are still read by numpy without a copy for scoring and
checkpoints.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

_Row = tuple[array, array]  # (neighbour ids, typecode "i", sorted; their counts, typecode "q")


class CovisTable(Mapping[int, Mapping[int, int]]):
    """Symmetric co-occurrence counts: ``table[i]`` is a snapshot ``{neighbour: count}`` of item i's row."""

    def __init__(self) -> None:
        self._rows: dict[int, _Row] = {}

    def __getitem__(self, item: int) -> dict[int, int]:
        ids, counts = self._rows[item]
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def n_entries(self) -> int:
        """(item, neighbour) counts held, over all rows."""
        return sum(len(ids) for ids, _ in self._rows.values())

    def add(self, item: int, others: Sequence[int], cap: int) -> None:
        """Count ``item`` once with each of ``others`` (distinct, none equal to ``item``, each already with a
        row), in both rows. A row past ``cap`` is cut to its ``cap // 2`` strongest neighbours: an other's row
        right after its count, ``item``'s own row once all of its counts are in.

        The two row updates are written out rather than shared in a helper: this runs per event, and the calls
        cost a few percent of ``OnlineRecommender.update``."""
        rows = self._rows
        row_i = rows.get(item)
        if row_i is None:
            row_i = rows[item] = (array("i"), array("q"))
        ids_i, counts_i = row_i
        for j in others:
            p = bisect_left(ids_i, j)
            if p < len(ids_i) and ids_i[p] == j:
                counts_i[p] += 1
            else:
                ids_i.insert(p, j)
                counts_i.insert(p, 1)
            ids_j, counts_j = row_j = rows[j]
            p = bisect_left(ids_j, item)
            if p < len(ids_j) and ids_j[p] == item:
                counts_j[p] += 1
            else:
                ids_j.insert(p, item)
                counts_j.insert(p, 1)
            if len(ids_j) > cap:
                rows[j] = _strongest(row_j, cap // 2)
        if len(ids_i) > cap:
            rows[item] = _strongest(row_i, cap // 2)

    def sums(self, items: Iterable[int], n: int) -> np.ndarray:
        """Summed counts (float32, length ``n``) of every item with ``items``."""
        out = np.zeros(n, np.float32)
        for j in items:
            row = self._rows.get(j)
            if row is not None:
                out[np.asarray(row[0])] += np.asarray(row[1]).astype(np.float32)
        return out

    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(items int64, their row lengths int64, all neighbour ids int32, all counts int64), rows in table
        order: four arrays, which a checkpoint stores as tensors, instead of a dict per item."""
        rows = self._rows
        lengths = np.fromiter((len(ids) for ids, _ in rows.values()), np.int64, len(rows))
        ids = np.frombuffer(b"".join(ids for ids, _ in rows.values()), np.int32).copy()
        counts = np.frombuffer(b"".join(counts for _, counts in rows.values()), np.int64).copy()
        return np.fromiter(rows, np.int64, len(rows)), lengths, ids, counts

    @classmethod
    def from_state(cls, state: Sequence[np.ndarray] | Mapping[int, Mapping[int, float]]) -> CovisTable:
        """Rebuild from :meth:`state`, or from a checkpoint of the previous releases ({item: {neighbour:
        count}}, counts as ints or, before that, floats)."""
        table = cls()
        if isinstance(state, Mapping):
            for i, row in state.items():
                ids = np.fromiter(row.keys(), np.int64, len(row))
                counts = np.fromiter((int(c) for c in row.values()), np.int64, len(row))
                order = np.argsort(ids)
                table._rows[int(i)] = _row(ids[order], counts[order])
            return table
        items, lengths, ids, counts = state
        lengths = np.asarray(lengths, np.int64)
        ends = np.cumsum(lengths)
        if len(items) != len(lengths) or int(lengths.sum()) != len(ids) or len(ids) != len(counts):
            raise ValueError(f"co-occurrence state: {len(items)} items, {len(lengths)} row lengths adding up to "
                             f"{int(lengths.sum())}, {len(ids)} ids, {len(counts)} counts")
        for i, a, b in zip(np.asarray(items).tolist(), (ends - lengths).tolist(), ends.tolist(), strict=True):
            table._rows[i] = _row(ids[a:b], counts[a:b])
        return table


def _row(ids: np.ndarray, counts: np.ndarray) -> _Row:
    return array("i", np.asarray(ids, np.int32).tobytes()), array("q", np.asarray(counts, np.int64).tobytes())


def _strongest(row: _Row, keep: int) -> _Row:
    """The ``keep`` largest counts of a row (ties: the lower item index, so a replay after a restart prunes
    exactly as the first run did), still sorted by item index."""
    ids, counts = np.asarray(row[0]), np.asarray(row[1])
    top = np.sort(np.lexsort((ids, -counts))[:keep])
    return _row(ids[top], counts[top])
