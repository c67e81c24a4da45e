"""`streamsense run`: one Faust worker hosting the chosen processors.

Start-up order matters: topics exist, models load, each processor is checked against its contract
(processors/base.py) and its state restored and replayed (recovery.py) — all before the worker joins its
consumer group, since seconds of work inside the event loop would stall heartbeats and trigger a rebalance.
State split by partition (`PartitionedState`, e.g. ASR streams) is the exception: it is restored for the
partitions each assignment brings, on the model thread (handover.py). `/ready` answers 200 only after the
first assignment and its restores (web.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import faust

from models import model_store
from processors.base import Checkpointed, PartitionedState, Processor, Served, WholePartitions, validate
from streams.contracts.settings import ConfigError, Settings
from streams.runtime.agent import attach, attach_ticker, faust_sender
from streams.runtime.batch_source import BatchSource, batch_group_id
from streams.runtime.faust_app import create_app
from streams.runtime.handover import Handover
from streams.runtime.heap import freeze_loaded
from streams.runtime.kafka_io import describe_topics, ensure_topics, wait_for_broker
from streams.runtime.model_updates import ModelUpdateFollower
from streams.runtime.recovery import inherited_offsets, restore_from_kafka
from streams.runtime.runner import ProcessorRunner, model_thread
from streams.runtime.state_store import StateStore
from streams.runtime.web import Readiness, register_routes, register_worker_pages

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def build_text(settings: Settings, progress: Progress) -> Processor:
    from models.enrichment import load_enricher
    from models.ner import load_ner
    from models.sentiment import load_sentiment
    from processors.text import TextEnrichmentProcessor

    progress(f"loading text models: sentiment={settings.sentiment_model} ner={settings.ner_model}")
    enricher = load_enricher(settings.sentiment_model, settings.ner_model)
    progress(f"text models ready: {enricher.models}")
    return TextEnrichmentProcessor(
        enricher,
        max_chars=settings.text_max_chars,
        batch_size=settings.text_batch_size,
        batch_ms=settings.text_batch_ms,
        read_ahead=settings.text_read_ahead,
        loaders={"sentiment": load_sentiment, "ner": load_ner},
    )


def build_asr(settings: Settings, progress: Progress) -> Processor:
    from models.asr_engine import EngineConfig, load_engine
    from models.speech_segmenter import VADConfig
    from processors.asr import AsrProcessor

    progress(f"loading asr model: {settings.asr_model}")
    # torch's threads are the worker's, set once in build_app; CT2 has a pool of its own: STREAMSENSE_TORCH_THREADS
    # when given, else the backend's measured default (models/asr_ct2.py)
    threads = settings.torch_threads or None if settings.asr_backend == "ct2" else None
    engine = load_engine(settings.asr_model, EngineConfig(beam_size=settings.asr_beam_size), threads=threads,
                         backend=settings.asr_backend)
    progress(f"asr model ready: {engine.model_name}")
    return AsrProcessor(
        engine,
        vad=VADConfig.for_kind(settings.asr_vad, max_segment_s=min(float(settings.asr_max_segment_s), 29.0)),
        idle_timeout_s=settings.asr_idle_timeout_s,
        batch_size=settings.asr_batch_size,
        batch_ms=settings.asr_batch_ms,
        read_ahead=settings.asr_read_ahead,
        word_timestamps=settings.asr_word_timestamps,
        partial_interval_ms=settings.asr_partial_interval_ms,
        context_s=settings.asr_context_s,
        max_chunk_s=settings.asr_max_chunk_s,
        max_chunk_bytes=settings.asr_max_chunk_bytes,
    )


def build_recs(settings: Settings, progress: Progress) -> Processor:
    from models.recs import OnlineRecommender, RecsConfig
    from models.recs.content import default_encoder
    from processors.recs import RecsProcessor

    encoder = default_encoder(RecsConfig().content_dim) if settings.recs_content else None
    model = OnlineRecommender(RecsConfig(use_content=encoder is not None), encoder=encoder)
    progress(f"recs model ready: {model.version} (content tower: {'on' if encoder is not None else 'off'})")
    return RecsProcessor(
        model,
        app_id=settings.app_id,
        batch_size=settings.recs_batch_size,
        batch_ms=settings.recs_batch_ms,
        read_ahead=settings.recs_read_ahead,
        checkpoint_s=settings.recs_checkpoint_s,
        checkpoint_events=settings.recs_checkpoint_events,
        max_k=settings.recs_max_k,
    )


def build_retrainer(settings: Settings, progress: Progress) -> Processor:
    from models.model_store import registry_dir, retrain_cache_dir
    from models.registry import Registry
    from models.retraining import SentimentRetraining
    from monitoring.retrain_policy import PolicyConfig, RetrainPolicy
    from monitoring.rollback_watch import RollbackWatch
    from processors.retrainer import RetrainerProcessor

    policy = PolicyConfig(
        trigger_levels=tuple(x.strip() for x in settings.retrain_trigger_levels.split(",") if x.strip()),
        persistence_events=settings.retrain_persistence_events, min_labels=settings.retrain_min_labels,
        cooldown_s=settings.retrain_cooldown_s, schedule_s=settings.retrain_schedule_s)
    retraining = SentimentRetraining(Registry(registry_dir()), margin=settings.retrain_margin,
                                     tolerance=settings.retrain_tolerance, progress=progress,
                                     cache_dir=retrain_cache_dir())
    champion = retraining.champion()
    retraining.prepare()
    progress(f"retrainer: sentiment champion {champion.version} ({champion.path}); retrain on "
             f"{', '.join(policy.trigger_levels)} after {policy.min_labels} new labels, "
             f"cooldown {policy.cooldown_s:.0f} s; "
             f"gate: +{settings.retrain_margin} on recent labels, -{settings.retrain_tolerance} at most on tweets")
    return RetrainerProcessor(
        retraining, RetrainPolicy({champion.model: policy}),
        RollbackWatch(min_labels=settings.rollback_min_labels, threshold=settings.rollback_threshold),
        max_labels=settings.retrain_max_labels, join_s=settings.feedback_join_s)


def build_monitor(settings: Settings, progress: Progress) -> Processor:
    from monitoring.drift_monitor import DriftConfig
    from processors.monitor import MonitorProcessor

    config = DriftConfig(expected_events_between_false_alarms=settings.drift_false_alarm_events,
                         reference_events=settings.drift_reference_events)
    progress(f"drift monitor: reference {config.reference_events} events per model version and signal; "
             f"one false drift alarm per {config.expected_events_between_false_alarms:,.0f} events expected")
    return MonitorProcessor(config, batch_size=settings.monitor_batch_size, batch_ms=settings.monitor_batch_ms,
                            read_ahead=settings.monitor_read_ahead, stats_s=settings.drift_stats_s,
                            checkpoint_s=settings.monitor_checkpoint_s, hit_window_s=settings.drift_hit_window_s)


BUILDERS: dict[str, Callable[[Settings, Progress], Processor]] = {
    "text": build_text,
    "asr": build_asr,
    "recs": build_recs,
    "monitor": build_monitor,
    "retrainer": build_retrainer,
}


def parse_processors(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        raise ValueError(f"unknown processors {unknown or spec!r}; available: {', '.join(BUILDERS)}")
    return names


def progress_line(message: str) -> None:
    print(f"[streamsense] {message}", flush=True)


TORCH_FREE = {"monitor"}  # a worker hosting only these never imports torch


TEXT_MAX_THREADS = 4  # MiniLM batches of ~64 tweets stop gaining from more intra-op threads around here


def torch_threads(settings: Settings, names: Sequence[str] = (), cpus: int | None = None) -> int:
    """The worker's one torch intra-op thread count (process-wide, so set once, here): the setting when given.
    Else every core (up to TEXT_MAX_THREADS) for a worker whose only torch processor is text with the MiniLM
    NER: its batch is one encoder pass that both models read (models/enrichment.py), so nothing else wants the
    second core, and that pass ran ~1.6x faster on 2 threads than on 1 (2-core AVX2 EPYC, batches of 64).
    Otherwise 1: a spaCy NER runs on a second thread next to the sentiment model (each gets a core; torch on 2
    threads next to it oversubscribes 2 cores), asr and recs work on small batches where more threads only
    contend with Faust, the web views and each other, and processors sharing a worker share its cores."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    if set(names) - TORCH_FREE == {"text"} and settings.ner_model.partition(":")[0] == "minilm":
        return max(1, min(cpus or os.cpu_count() or 1, TEXT_MAX_THREADS))
    return 1


