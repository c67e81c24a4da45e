import hashlib
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from models.recs.events import ClickEvent
from models.recs.online_model import OnlineRecommender, RecsConfig

torch.set_num_threads(1)
GENRES = {"a": "action thriller", "b": "romance drama"}


def bow_encoder(texts: Sequence[str], dim: int = 16) -> np.ndarray:
    """Deterministic bag-of-words hashing: items sharing genre words get similar content vectors."""
    out = np.zeros((len(texts), dim), np.float32)
    for r, t in enumerate(texts):
        for w in t.lower().split():
            out[r, int(hashlib.md5(w.encode()).hexdigest(), 16) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def catalog() -> list[dict[str, str]]:
    return [
        {"item_id": f"{g}{k}", "title": f"film {g}{k}", "genres": GENRES[g]} for g in "ab" for k in range(10)
    ]


def make_model(**over: object) -> OnlineRecommender:
    cfg = RecsConfig(dim=8, content_dim=16, replay_size=5000, recent_size=500, n_shared_negatives=32, **over)
    m = OnlineRecommender(cfg, encoder=bow_encoder)
    m.add_items(catalog())
    return m


def clicks(user: str, items: Sequence[str], start: int = 0, tag: str = "") -> list[ClickEvent]:
    return [
        ClickEvent(f"{tag}{user}-{start + n}", user, it, "click", ts=start + n) for n, it in enumerate(items)
    ]


def world(m: OnlineRecommender, rounds: int = 15) -> None:
    """Users a-users click only 'a' items, b-users only 'b' items, never item 9 of either genre."""
    rng = np.random.default_rng(0)
    for r in range(rounds):
        evs = []
        for g in "ab":
            for u in range(6):
                items = [f"{g}{k}" for k in rng.choice(9, size=3, replace=False)]
                evs += clicks(f"{g}user{u}", items, start=r * 10, tag=f"w{r}")
        m.update(evs)


def frac(recs: list[tuple[str, float]], genre: str) -> float:
    return sum(i.startswith(genre) for i, _ in recs) / len(recs)


def test_recommendations_follow_new_clicks() -> None:
    m = make_model()
    world(m)
    m.update(clicks("newbie", ["a0", "a1", "a2"], tag="n1"))
    for _ in range(3):
        m.update(clicks("newbie", ["a0", "a1", "a2"], tag=f"r{_}"))  # fresh ids: repeated engagement
    before = m.recommend("newbie", k=4)
    assert frac(before, "a") >= 0.75
    for r in range(8):
        m.update(clicks("newbie", ["b0", "b1", "b2", "b3", "b4"], start=100 + 10 * r, tag=f"nb{r}"))
    after = m.recommend("newbie", k=4)
    assert after != before
    assert frac(after, "b") >= 0.5


def test_seen_items_excluded_and_included_on_request() -> None:
    m = make_model()
    world(m)
    recs = m.recommend("auser0", k=20)
    assert len(recs) == 20 - len(m.seen[m._uidx["auser0"]])
    clicked = {m.item_ids[j] for j in m.seen[m._uidx["auser0"]]}
    assert clicked and clicked.isdisjoint(i for i, _ in recs)
    assert clicked & {i for i, _ in m.recommend("auser0", k=20, exclude_seen=False)}


def test_cold_user_gets_popularity() -> None:
    m = make_model()
    m.update([*clicks("x", ["b3", "b3x", "a1"]), ClickEvent("p1", "y", "b3", "purchase")])
    recs = m.recommend("never-seen", k=3)
    assert [i for i, _ in recs] == ["b3", "a1", "b3x"]  # b3: click + purchase; a1 before b3x on a tie
    assert recs[0][1] == pytest.approx(5.0) and recs[1][1] == pytest.approx(1.0)
    assert m.n_items == 21  # "b3x" appeared in the stream and was added on the fly


def test_cold_item_served_from_content() -> None:
    m = make_model(popularity_prior=0.0)
    world(m, rounds=25)
    m.add_items(
        [
            {"item_id": "new-a", "title": "film x", "genres": GENRES["a"]},
            {"item_id": "new-b", "title": "film y", "genres": GENRES["b"]},
        ]
    )
    scores = m.score_all(["auser1", "buser1"])
    ia, ib = m._iidx["new-a"], m._iidx["new-b"]
    assert scores[0, ia] > scores[0, ib]
    assert scores[1, ib] > scores[1, ia]


def test_duplicate_event_ids_applied_once() -> None:
    m = make_model()
    batch = clicks("u", ["a1", "a2"])
    s1 = m.update(batch)
    snap = {k: v.clone() for k, v in m.state_dict()["tensors"].items()}
    s2 = m.update(batch + batch)
    assert (s1.applied, s1.duplicates) == (2, 0)
    assert (s2.applied, s2.duplicates) == (0, 4)
    for k, v in m.state_dict()["tensors"].items():
        assert torch.equal(v, snap[k]), k
    assert m.n_applied == 2 and s2.version == s1.version


def test_out_of_order_timestamps_accepted() -> None:
    m = make_model()
    evs = [ClickEvent("1", "u", "a1", "click", ts=300), ClickEvent("2", "u", "a2", "like", ts=100)]
    assert m.update(evs).applied == 2
    assert m.update([ClickEvent("3", "u", "a3", "click", ts=50)]).applied == 1


def test_state_round_trip_gives_identical_recommendations() -> None:
    m = make_model()
    world(m, rounds=5)
    state = m.state_dict()
    m2 = OnlineRecommender(encoder=bow_encoder)
    m2.load_state_dict(state)
    for u in ("auser0", "buser3", "cold"):
        assert m2.recommend(u, k=5) == m.recommend(u, k=5)
    more = clicks("auser0", ["b1", "b2"], tag="more")
    m.update(more)
    m2.update(more)
    assert m2.recommend("auser0", k=5) == m.recommend("auser0", k=5)
    assert m2.version == m.version
    assert m2.update(more).duplicates == 2  # dedupe memory travels with the checkpoint


def test_a_checkpoint_of_the_previous_release_still_loads() -> None:
    """It stored the dedupe window as the id strings and co-occurrence counts as floats."""
    m = make_model()
    world(m, rounds=3)
    evs = clicks("auser0", [f"a{k}" for k in range(9)], tag="old") + clicks("buser1", ["b1", "b2"], tag="old")
    m.update(evs)
    state = m.state_dict()
    state["dedupe"] = [e.id for e in evs]
    state["covis"] = {i: {j: float(c) for j, c in r.items()} for i, r in m.covis.items()}
    m2 = OnlineRecommender(encoder=bow_encoder)
    m2.load_state_dict(state)
    assert m2.update(evs[:7]).duplicates == 7
    assert m2.covis == m.covis and all(type(c) is int for r in m2.covis.values() for c in r.values())
    assert m2.recommend("auser0", k=5) == m.recommend("auser0", k=5)


def test_faiss_retrieval_matches_exact_scores() -> None:
    m = make_model()
    world(m, rounds=5)
    recs = m.recommend("buser2", k=5)
    scores = m.score_all(["buser2"])[0]
    scores[list(m.seen[m._uidx["buser2"]])] = -np.inf
    top = np.argsort(-scores, kind="stable")[:5]
    assert [i for i, _ in recs] == [m.item_ids[j] for j in top]
    np.testing.assert_allclose([s for _, s in recs], scores[top], rtol=1e-4, atol=1e-4)


def test_load_rejects_foreign_checkpoint() -> None:
    with pytest.raises(ValueError):
        make_model().load_state_dict({"model": "something-else"})


def test_wordllama_encoder_loads_offline() -> None:
    from models.recs.content import WordLlamaEncoder

    enc = WordLlamaEncoder(dim=64)
    e = enc(["Toy Story Adventure Animation", "Heat Action Crime", "Toy Story 2 Adventure Animation"])
    assert e.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-4)
    assert e[0] @ e[2] > e[0] @ e[1]


