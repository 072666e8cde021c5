"""Micro-batching: frames for the same map (and feature set) that arrive together, from any robots
and through REST or streams, run as one device batch.

A key's first frame opens a batch; the batch closes when it holds ``max_batch`` frames or
``max_wait_s`` after it opened, whichever comes first, and goes to the worker pool as one call of
``run_batch(key, items)``, which returns one result (or exception) per item, in order. Batches of
a key do not wait for each other: while one runs on the device, the next fills up.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Groups submissions per key into batches (see module docstring).

    run_batch(key, payloads, waits_s) -> list of results or exceptions, awaited (the caller runs it
    in its worker pool); on_batch(size, waits_s) feeds the metrics.
    """

    def __init__(self, run_batch: Callable[[Hashable, list, list[float]], Awaitable[list]], max_batch: int,
                 max_wait_s: float, on_batch: Callable[[int, list[float]], None] = lambda n, w: None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch, self.max_wait_s = int(max_batch), float(max_wait_s)
        self._run, self._on_batch = run_batch, on_batch
        self._open: dict[Hashable, list[_Item]] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Queue ``payload`` under ``key``; returns its result (raises its exception)."""
        loop = asyncio.get_running_loop()
        item = _Item(payload, loop.create_future())
        batch = self._open.setdefault(key, [])
        batch.append(item)
        if len(batch) >= self.max_batch or self.max_wait_s <= 0:
            self._close(key)
        elif len(batch) == 1:
            self._timers[key] = loop.call_later(self.max_wait_s, self._close, key)
        return await item.future

    def _close(self, key: Hashable) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        items = self._open.pop(key, [])
        if items:
            task = asyncio.get_running_loop().create_task(self._dispatch(key, items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, key: Hashable, items: list[_Item]) -> None:
        now = time.perf_counter()
        waits = [now - it.enqueued for it in items]
        self._on_batch(len(items), waits)
        try:
            results = await self._run(key, [it.payload for it in items], waits)
        except BaseException as e:  # the whole batch failed: every caller gets the error
            results = [e] * len(items)
        for it, res in zip(items, results):
            if it.future.done():
                continue
            if isinstance(res, BaseException):
                it.future.set_exception(res)
            else:
                it.future.set_result(res)

    def pending(self) -> int:
        """Frames waiting in open batches."""
        return sum(len(b) for b in self._open.values())