def build_on_model_threads(
    settings: Settings, names: Sequence[str], progress: Progress,
    builders: Mapping[str, Callable[[Settings, Progress], Processor]] = BUILDERS,
) -> tuple[list[Processor], dict[str, ThreadPoolExecutor]]:
    """Each processor built on the one thread that will run its batches (its runner's executor), returned with it.

    Why not build on the main thread: torch's OpenMP (libgomp) keeps a team of threads for every thread that ran
    a parallel region, and once a process holds more team threads than cores, every team stops spinning between
    regions and pays a wake-up per op. A text worker that loaded its models on the main thread ran its 2-thread
    encoder at ~55% of the speed of one that loads and runs on the same thread (AVX-512 AMD EPYC, 2 cores:
    135 vs 255 texts/s in process; 99 vs 194 events/s through the broker)."""
    threads = {name: model_thread(name) for name in names}
    return [threads[name].submit(builders[name], settings, progress).result() for name in names], threads


def build_app(settings: Settings, bootstrap: str, names: Sequence[str], progress: Progress = progress_line
              ) -> faust.App:
    model_store.configure(settings.model_dir)  # before any builder loads a model
    if set(names) - TORCH_FREE:
        import torch

        torch.set_num_threads(torch_threads(settings, names))
    wait_for_broker(settings, bootstrap, progress, wait_s=settings.broker_wait_s)
    created = ensure_topics(settings, bootstrap)
    if created:
        progress(f"created topics: {', '.join(created)}")
    processors, threads = build_on_model_threads(settings, names, progress)
    for processor in processors:
        progress(f"{processor.name}: capabilities {', '.join(validate(processor)) or '-'}")
    batched = batch_consumers(settings, processors)
    app = create_app(settings, bootstrap)
    partition_counts = describe_topics(settings, bootstrap)
    send = faust_sender(app, partition_counts)
    readiness = Readiness(consumers=(*(("faust",) if len(batched) < len(processors) else ()),
                                     *(p.name for p in processors if p.name in batched)))
    runners, sources = [], []
    for processor in processors:
        store = None
        group = batch_group_id(settings.app_id, processor.name) if processor.name in batched else settings.app_id
        inherited: dict[tuple[str, int], int] = {}
        if processor.name in batched:  # moved off a Faust agent: continue where that group stopped
            inherited = inherited_offsets(settings, bootstrap, processor.source_topics, group, settings.app_id)
            if inherited:
                progress(f"{processor.name}: group {group} has no commits on {len(inherited)} partition(s) that "
                         f"group {settings.app_id} has; starting them there")
        if isinstance(processor, Checkpointed):
            store = StateStore(topic=processor.state_topic, kind=processor.state_store, processor=processor.name,
                               app_id=settings.app_id, state_dir=settings.state_dir)
            if not isinstance(processor, PartitionedState):  # that one is restored per assignment (handover)
                threads[processor.name].submit(restore_from_kafka, processor, store, settings, bootstrap, progress,
                                               group_id=group, inherited=inherited).result()
        runner = ProcessorRunner(processor, send, max_message_bytes=settings.max_message_bytes, state=store,
                                 executor=threads[processor.name])
        runners.append(runner)
        if processor.name in batched:
            sources.append(BatchSource(runner, settings, bootstrap, start_at=inherited,
                                       on_assigned=lambda tps, name=processor.name: on_assignment(name, tps)))
            attach_ticker(app, runner)
            progress(f"{processor.name}: batch consumer (aiokafka getmany), group {group}")
        else:
            attach(app, runner)
        if isinstance(processor, Served):
            register_routes(app, processor.routes())
    register_worker_pages(app, settings.app_id, readiness, runners, settings.health_stall_s)
    pinned = {"sentiment"} if settings.sentiment_model != "default" else set()  # else: the registry's champion
    follower = ModelUpdateFollower(settings, bootstrap, runners, progress, pinned=pinned)

    @app.task
    async def follow_model_updates() -> None:
        await follower.run()

    for source in sources:
        app.task(source.run)

    @app.on_before_shutdown.connect
    async def stop_batch_sources(sender: faust.App, **_: object) -> None:  # type: ignore[type-arg]
        """After Faust's consumer stopped, before its producer flushes and stops: batches in flight are
        delivered (the producer still runs) and their offsets committed."""
        await asyncio.gather(*(source.stop() for source in sources))

    frozen = freeze_loaded()  # the loaded models out of every later full collection (heap.py)
    log.info("froze %d long-lived objects out of the cyclic GC", frozen)
    readiness.models_loaded = True
    handover = Handover(runners, lambda runner, partitions: restore_from_kafka(
        runner.processor, runner.state, settings, bootstrap, progress, partitions))

    def on_assignment(consumer: str, partitions: set[tuple[str, int]]) -> None:
        readiness.assign(consumer, partitions)
        if readiness.assigned:
            progress(f"worker ready: {len(readiness.partitions)} partitions assigned: "
                     f"{' '.join(readiness.partitions) or '-'}")
        fed = [p for p in processors if (p.name == consumer if consumer in batched else p.name not in batched)]
        for warning in partial_state_warnings(fed, partitions, partition_counts):
            progress(f"warning: {warning}")

    @app.on_partitions_revoked.connect
    async def hand_over(sender: faust.App, revoked: set, **_: object) -> None:  # type: ignore[type-arg]
        await handover.revoked()

    @app.on_partitions_assigned.connect
    async def announce(sender: faust.App, assigned: set, **_: object) -> None:  # type: ignore[type-arg]
        partitions = {(tp.topic, tp.partition) for tp in assigned}
        await handover.assigned(partitions)
        on_assignment("faust", partitions)

    return app


