"""The compact co-occurrence table (models/recs/covis.py) against the dict-of-dicts it replaced.

The reference below is the previous release's code: every count, every pruning decision (ties included) and
every score must come out the same, and its checkpoints must still load.
"""

import io
import tracemalloc

import numpy as np
import pytest
import torch

from models.recs.covis import CovisTable
from models.recs.events import ClickEvent, event_weight
from models.recs.online_model import OnlineRecommender, RecsConfig
from processors.recs import _arrays_as_tensors, _tensors_as_arrays


def ref_add(covis: dict[int, dict[int, int]], i: int, hist: list[int], cap: int) -> None:
    """The previous release's update of the table (OnlineRecommender._add_covis without the history)."""
    row_i = covis.get(i)
    if row_i is None:
        row_i = covis[i] = {}
    for j in hist:
        row_i[j] = row_i.get(j, 0) + 1
        row_j = covis[j]
        row_j[i] = row_j.get(i, 0) + 1
        if len(row_j) > cap:
            covis[j] = ref_strongest(row_j, cap // 2)
    if len(row_i) > cap:
        covis[i] = ref_strongest(row_i, cap // 2)


def ref_strongest(row: dict[int, int], keep: int) -> dict[int, int]:
    return dict(sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:keep])


def ref_sums(covis: dict[int, dict[int, int]], items: list[int], n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for j in items:
        row = covis.get(j)
        if row:
            out[np.fromiter(row.keys(), np.int64, len(row))] += np.fromiter(row.values(), np.float32, len(row))
    return out


def stream(seed: int, n: int, n_users: int, n_items: int) -> list[tuple[int, int]]:
    """(user, item) clicks, Zipf-skewed so that rows fill past the cap and many counts tie."""
    rng = np.random.default_rng(seed)
    return list(zip((rng.zipf(1.3, n) % n_users).tolist(), (rng.zipf(1.2, n) % n_items).tolist(), strict=True))


def replay(clicks: list[tuple[int, int]], cap: int, window: int, table: CovisTable | None = None,
           ref: dict[int, dict[int, int]] | None = None,
           history: dict[int, list[int]] | None = None) -> tuple[CovisTable, dict[int, dict[int, int]]]:
    """Both tables through the same clicks, with the model's user windows; checked after every click."""
    table = CovisTable() if table is None else table
    ref = {} if ref is None else ref
    history = {} if history is None else history
    for u, i in clicks:
        hist = history.setdefault(u, [])
        if i in hist:
            continue
        table.add(i, hist, cap)
        ref_add(ref, i, hist, cap)
        for j in (i, *hist):
            assert table[j] == ref[j]
        hist.append(i)
        del hist[:-window]
    return table, ref


def replay_table_only(clicks: list[tuple[int, int]], cap: int, window: int) -> CovisTable:
    """The table alone (no reference, no per-click checks): what the memory test measures."""
    table, history = CovisTable(), {}
    for u, i in clicks:
        hist = history.setdefault(u, [])
        if i not in hist:
            table.add(i, hist, cap)
            hist.append(i)
            del hist[:-window]
    return table


@pytest.mark.parametrize(("seed", "cap", "window"), [(0, 4, 10), (1, 6, 3), (2, 9, 10), (3, 200, 10), (4, 2, 5)])
def test_random_click_streams_count_and_prune_exactly_as_the_dicts_did(seed: int, cap: int, window: int) -> None:
    clicks = stream(seed, 3000, n_users=40, n_items=60)
    table, ref = replay(clicks, cap, window)
    assert table == ref
    assert list(table) == list(ref)  # rows in the same order, so checkpoints list items as before
    assert table.n_entries == sum(len(r) for r in ref.values())
    assert all(type(c) is int for r in table.values() for c in r.values())
    rng = np.random.default_rng(seed)
    for _ in range(20):
        items = rng.choice(60, size=int(rng.integers(0, 11)), replace=False).tolist()
        np.testing.assert_array_equal(table.sums(items, 60), ref_sums(ref, items, 60))


def test_pruning_keeps_the_strongest_and_breaks_ties_by_the_lower_item_index() -> None:
    table = CovisTable()
    for j in (7, 3, 9, 5, 1):
        table.add(j, [], cap=4)
    table.add(0, [7, 3, 9, 5, 1], cap=4)  # row 0 gets five neighbours at count 1: cut to the two lowest ids
    assert table[0] == {1: 1, 3: 1}
    for _ in range(2):
        table.add(9, [0], cap=4)  # 0-9 reaches 3 and is re-added to row 0 after the cut
    assert table[0] == {1: 1, 3: 1, 9: 2} and table[9] == {0: 3}  # the cut made the rows differ


def test_the_state_round_trips_through_a_weights_only_checkpoint() -> None:
    table, ref = replay(stream(5, 2000, n_users=30, n_items=50), cap=8, window=10)
    table.add(77, [], cap=8)  # an item whose row is still empty
    items, lengths, ids, counts = table.state()
    assert (items.dtype, lengths.dtype, ids.dtype, counts.dtype) == (np.int64, np.int64, np.int32, np.int64)
    saved = _arrays_as_tensors({"covis": table.state()})
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    loaded = CovisTable.from_state(_tensors_as_arrays(torch.load(buf, weights_only=True))["covis"])
    assert loaded == {**ref, 77: {}} and list(loaded) == list(table)
    assert CovisTable.from_state(CovisTable().state()) == {}


def test_a_checkpoint_of_the_previous_releases_loads_and_continues_identically() -> None:
    """Old checkpoints hold {item: {neighbour: count}} in insertion order, counts as ints or (before) floats."""
    clicks = stream(6, 4000, n_users=30, n_items=50)
    history: dict[int, list[int]] = {}
    _, ref = replay(clicks[:2000], cap=6, window=10, history=history)
    for old in (ref, {i: {j: float(c) for j, c in r.items()} for i, r in ref.items()}):
        table = CovisTable.from_state(old)
        assert table == ref and list(table) == list(ref)
        assert all(type(c) is int for r in table.values() for c in r.values())
    table, ref = replay(clicks[2000:], cap=6, window=10, table=table, ref=ref, history=history)
    assert table == ref


def test_a_malformed_state_is_refused() -> None:
    items, lengths, ids, counts = replay(stream(7, 500, 10, 20), cap=6, window=10)[0].state()
    with pytest.raises(ValueError, match="co-occurrence state"):
        CovisTable.from_state((items, lengths + 1, ids, counts))


def test_counts_do_not_wrap_at_32_bits() -> None:
    table = CovisTable.from_state({1: {2: 2**31 - 1}, 2: {1: 2**31 - 1}})
    table.add(2, [1], cap=200)
    assert table[1][2] == table[2][1] == 2**31


def test_the_model_keeps_the_same_table_as_the_dicts_did() -> None:
    """Through OnlineRecommender.update: impressions and low ratings do not count, repeats within a window
    neither, and the model's table equals the reference fed with the same positives."""
    m = OnlineRecommender(RecsConfig(dim=4, use_content=False, covis_row_cap=6, n_shared_negatives=8))
    rng = np.random.default_rng(8)
    events, ref, history = [], {}, {}
    for n, (u, i) in enumerate(stream(8, 1500, n_users=20, n_items=40)):
        kind = ["click", "impression", "rating"][int(rng.integers(0, 3))]
        stars = float(rng.choice([0.5, 1.0, 3.0, 5.0])) if kind == "rating" else None
        events.append(ClickEvent(f"e{n}", f"u{u}", f"i{i}", kind, value=stars))
    for k in range(0, len(events), 64):
        m.update(events[k : k + 64])
    for e in events:
        if e.event != "impression" and event_weight(e) >= m.config.covis_min_weight:
            hist = history.setdefault(m._uidx[e.user_id], [])
            i = m._iidx[e.item_id]
            if i not in hist:
                ref_add(ref, i, hist, 6)
                hist.append(i)
                del hist[:-10]
    assert m.covis == ref and m.history == history
    assert m.state_sizes()["covis_entries"] == sum(len(r) for r in ref.values())


def test_an_entry_costs_a_fraction_of_a_dict_entry() -> None:
    """Why the table exists: on this stream the dicts of ints held ~42 traced bytes an entry, the table ~19
    (user windows included)."""
    clicks = stream(9, 30_000, n_users=2000, n_items=3000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = replay_table_only(clicks, cap=200, window=10)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert table.n_entries > 100_000
    assert held / table.n_entries < 25
