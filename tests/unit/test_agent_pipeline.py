"""The agent's ordered pipeline: the model works on one batch while the next is read, yet outputs and acks
leave strictly in submission order, and the number of undelivered batches stays bounded."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from streams.contracts.records import OutRecord
from streams.runtime.runner import OrderedPipeline


def out(tag: str) -> list[OutRecord]:
    return [OutRecord("t", None, tag.encode())]


def test_delivery_and_acks_follow_submission_order_even_when_a_delivery_is_slow() -> None:
    delivered: list[bytes] = []
    acked: list[str] = []

    async def deliver(outputs: list[OutRecord]) -> None:
        if outputs[0].value == b"b0":
            await asyncio.sleep(0.2)  # the first batch's broker ack is slow; later batches must wait for it
        delivered.extend(o.value for o in outputs)

    async def main() -> None:
        pipeline = OrderedPipeline(ThreadPoolExecutor(1), deliver, depth=3)
        for n in range(3):
            async def ack(outputs: list[OutRecord], process_s: float, deliver_s: float, n: int = n) -> None:
                acked.append(f"b{n}")
            await pipeline.submit(lambda n=n: out(f"b{n}"), ack)
        await asyncio.wait_for(asyncio.gather(*pipeline._tasks), 5)

    asyncio.run(main())
    assert delivered == [b"b0", b"b1", b"b2"]
    assert acked == ["b0", "b1", "b2"]


def test_submit_returns_before_the_work_is_done_but_depth_bounds_what_is_in_flight() -> None:
    release = threading.Event()
    started: list[int] = []

    def work(n: int) -> list[OutRecord]:
        started.append(n)
        release.wait(5)
        return out(f"b{n}")

    async def deliver(outputs: list[OutRecord]) -> None:
        return None

    async def noop(outputs: list[OutRecord], process_s: float, deliver_s: float) -> None:
        return None

    async def main() -> None:
        pipeline = OrderedPipeline(ThreadPoolExecutor(1), deliver, depth=2)
        await asyncio.wait_for(pipeline.submit(lambda: work(0), noop), 1)  # returns while work(0) blocks
        await asyncio.wait_for(pipeline.submit(lambda: work(1), noop), 1)
        third = asyncio.ensure_future(pipeline.submit(lambda: work(2), noop))
        await asyncio.sleep(0.2)
        assert not third.done()  # two batches undelivered: the reader waits
        release.set()
        await asyncio.wait_for(third, 5)
        await asyncio.wait_for(asyncio.gather(*pipeline._tasks), 5)

    asyncio.run(main())
    assert started == [0, 1, 2]


def test_depth_zero_is_read_process_deliver() -> None:
    delivered: list[bytes] = []

    async def deliver(outputs: list[OutRecord]) -> None:
        await asyncio.sleep(0.05)
        delivered.extend(o.value for o in outputs)

    async def noop(outputs: list[OutRecord], process_s: float, deliver_s: float) -> None:
        return None

    async def main() -> None:
        pipeline = OrderedPipeline(ThreadPoolExecutor(1), deliver, depth=0)
        await pipeline.submit(lambda: out("b0"), noop)
        assert delivered == [b"b0"]  # submit returned only after the batch was delivered

    asyncio.run(main())