def batch_consumers(settings: Settings, processors: Sequence[Processor]) -> set[str]:
    """The processors of this worker that STREAMSENSE_BATCH_CONSUMER puts on the batch path (names it lists
    that this worker does not run are ignored: one setting serves every worker of a deployment)."""
    wanted = {n.strip() for n in settings.batch_consumer.split(",") if n.strip()}
    unknown = wanted - set(BUILDERS)
    if unknown:
        raise ConfigError(f"STREAMSENSE_BATCH_CONSUMER names unknown processors {sorted(unknown)}; "
                          f"available: {', '.join(BUILDERS)}")
    chosen = {p.name for p in processors if p.name in wanted}
    partitioned = [p.name for p in processors if p.name in chosen and isinstance(p, PartitionedState)]
    if partitioned:
        raise ConfigError(f"STREAMSENSE_BATCH_CONSUMER: {', '.join(partitioned)} keeps state per partition, "
                          "handed over on rebalance by the Faust path; remove it from the list")
    return chosen


def partial_state_warnings(
    processors: Sequence[Processor], assigned: set[tuple[str, int]], partition_counts: dict[str, int]
) -> list[str]:
    """Processors whose state must see every partition of some topics (``WholePartitions``) say so when a
    rebalance gave this worker only part of them: a second worker in the same group splits their model."""
    out = []
    held = set(assigned)
    for p in processors:
        if not isinstance(p, WholePartitions):
            continue
        for topic in p.whole_partition_topics:
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
