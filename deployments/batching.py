"""Dynamic batching for one model: concurrent calls in, one batched forward pass out.

Why not ``@serve.batch``: in Ray 2.60 it forms each batch as soon as its wait timeout passes and only *then*
waits for the model (``max_concurrent_batches``). While one batch runs, every request that arrives becomes a
batch of its own, queued behind it, so a busy GPU model runs batches of 1-2 one after another. Measured on
issue 14's setup (a 60 ms-per-batch detector, 32 concurrent clients): batches of 1, one every 61 ms.

:class:`DynamicBatcher` forms a batch when the model is **free**: it takes up to ``max_batch_size`` of the
calls waiting at that moment. It waits for more only while the oldest waiting call is younger than
``wait_timeout_s``, so under load (calls queued during the previous batch) the next batch starts at once,
full, and at low load a lone call waits at most ``wait_timeout_s``.

Plain asyncio, no Ray: the detector deployment owns one, and the tests drive it directly.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """``await batcher.submit(item)`` returns ``run_batch([..., item, ...])``'s result for ``item``.

    ``run_batch`` gets the items of one batch in arrival order and returns one result per item, in the same
    order. If it raises, every caller in that batch gets the exception; the next batch is unaffected. A caller
    that is cancelled while waiting (the ingress timed out) is left out of the batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Awaitable[list[Any]]],
        max_batch_size: int = 8,
        wait_timeout_s: float = 0.005,
    ):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.wait_timeout_s = wait_timeout_s
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._arrival = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def configure(self, max_batch_size: int, wait_timeout_s: float) -> None:
        """New limits, from the next batch on (the deployment's ``reconfigure``)."""
        if max_batch_size < 1 or wait_timeout_s < 0:
            raise ValueError(
                f"max_batch_size must be >= 1 and wait_timeout_s >= 0, got {max_batch_size}, {wait_timeout_s}"
            )
        self.max_batch_size = max_batch_size
        self.wait_timeout_s = wait_timeout_s

    @property
    def queued(self) -> int:
        """Calls waiting for a batch (not counting the batch that runs)."""
        return sum(not w.future.done() for w in self._waiting)

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            # Started on first use, in the loop the calls arrive on (Serve runs user code in its own loop).
            self._arrival = asyncio.Event()
            self._worker = loop.create_task(self._run_forever())
        waiting = _Waiting(item, loop.create_future())
        self._waiting.append(waiting)
        self._arrival.set()
        return await waiting.future  # cancelling the caller cancels this future: the batch then skips it

    async def _run_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                results = await self.run_batch([w.item for w in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as err:  # noqa: BLE001 - handed to every caller of this batch, the loop goes on
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(err)
                continue
            for waiting, result in zip(batch, results):
                if not waiting.future.done():
                    waiting.future.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        """Called when the model is free: the calls waiting now (up to the limit), after waiting for more only
        while the oldest of them is younger than ``wait_timeout_s``."""
        while True:
            await self._wait_for_first()
            deadline = self._waiting[0].arrived + self.wait_timeout_s
            while len(self._waiting) < self.max_batch_size and (remaining := deadline - time.monotonic()) > 0:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                self._drop_cancelled()
            batch = []
            while self._waiting and len(batch) < self.max_batch_size:
                waiting = self._waiting.popleft()
                if not waiting.future.done():
                    batch.append(waiting)
            if batch:  # else every one of them was cancelled meanwhile: wait again
                return batch

    async def _wait_for_first(self) -> None:
        self._drop_cancelled()
        while not self._waiting:
            self._arrival.clear()
            await self._arrival.wait()
            self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        if any(w.future.done() for w in self._waiting):
            self._waiting = collections.deque(w for w in self._waiting if not w.future.done())