def test_impressions_do_not_count_as_co_occurrence() -> None:
    m = make_model()
    m.update([ClickEvent("1", "u", "a1", "impression"), ClickEvent("2", "u", "a2", "click")])
    m.update([ClickEvent("3", "u", "a3", "click")])
    assert m.history[m._uidx["u"]] == [m._iidx["a2"], m._iidx["a3"]]
    assert m.covis[m._iidx["a2"]] == {m._iidx["a3"]: 1.0}


def test_co_occurrence_rows_keep_their_strongest_items_within_the_cap() -> None:
    """Bounded memory: without the cap the table grew with every new pair (up to items^2)."""
    m = make_model(covis_row_cap=4, covis_window=10)
    m.update(clicks("u", ["a0", "a1"]) + clicks("v", ["a0", "a1"], tag="v"))  # a0-a1 twice: the strongest pair
    m.update(clicks("w", ["a0", "a2", "a3", "a4", "a5", "a6"], tag="w"))  # a0 meets 5 more items once each
    a0 = m.covis[m._iidx["a0"]]
    assert len(a0) <= 4 and a0[m._iidx["a1"]] == 2.0
    assert all(len(row) <= 4 for row in m.covis.values())


def _autograd_step(m: OnlineRecommender, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                   w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference: the same loss and Adagrad step through autograd, on copies of the tables."""
    c, t = m.config, m.t
    uu, u_inv = torch.unique(u, return_inverse=True)
    ii, i_inv = torch.unique(torch.cat([pos, neg.reshape(-1)]), return_inverse=True)
    P = t.user[uu].clone().requires_grad_()
    Q = t.item[ii].clone().requires_grad_()
    B = t.bias[ii].clone().requires_grad_()
    W = t.w.clone().requires_grad_()
    qv = Q + t.content[ii] @ W
    pu, n = P[u_inv], len(u)
    s_pos = (pu * qv[i_inv[:n]]).sum(-1) + B[i_inv[:n]]
    if neg.dim() == 1:
        s_neg = pu @ qv[i_inv[n:]].T + B[i_inv[n:]]
        s_neg = s_neg.masked_fill(neg[None, :] == pos[:, None], -1e9)
        per = torch.logsumexp(torch.cat([s_pos[:, None], s_neg], 1), 1) - s_pos
    else:
        n_idx = i_inv[n:].reshape(n, -1)
        s_neg = torch.einsum("nd,nkd->nk", pu, qv[n_idx]) + B[n_idx]
        per = torch.nn.functional.softplus(s_neg - s_pos[:, None]).mean(1)
    loss = (w * per).sum() / w.sum()
    (loss + c.reg * ((P * P).sum() + (Q * Q).sum() + (B * B).sum()) / n).backward()
    out = {}
    for name, par, acc, idx, grad in (("user", t.user, t.g_user, uu, P.grad), ("item", t.item, t.g_item, ii, Q.grad),
                                      ("bias", t.bias, t.g_bias, ii, B.grad)):
        a = acc.clone()
        a[idx] += grad * grad
        p = par.clone()
        p[idx] -= c.lr * grad / (a[idx].sqrt() + 1e-8)
        out[name] = p
    g_w = t.g_w + W.grad * W.grad
    out["w"] = t.w - c.lr * W.grad / (g_w.sqrt() + 1e-8)
    out["loss"] = loss.detach()
    return out


@pytest.mark.parametrize("loss", ["softmax", "bpr"])
def test_hand_written_gradients_match_autograd(loss: str) -> None:
    m = make_model(loss=loss)
    m.update(clicks("x", ["a1", "a2", "b3", "a4"]) + clicks("y", ["b1", "b2", "a3"]))
    gen = torch.Generator().manual_seed(5)
    u = torch.tensor([0, 1, 0, 1, 1, 0])
    pos = torch.tensor([0, 3, 5, 11, 12, 3])
    neg = torch.cat([pos[:2], torch.randint(0, m.n_items, (30,), generator=gen)]) if loss == "softmax" \
        else torch.randint(0, m.n_items, (6, 4), generator=gen)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 0.1])
    want = _autograd_step(m, u, pos, neg, w)
    got_loss = m._step(u, pos, neg, w)
    assert got_loss == pytest.approx(float(want["loss"]), rel=1e-5)
    for name in ("user", "item", "bias", "w"):
        torch.testing.assert_close(getattr(m.t, name), want[name], rtol=1e-4, atol=1e-6)
