"""Items that arrive while a batch runs go together in the next one.

A text tower run over n texts costs far less than n runs (the demo's MiniLM: 6.4 ms of CPU for
one new text, 3.2 ms a text in a batch of 8; BENCHMARKS.md), so when many users type new
queries at once the server embeds them in batches. A lone item never waits for company: it
starts at once when a batch slot is free, so an idle server answers as fast as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Batcher(Generic[K, V]):
    """`await batcher(item)` -> `run_batch([..., item, ...])`'s value for it. At most `slots`
    batches run at once, each of at most `max_batch` items; an item waits only while every slot
    is busy, then goes in the next batch with the others that arrived meanwhile."""

    def __init__(self, run_batch: Callable[[list[K]], Awaitable[Sequence[V]]], max_batch: int, slots: int):
        if max_batch < 1 or slots < 1:
            raise ValueError("max_batch and slots must be at least 1")
        self.run_batch, self.max_batch, self.slots = run_batch, max_batch, slots
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._running = 0
        self._drains: set[asyncio.Task] = set()  # held, so a running drain is not collected

    async def __call__(self, item: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running < self.slots:
            self._running += 1
            drain = asyncio.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await future  # a caller that is cancelled cancels its future; the batch skips it

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [(k, f) for k, f in self._pending[: self.max_batch] if not f.done()]
                del self._pending[: self.max_batch]
                if batch:
                    await self._run(batch)
        finally:
            self._running -= 1

    async def _run(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            values = await self.run_batch([k for k, _ in batch])
        except BaseException as exc:
            # an error goes to every waiter of the batch, and later batches run; if the drain
            # itself is cancelled (shutdown), its waiters are released and it stops
            failed = isinstance(exc, Exception)
            for _, future in batch:
                if future.done():
                    continue
                if failed:
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not failed:
                raise
            return
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(value)
