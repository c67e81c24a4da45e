"""Sentiment + entities for a batch of texts, the unit of work of the text stream processor."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from models.ner import DEFAULT_NER, load_ner
from models.sentiment import load_sentiment
from models.text_types import Entity, EntityRecognizer, Sentiment, SentimentModel


class TextEnricher:
    """Runs both models over a whole batch, never per message: per-call overhead dominates short texts.

    When the NER is the MiniLM head over the sentiment model's own encoder (`shares_encoder`), one encoder pass
    serves both models. Otherwise, with `overlap` (default) NER runs in a worker thread while torch runs the
    sentiment model. On 2 shared cores, with torch on 1 intra-op thread, this measured ~1.2x faster than running
    them one after the other with torch on 2 threads (spaCy is single-threaded and torch releases the GIL in its
    kernels, so each gets a core; torch on 2 threads next to a busy spaCy thread oversubscribes badly). torch's
    thread count is process-wide, so the enricher does not set it: the worker sets it once
    (streams/runtime/worker.py).
    Models must tolerate being called from a thread other than the constructor's (both ours do).
    """

    def __init__(
        self,
        sentiment: SentimentModel,
        ner: EntityRecognizer,
        *,
        overlap: bool = True,
    ) -> None:
        self.sentiment = sentiment
        self.ner = ner
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ner") if overlap else None
        self.shared_encoder = shares_encoder(sentiment, ner)

    @property
    def models(self) -> dict[str, str]:
        """Model identities recorded in every enriched event, so outputs can be traced to a build."""
        return {"sentiment": self.sentiment.name, "ner": self.ner.name}

    def replace(self, kind: str, model: SentimentModel | EntityRecognizer) -> None:
        """Serve ``model`` for ``kind`` ("sentiment" or "ner") from the next call on (hot swap)."""
        if kind == "sentiment":
            self.sentiment = model  # type: ignore[assignment]
        elif kind == "ner":
            self.ner = model  # type: ignore[assignment]
        else:
            raise KeyError(f"unknown text model kind {kind!r}; expected 'sentiment' or 'ner'")
        self.shared_encoder = shares_encoder(self.sentiment, self.ner)

    def enrich(self, texts: Sequence[str]) -> list[tuple[Sentiment, list[Entity]]]:
        texts = list(texts)
        if not texts:
            return []
        if self.shared_encoder:
            sentiments, states = self.sentiment.predict_with_states(texts, self.ner.layers)  # type: ignore[attr-defined]
            entities = self.ner.predict_from_states(texts, states)  # type: ignore[attr-defined]
        elif self._pool is None or not self._overlap_pays():
            sentiments = self.sentiment.predict(texts)
            entities = self.ner.predict(texts)
        else:
            pending = self._pool.submit(self.ner.predict, texts)
            try:
                sentiments = self.sentiment.predict(texts)
            finally:
                entities = pending.result()  # re-raises NER errors; always waits so no work is left behind
        if len(sentiments) != len(texts) or len(entities) != len(texts):
            raise RuntimeError("a text model returned a different number of results than texts given")
        return list(zip(sentiments, entities, strict=True))

    def _overlap_pays(self) -> bool:
        """Overlap gives each model a core; when the NER is a torch model too and torch already runs on several
        threads (a text-only worker with the MiniLM NER, whose sentiment model is not on the same encoder),
        two concurrent multi-threaded passes would oversubscribe the cores: run them one after the other."""
        from models.token_ner import MiniLMNER

        return not isinstance(self.ner, MiniLMNER) or torch.get_num_threads() == 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def shares_encoder(sentiment: SentimentModel, ner: EntityRecognizer) -> bool:
    """True when the NER head reads the same encoder, run the same way, as the sentiment model: then one
    encoder pass serves both (a fine-tuned or hub sentiment model has other weights and gets its own pass)."""
    from models.sentiment import TransformerSentiment
    from models.token_ner import MiniLMNER, encoder_fingerprint

    if not isinstance(ner, MiniLMNER) or not isinstance(sentiment, TransformerSentiment):
        return False
    encoder = getattr(sentiment.model, "bert", None)
    return (
        encoder is not None
        and sentiment.quantized == ner.quantized
        and encoder_fingerprint(encoder) == ner.fingerprint
    )


def load_enricher(sentiment_spec: str = "default", ner_spec: str = DEFAULT_NER) -> TextEnricher:
    return TextEnricher(load_sentiment(sentiment_spec), load_ner(ner_spec))
