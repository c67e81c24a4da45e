"""The transport-neutral core of the runtime: one processor's model thread, ordered delivery, acks,
checkpoints, ticks and model swaps. The Faust agent (agent.py) feeds it batches; the in-process harness
(testing.py) feeds it lists. Neither the processor nor this module knows Kafka: outputs leave through the
``send`` function given to `Delivery`.

Order is the contract: everything that runs on the model thread — batches, ticks, swaps — is delivered and
acknowledged in the order it was submitted, and a batch's state checkpoints go out after its outputs, so a
checkpoint never claims inputs whose outputs could still be lost. Why a thread: Faust heartbeats run on the
event loop, and a model call that held the loop longer than the session timeout would get the worker kicked
out of its group (torch and spaCy release the GIL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from monitoring import metrics
from processors.base import Checkpointed, HotSwappable, Processor, Ticking, validate
from streams.contracts import topics
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import now_ms
from streams.runtime.delivery import Delivery, DeliveryFailed, Send
from streams.runtime.heap import HeapTrimmer, freeze_loaded
from streams.runtime.state_store import StateStore

log = logging.getLogger(__name__)

EXIT_DELIVERY_FAILED = 75  # EX_TEMPFAIL: restart me


def exit_for_restart() -> NoReturn:
    """Fail-stop: leave the unacked batches uncommitted, so the restarted worker reprocesses them."""
    os._exit(EXIT_DELIVERY_FAILED)


def process_or_dead_letter(processor: Processor, records: list[RawRecord]) -> list[OutRecord]:
    """A bug inside a processor must not lose the batch: each input becomes a dead letter instead."""
    try:
        return processor.process(records)
    except Exception as exc:
        log.exception("processor %s failed on a batch of %d; dead-lettering it", processor.name, len(records))
        reason = f"processor crashed: {type(exc).__name__}: {exc}"
        return [dead_letter(r, processor=processor.name, reason=reason, error="ProcessorError") for r in records]


class OrderedPipeline:
    """Runs work on the model thread while the agent reads the next batch; delivers and acks in order.

    Faust's ``take_events`` stops buffering while the loop body runs, so reading (Faust's per-message
    bookkeeping, ~80 us a message here) and the model's work added up. With ``noack_take`` the agent hands a
    batch to the model thread and goes back to reading; each batch's outputs are delivered only after the
    previous batch's (ticks included, so a state checkpoint never overtakes the outputs it accounts for), and its
    events are acked only after that: at-least-once as before. ``depth`` bounds the batches submitted but not yet
    delivered; 0 makes ``submit`` wait for delivery, i.e. plain read-process-deliver (Faust reads nothing meanwhile).
    """

    def __init__(self, pool: ThreadPoolExecutor, deliver: Callable[[list[OutRecord]], Awaitable[list[OutRecord]]],
                 depth: int = 0, on_broken: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self._on_broken = on_broken or exit_for_restart
        self._deliver = deliver
        self._wait = depth == 0
        self._slots = asyncio.Semaphore(max(depth, 1))
        self._last: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.broken = False  # once a delivery failed nothing after it may be delivered or acked

    async def submit(
        self,
        work: Callable[[], list[OutRecord]],
        after_delivery: Callable[[list[OutRecord], float, float], Awaitable[None]],
    ) -> None:
        """Queue ``work`` (never raises) on the model thread; returns once it is queued (depth 0: delivered)."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._pool, _timed, work)
        task = asyncio.ensure_future(self._finish(done, self._last, after_delivery))
        self._last = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._wait:
            await asyncio.shield(task)  # a cancelled agent must not cancel a batch that is mid-delivery

    async def _finish(
        self,
        done: asyncio.Future[tuple[list[OutRecord], float]],
        previous: asyncio.Future[None] | None,
        after_delivery: Callable[[list[OutRecord], float, float], Awaitable[None]],
    ) -> None:
        try:
            outputs, process_s = await done
            if previous is not None:
                await previous
            if self.broken:
                return
            delivering = time.perf_counter()
            delivered = await self._deliver(outputs)  # dead letters may stand in for undeliverable outputs
            await after_delivery(delivered, process_s, time.perf_counter() - delivering)
        except asyncio.CancelledError:  # the worker is stopping: whatever was not acked is read again
            raise
        except Exception:  # a broken chain would stop every later ack: the worker would stall silently
            log.critical("delivery pipeline failed; exiting so the unacked batches are reprocessed", exc_info=True)
            self.broken = True
            self._on_broken()
        finally:
            self._slots.release()


    async def drain(self) -> None:
        """Wait until everything submitted so far is delivered (or the pipeline broke)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


def model_thread(processor: str) -> ThreadPoolExecutor:
    """The one thread a processor's models are loaded, restored and run on (worker.py says why it must be one)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{processor}-model")


