"""Prequential (test-then-train) evaluation of the online recommender against baselines on MovieLens.

Protocol: events are replayed in timestamp order in micro-batches of ``batch_size`` (as a stream processor
would consume them). For each batch, every *positive* event (rating >= ``positive_threshold``) is first
scored: all catalog items are ranked for that user by each method, items the user interacted with in
earlier batches are excluded, and the rank of the event's item gives Recall@k (hit) and NDCG@k. Then every
method learns from the whole batch (low ratings included: they are weak positives for the model and
"seen" for exclusion). Users with no earlier events are cold and every method serves them popularity.

Run: ``python -m models.recs.prequential [--limit N] [--batch-size 256] [--no-content]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from models.recs.baselines import BatchALS, GlobalPopularity, RecentPopularity
from models.recs.content import default_encoder
from models.recs.events import ClickEvent
from models.recs.metrics import recall_ndcg_at_k, target_ranks
from models.recs.online_model import OnlineRecommender, RecsConfig


class Scorer(Protocol):
    def update(self, events: Sequence[ClickEvent]) -> Any: ...
    def score_all(self, user_ids: Sequence[str]) -> np.ndarray: ...


def default_methods(catalog: Sequence[Mapping[str, Any]], use_content: bool = True) -> dict[str, Scorer]:
    ids = [str(r["item_id"]) for r in catalog]
    encoder = default_encoder(RecsConfig().content_dim) if use_content else None
    online = OnlineRecommender(RecsConfig(use_content=encoder is not None), encoder=encoder)
    online.add_items(catalog)
    return {
        "online": online,
        "popularity": GlobalPopularity(ids),
        "recent_pop_5k": RecentPopularity(ids, window=5000),
        "batch_als_5k": BatchALS(ids, refit_every=5000),
    }


def run_prequential(
    catalog: Sequence[Mapping[str, Any]],
    events: Sequence[ClickEvent],
    methods: Mapping[str, Scorer] | None = None,
    batch_size: int = 32,
    k: int = 10,
    positive_threshold: float = 3.5,
    verbose: bool = True,
    make_methods: Callable[[Sequence[Mapping[str, Any]]], Mapping[str, Scorer]] | None = None,
) -> dict[str, Any]:
    """Replay ``events``; returns {"methods": {name: {recall, ndcg, recall_warm, ...}}, "n_eval", ...}."""
    t_start = time.perf_counter()
    if methods is None:
        methods = (make_methods or default_methods)(catalog)
    item_ids = [str(r["item_id"]) for r in catalog]
    iidx = {i: n for n, i in enumerate(item_ids)}
    n_items = len(item_ids)
    seen: dict[str, set[int]] = {}
    ranks: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    warm_mask: list[np.ndarray] = []
    secs = {m: {"score": 0.0, "update": 0.0} for m in methods}
    n_batches = (len(events) + batch_size - 1) // batch_size
    for b in range(n_batches):
        batch = events[b * batch_size : (b + 1) * batch_size]
        ev = [
            e
            for e in batch
            if e.event == "rating"
            and e.value is not None
            and e.value >= positive_threshold
            and e.item_id in iidx
            and iidx[e.item_id] not in seen.get(e.user_id, ())
        ]
        if ev:
            users = [e.user_id for e in ev]
            targets = np.array([iidx[e.item_id] for e in ev], np.int64)
            exclude = [seen.get(u, set()) for u in users]
            warm_mask.append(np.array([bool(x) for x in exclude]))
            for name, m in methods.items():
                t0 = time.perf_counter()
                scores = np.asarray(m.score_all(users))[:, :n_items]
                ranks[name].append(target_ranks(scores, targets, exclude))
                secs[name]["score"] += time.perf_counter() - t0
        for name, m in methods.items():
            t0 = time.perf_counter()
            m.update(batch)
            secs[name]["update"] += time.perf_counter() - t0
        for e in batch:
            if e.item_id in iidx and e.event != "impression":
                seen.setdefault(e.user_id, set()).add(iidx[e.item_id])
        if verbose and (b + 1) % max(1, n_batches // 10) == 0:
            r = np.concatenate(ranks[next(iter(methods))]) if ranks[next(iter(methods))] else np.zeros(0)
            line = "  ".join(
                f"{name}={recall_ndcg_at_k(np.concatenate(v), k)[0]:.4f}" for name, v in ranks.items() if v
            )
            print(
                f"[{b + 1}/{n_batches}] events={min((b + 1) * batch_size, len(events))} "
                f"eval={r.size} R@{k}: {line}  ({time.perf_counter() - t_start:.0f}s)",
                flush=True,
            )
    warm = np.concatenate(warm_mask) if warm_mask else np.zeros(0, bool)
    table: dict[str, dict[str, float]] = {}
    for name, v in ranks.items():
        r = np.concatenate(v) if v else np.zeros(0, np.int64)
        rec, ndcg = recall_ndcg_at_k(r, k)
        rec_w, ndcg_w = recall_ndcg_at_k(r[warm], k) if r.size else (0.0, 0.0)
        table[name] = {
            f"recall@{k}": rec,
            f"ndcg@{k}": ndcg,
            f"recall@{k}_warm": rec_w,
            f"ndcg@{k}_warm": ndcg_w,
            "update_s": secs[name]["update"],
            "score_s": secs[name]["score"],
        }
    return {
        "methods": table,
        "n_events": len(events),
        "n_eval": int(warm.size),
        "n_eval_warm": int(warm.sum()),
        "batch_size": batch_size,
        "k": k,
        "positive_threshold": positive_threshold,
        "wall_s": time.perf_counter() - t_start,
    }


def format_table(result: Mapping[str, Any]) -> str:
    k = result["k"]
    cols = [f"recall@{k}", f"ndcg@{k}", f"recall@{k}_warm", f"ndcg@{k}_warm", "update_s", "score_s"]
    lines = [f"{'method':<16}" + "".join(f"{c:>16}" for c in cols)]
    for name, row in result["methods"].items():
        lines.append(f"{name:<16}" + "".join(f"{row[c]:>16.4f}" for c in cols))
    lines.append(
        f"events={result['n_events']} eval_events={result['n_eval']} (warm {result['n_eval_warm']}) "
        f"batch={result['batch_size']} positive: rating>={result['positive_threshold']} "
        f"wall={result['wall_s']:.1f}s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from models.recs.movielens import load_movielens

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-content", action="store_true", help="online model without the text-content tower")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    catalog, events = load_movielens(args.limit)
    result = run_prequential(
        catalog,
        events,
        batch_size=args.batch_size,
        make_methods=lambda c: default_methods(c, use_content=not args.no_content),
    )
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()
