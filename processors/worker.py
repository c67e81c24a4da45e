"""`streamsense run`: one Faust worker hosting the chosen processors.

Models are loaded before the worker joins its consumer group: a first load of several seconds inside
the event loop would stall heartbeats and trigger a rebalance.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import faust

from processors.agent import BatchProcessor, attach
from streams.faust_app import create_app
from streams.kafka_io import ensure_topics
from streams.settings import Settings

log = logging.getLogger(__name__)


def build_text(settings: Settings, progress: Callable[[str], None]) -> BatchProcessor:
    from models.enrichment import load_enricher

    from processors.text import TextEnrichmentProcessor

    progress(f"loading text models: sentiment={settings.sentiment_model} ner={settings.ner_model}")
    enricher = load_enricher(settings.sentiment_model, settings.ner_model)
    progress(f"text models ready: {enricher.models}")
    return TextEnrichmentProcessor(
        enricher,
        max_chars=settings.text_max_chars,
        batch_size=settings.text_batch_size,
        batch_ms=settings.text_batch_ms,
    )


BUILDERS: dict[str, Callable[[Settings, Callable[[str], None]], BatchProcessor]] = {
    "text": build_text,
}


def parse_processors(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        raise ValueError(f"unknown processors {unknown or spec!r}; available: {', '.join(BUILDERS)}")
    return names


def progress_line(message: str) -> None:
    print(f"[streamsense] {message}", flush=True)


def build_app(
    settings: Settings, bootstrap: str, names: Sequence[str], progress: Callable[[str], None] = progress_line
) -> faust.App:
    created = ensure_topics(settings, bootstrap)
    if created:
        progress(f"created topics: {', '.join(created)}")
    processors = [BUILDERS[name](settings, progress) for name in names]
    app = create_app(settings, bootstrap)
    for processor in processors:
        attach(app, processor)

    @app.on_partitions_assigned.connect
    async def announce(sender: faust.App, assigned: set, **_: object) -> None:  # type: ignore[type-arg]
        parts = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        progress(f"worker ready: {len(parts)} partitions assigned: {' '.join(parts) or '-'}")

    return app


def run_worker(settings: Settings, bootstrap: str, names: Sequence[str], loglevel: str = "warning") -> None:
    """Blocks until SIGINT/SIGTERM; Faust then stops the agents, commits what was acked, and leaves the group."""
    app = build_app(settings, bootstrap, names)
    progress_line(f"starting worker {settings.app_id} on {bootstrap}; processors: {', '.join(names)}")
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, quiet=True, stdout=sys.stdout)
    worker.execute_from_commandline()