def _timed(work: Callable[[], list[OutRecord]]) -> tuple[list[OutRecord], float]:
    started = time.perf_counter()
    return work(), time.perf_counter() - started




def record_metrics(
    name: str, records: list[RawRecord], outputs: list[OutRecord], process_s: float, deliver_s: float
) -> None:
    metrics.BATCH_SIZE.labels(name).observe(len(records))
    metrics.BATCH_SECONDS.labels(name).observe(process_s)
    metrics.DELIVERY_SECONDS.labels(name).observe(deliver_s)
    for topic, n in Counter(r.topic for r in records).items():
        metrics.CONSUMED.labels(name, topic).inc(n)
    record_outputs(name, outputs)


def record_outputs(name: str, outputs: list[OutRecord]) -> None:
    for topic, n in Counter(o.topic for o in outputs).items():
        metrics.PRODUCED.labels(name, topic).inc(n)
    delivered = now_ms()
    for o in outputs:
        if o.topic == topics.DEADLETTER:
            metrics.DEAD_LETTERS.labels(name, dict(o.headers).get("error", b"unknown").decode()).inc()
        elif o.source is not None and o.source.timestamp_ms:
            metrics.END_TO_END_LATENCY.labels(name).observe(max(0, delivered - o.source.timestamp_ms) / 1000)


