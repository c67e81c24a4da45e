"""`streamsense run`: one Faust worker hosting the chosen processors.

Models are loaded before the worker joins its consumer group: a first load of several seconds inside
the event loop would stall heartbeats and trigger a rebalance.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import faust

from models import model_store
from streams.contracts.settings import Settings
from streams.runtime.agent import BatchProcessor, attach
from streams.runtime.faust_app import create_app
from streams.runtime.kafka_io import describe_topics, ensure_topics

log = logging.getLogger(__name__)


def build_text(settings: Settings, bootstrap: str, progress: Callable[[str], None]) -> BatchProcessor:
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


def build_asr(settings: Settings, bootstrap: str, progress: Callable[[str], None]) -> BatchProcessor:
    from models.asr_engine import EngineConfig, load_engine
    from models.speech_segmenter import VADConfig
    from processors.asr import AsrProcessor, read_checkpoints

    progress(f"loading asr model: {settings.asr_model}")
    engine = load_engine(settings.asr_model, EngineConfig(beam_size=settings.asr_beam_size))
    restored = read_checkpoints(settings, bootstrap)
    open_streams = sum(not cp.ended for cp in restored.values())
    progress(f"asr model ready: {engine.model_name}; restored {open_streams} open stream(s) from asr.state")
    return AsrProcessor(
        engine,
        vad=VADConfig(max_segment_s=min(float(settings.asr_max_segment_s), 29.0)),
        idle_timeout_s=settings.asr_idle_timeout_s,
        restored=restored,
        word_timestamps=settings.asr_word_timestamps,
        partial_interval_ms=settings.asr_partial_interval_ms,
    )


def build_recs(settings: Settings, bootstrap: str, progress: Callable[[str], None]) -> BatchProcessor:
    import torch

    from models.recs import OnlineRecommender, RecsConfig
    from models.recs.content import default_encoder
    from processors.recs import RecsProcessor, checkpoint_path, restore

    torch.set_num_threads(1)  # micro-batches are small; more threads only contend with Faust and the web views
    encoder = default_encoder(RecsConfig().content_dim) if settings.recs_content else None
    model = OnlineRecommender(RecsConfig(use_content=encoder is not None), encoder=encoder)
    processor = RecsProcessor(
        model,
        app_id=settings.app_id,
        state_path=checkpoint_path(settings.state_dir, settings.app_id),
        batch_size=settings.recs_batch_size,
        batch_ms=settings.recs_batch_ms,
        checkpoint_s=settings.recs_checkpoint_s,
        checkpoint_events=settings.recs_checkpoint_events,
    )
    restore(processor, settings, bootstrap, progress)
    progress(f"recs model ready: {model.version} (content tower: {'on' if encoder is not None else 'off'})")
    return processor


BUILDERS: dict[str, Callable[[Settings, str, Callable[[str], None]], BatchProcessor]] = {
    "text": build_text,
    "asr": build_asr,
    "recs": build_recs,
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
    model_store.configure(settings.model_dir)  # before any builder loads a model
    created = ensure_topics(settings, bootstrap)
    if created:
        progress(f"created topics: {', '.join(created)}")
    processors = [BUILDERS[name](settings, bootstrap, progress) for name in names]
    app = create_app(settings, bootstrap)
    partition_counts = describe_topics(settings, bootstrap)
    for processor in processors:
        attach(app, processor, partition_counts, max_message_bytes=settings.max_message_bytes)
        register_web = getattr(processor, "register_web", None)  # extra web pages (e.g. /recommend/{user})
        if register_web is not None:
            register_web(app)

    @app.on_partitions_assigned.connect
    async def announce(sender: faust.App, assigned: set, **_: object) -> None:  # type: ignore[type-arg]
        parts = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        progress(f"worker ready: {len(parts)} partitions assigned: {' '.join(parts) or '-'}")
        for warning in partial_state_warnings(processors, assigned, partition_counts):
            progress(f"warning: {warning}")

    return app


def partial_state_warnings(
    processors: Sequence[BatchProcessor], assigned: set[Any], partition_counts: dict[str, int]
) -> list[str]:
    """Processors whose state must see every partition of some topics (``unsharded_topics``) say so when a
    rebalance gave this worker only part of them: a second worker in the same group splits their model."""
    out = []
    held = {(tp.topic, tp.partition) for tp in assigned}
    for p in processors:
        for topic in getattr(p, "unsharded_topics", ()):
            mine = sorted(n for t, n in held if t == topic)
            if len(mine) < partition_counts.get(topic, 0):
                out.append(f"{p.name} holds {topic} partitions {mine or '-'} of {partition_counts[topic]}: its state "
                           f"sees only those. Run one {p.name} worker per app id (replicas: a distinct "
                           f"STREAMSENSE_APP_ID each).")
    return out


def run_worker(settings: Settings, bootstrap: str, names: Sequence[str], loglevel: str = "warning") -> None:
    """Blocks until SIGINT/SIGTERM; Faust then stops the agents, commits what was acked, and leaves the group."""
    app = build_app(settings, bootstrap, names)
    progress_line(f"starting worker {settings.app_id} on {bootstrap}; processors: {', '.join(names)}")
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, quiet=True, stdout=sys.stdout)
    worker.spinner = None  # terminal escape codes would garble logs and the demo's output
    worker.execute_from_commandline()
