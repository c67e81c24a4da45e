"""Text enrichment: `text.in` → sentiment + named entities → `text.enriched`.

A batch-in, records-out function; the Faust agent around it (streams/runtime/agent.py) only moves bytes.
Every input yields exactly one output record — an enriched event, or a dead letter saying why not — in
input order and on the input's partition number, so per-key order is kept and nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from models.text_types import Entity, Sentiment
from streams.contracts import topics
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import SchemaError, TextIn, encode, now_ms, text_enriched_event


class Enricher(Protocol):
    @property
    def models(self) -> dict[str, str]: ...

    def enrich(self, texts: Sequence[str]) -> list[tuple[Sentiment, list[Entity]]]: ...

    def replace(self, kind: str, model: Any) -> None: ...


Loader = Callable[[str], Any]


class TextEnrichmentProcessor:
    """Capabilities (processors/base.py): HotSwappable — ``load_model("sentiment", spec)`` loads a model with
    ``loaders["sentiment"]`` and serves it from the next batch on; every output names the model it came from."""

    name = "text"
    source_topics = (topics.TEXT_IN,)
    latency_critical = True  # on the batch consumer: short fetch waits while busy (streams/runtime/batch_source.py)

    def __init__(
        self,
        enricher: Enricher,
        *,
        max_chars: int = 5000,
        batch_size: int = 64,
        batch_ms: int = 50,
        read_ahead: int = 0,
        loaders: Mapping[str, Loader] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.enricher = enricher
        self.loaders = dict(loaders or {})
        self.read_ahead = read_ahead  # 0: the two-thread model wants both cores; a competing reader cost ~10%
        self.max_chars = max_chars
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.clock = clock

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        outputs: list[OutRecord | None] = [None] * len(records)
        valid: list[tuple[int, TextIn]] = []
        for i, record in enumerate(records):
            try:
                valid.append((i, TextIn.parse(record.value, max_chars=self.max_chars,
                                              fallback_ts=record.timestamp_ms)))
            except SchemaError as exc:
                outputs[i] = dead_letter(record, processor=self.name, reason=str(exc))
        for (i, event), result in zip(valid, self._enrich_all([e for _, e in valid]), strict=True):
            if isinstance(result, Exception):
                outputs[i] = dead_letter(
                    records[i], processor=self.name, error="ModelError",
                    reason=f"enrichment failed: {type(result).__name__}: {result}",
                )
            else:
                outputs[i] = self._enriched(event, records[i], *result)
        missing = [i for i, o in enumerate(outputs) if o is None]
        if missing:  # a bug, never an input problem: refuse to let the batch be committed
            raise RuntimeError(f"no output for batch positions {missing}")
        return outputs  # type: ignore[return-value]

    def model_versions(self) -> dict[str, str]:
        return dict(self.enricher.models)

    def load_model(self, model: str, version: str) -> str:
        """Load first, swap after: a version that fails to load leaves the serving model in place."""
        if model not in self.loaders:
            raise KeyError(f"text cannot load {model!r}; it loads: {', '.join(sorted(self.loaders)) or 'nothing'}")
        self.enricher.replace(model, self.loaders[model](version))
        return self.enricher.models[model]

    def _enrich_all(self, events: list[TextIn]) -> list[tuple[Sentiment, list[Entity]] | Exception]:
        """Whole batch at once; if the batch fails, one by one, so one poison text costs only itself."""
        if not events:
            return []
        try:
            results = self.enricher.enrich([e.text for e in events])
            if len(results) != len(events):
                raise RuntimeError(f"enricher returned {len(results)} results for {len(events)} texts")
            return list(results)
        except Exception:
            isolated: list[tuple[Sentiment, list[Entity]] | Exception] = []
            for event in events:
                try:
                    isolated.append(self.enricher.enrich([event.text])[0])
                except Exception as exc:
                    isolated.append(exc)
            return isolated

    def _enriched(self, event: TextIn, record: RawRecord, sentiment: Sentiment, entities: list[Entity]) -> OutRecord:
        value = text_enriched_event(
            event,
            sentiment=sentiment.to_dict(),
            entities=[e.to_dict() for e in entities],
            models=self.enricher.models,
            done_ms=self.clock(),
        )
        # key = id (the contract); partition = the input's, so inputs that shared a key (hence a partition)
        # come out in the order they went in
        return OutRecord(topics.TEXT_ENRICHED, event.id.encode("utf-8"), encode(value), partition=record.partition,
                         source=record)