class ProcessorRunner:
    """Runs one processor for the runtime: model thread, delivery, acks, checkpoints, ticks, swaps, health.

    ``submit(records, ack)`` hands a batch over; ``ack`` is awaited once the batch's outputs (and checkpoints)
    are on the broker. Transient delivery failures fail-stop through ``on_fatal`` (default: exit 75)."""

    def __init__(
        self,
        processor: Processor,
        send: Send,
        *,
        max_message_bytes: int,
        state: StateStore | None = None,
        on_fatal: Callable[[DeliveryFailed], NoReturn] | None = None,
        on_broken: Callable[[], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.capabilities = validate(processor)
        self.processor = processor
        self.clock = clock
        self.checkpointed = isinstance(processor, Checkpointed)
        if self.checkpointed and state is None:
            raise ValueError(f"processor {processor.name!r} is checkpointed but no state store was given")
        self.state = state if self.checkpointed else None
        self.pool = executor or model_thread(processor.name)
        checkpoint_topics = (processor.state_topic,) if isinstance(processor, Checkpointed) else ()
        self.delivery = Delivery(send, processor=processor.name, max_message_bytes=max_message_bytes,
                                 checkpoint_topics=checkpoint_topics, on_fatal=on_fatal or self._fail_stop)
        self.pipeline = OrderedPipeline(self.pool, self.delivery.deliver, depth=processor.read_ahead,
                                        on_broken=on_broken)
        self.busy_since: float | None = None  # monotonic start of the work on the model thread, for /health
        self.heap = HeapTrimmer()  # freed tensor memory back to the OS between batches (heap.py)
        self._published: dict[str, str] = {}
        self.publish_model_info()
        self.ticks_paused = False  # during a rebalance: a tick must not touch state that is changing hands

    @property
    def tick_s(self) -> float | None:
        """How often the runtime should call ``tick``: the processor's own period, else 1 s for a checkpointed
        processor (a time-based checkpoint is due even when no batch arrives), else never."""
        if isinstance(self.processor, Ticking):
            return float(self.processor.tick_s)
        return 1.0 if self.checkpointed else None

    def busy_for(self) -> float:
        """Seconds the model thread has been on its current piece of work (0 when idle)."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def submit(self, records: list[RawRecord], ack: Callable[[], Awaitable[None]]) -> None:
        async def after(outputs: list[OutRecord], process_s: float, deliver_s: float) -> None:
            await ack()
            record_metrics(self.processor.name, records, outputs, process_s, deliver_s)

        await self.pipeline.submit(lambda: self._on_model_thread(process_or_dead_letter, self.processor, records),
                                   after)

    async def tick(self) -> None:
        """Periodic work, in order with the batches: the processor's tick, then any checkpoint now due."""
        processor = self.processor

        def work() -> list[OutRecord]:
            if not isinstance(processor, Ticking) or self.ticks_paused:
                return []
            try:
                return processor.tick(self.clock())
            except Exception:
                log.exception("tick of %s failed", processor.name)
                return []

        async def count(outputs: list[OutRecord], process_s: float, deliver_s: float) -> None:
            record_outputs(processor.name, outputs)

        await self.pipeline.submit(lambda: self._on_model_thread(work), count)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread after everything submitted before it (never mid-batch); returns its
        result or raises what it raised. Checkpoints it makes due go out like a batch's."""
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        outcome: list[Any] = []

        def work() -> list[OutRecord]:
            try:
                outcome.append(fn())
            except Exception as exc:
                outcome.append(exc)
            return []

        async def settle(outputs: list[OutRecord], process_s: float, deliver_s: float) -> None:
            record_outputs(self.processor.name, outputs)
            if isinstance(outcome[0], Exception):
                result.set_exception(outcome[0])
            else:
                result.set_result(outcome[0])

        await self.pipeline.submit(lambda: self._on_model_thread(work), settle)
        return await result

    async def swap(self, model: str, version: str) -> str:
        """Load ``version`` of ``model`` between batches on the model thread; returns the new "name@version".
        Raises what the processor's loader raised (the serving model is then unchanged)."""
        processor = self.processor
        if not isinstance(processor, HotSwappable):
            raise TypeError(f"processor {processor.name!r} does not declare the hot-swap capability")
        started = time.perf_counter()

        def load() -> str:
            loaded = processor.load_model(model, version)
            freeze_loaded()  # the old model's frozen cycles collected, the new model frozen (heap.py)
            return loaded

        serving = await self.call(load)
        self.publish_model_info()
        log.info("%s: now serving %s for %s (swapped in %.1f s)", processor.name, serving, model,
                 time.perf_counter() - started)
        return str(serving)

    def publish_model_info(self) -> None:
        """``streamsense_model_info{processor,model,version} 1`` for what a hot-swappable processor serves."""
        if not isinstance(self.processor, HotSwappable):
            return
        for model, version in self.processor.model_versions().items():
            old = self._published.get(model)
            if old is not None and old != version:
                metrics.MODEL_INFO.remove(self.processor.name, model, old)
            metrics.MODEL_INFO.labels(self.processor.name, model, version).set(1)
            self._published[model] = version

    def _on_model_thread(self, fn: Callable[..., list[OutRecord]], *args: Any) -> list[OutRecord]:
        self.busy_since = time.monotonic()
        try:
            outputs = fn(*args)
            if self.state is not None:
                assert isinstance(self.processor, Checkpointed)
                outputs = outputs + self.state.records(self.processor.checkpoints(self.clock()))
            return outputs
        finally:
            self.busy_since = None
            self.heap.maybe_trim()

    def _fail_stop(self, exc: DeliveryFailed) -> NoReturn:
        log.critical("could not deliver outputs of %s (%s); exiting without committing so the batch is "
                     "reprocessed after restart", self.processor.name, exc, exc_info=exc)
        exit_for_restart()
