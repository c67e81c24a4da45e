from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from models.enrichment import TextEnricher, load_enricher
from models.sentiment_training import ensure_default_models
from models.text_types import Entity, EntityRecognizer, Sentiment, SentimentModel


class LengthSentiment:
    """Stub: label depends on the text, so any reordering shows up."""

    name = "stub-sentiment@1"

    def predict(self, texts: Sequence[str]) -> list[Sentiment]:
        return [Sentiment("positive" if len(t) % 2 else "negative", 0.9) for t in texts]


class FirstWordNER:
    name = "stub-ner@1"

    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        out = []
        for t in texts:
            word = t.split(" ")[0]
            out.append([Entity(word, "PER", 0, len(word), 1.0)] if word else [])
        return out


class ShortNER(FirstWordNER):
    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        return super().predict(texts)[:-1]


def test_stubs_satisfy_protocols() -> None:
    assert isinstance(LengthSentiment(), SentimentModel)
    assert isinstance(FirstWordNER(), EntityRecognizer)


def test_enrich_pairs_results_in_order() -> None:
    enricher = TextEnricher(LengthSentiment(), FirstWordNER())
    texts = ["Ann is here", "Bo", "", "Cleo likes it"]
    out = enricher.enrich(texts)
    assert [s.label for s, _ in out] == ["positive", "negative", "negative", "positive"]
    assert [[e.text for e in ents] for _, ents in out] == [["Ann"], ["Bo"], [], ["Cleo"]]
    assert enricher.enrich([]) == []
    assert TextEnricher(LengthSentiment(), FirstWordNER(), overlap=False).enrich(texts) == out
    assert enricher.models == {"sentiment": "stub-sentiment@1", "ner": "stub-ner@1"}


@pytest.mark.parametrize("overlap", [True, False])
def test_model_returning_wrong_count_is_an_error(overlap: bool) -> None:
    with pytest.raises(RuntimeError):
        TextEnricher(LengthSentiment(), ShortNER(), overlap=overlap).enrich(["a", "b"])


class BrokenNER(FirstWordNER):
    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        raise ValueError("ner exploded")


def test_overlapped_ner_errors_propagate_and_threads_are_restored() -> None:
    import torch

    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="ner exploded"):
        TextEnricher(LengthSentiment(), BrokenNER()).enrich(["a"])
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def enricher() -> TextEnricher:
    ensure_default_models(progress=lambda _msg: None)
    return load_enricher()


def test_default_enricher_end_to_end(enricher: TextEnricher) -> None:
    texts = ["I love this, wonderful! Thanks @Delta", "terrible, I hate it", "Barack Obama visited Paris."]
    out = enricher.enrich(texts)
    assert [s.label for s, _ in out] == ["positive", "negative", out[2][0].label]
    assert ("Barack Obama", "PER") in {(e.text, e.label) for e in out[2][1]}
    for text, (_, ents) in zip(texts, out, strict=True):
        assert all(text[e.start : e.end] == e.text for e in ents)
    event = {
        "sentiment": out[0][0].to_dict(),
        "entities": [e.to_dict() for e in out[2][1]],
        "models": enricher.models,
    }
    json.dumps(event)
    assert set(enricher.models) == {"sentiment", "ner"} and all("@" in v for v in enricher.models.values())
