"""Hand the work that arrives while a flush runs to the next flush, together (asyncio).

The receiver's group commit (:mod:`.grouped` says why). A request that finds
no flush running is flushed at once, alone, so a lone webhook waits for
nothing; requests that arrive while a flush runs queue, and the next flush
takes them all (up to ``max_group``). Groups so grow with the load and shrink
back with it.

One flush at a time is the cheapest (measured: the fewer statements, the
less CPU per webhook), but a flush stuck on a lock (a sweep holding a
delivery row for seconds) must not hold up every webhook behind it. So a
second flush may start once the running one is ``patience`` seconds old, a
third once that one is, and so on up to ``max_in_flight``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """``await submit(item)`` returns ``flush([..., item, ...])``'s result for ``item``."""

    def __init__(
        self,
        flush: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_group: int,
        max_in_flight: int,
        patience: float,
    ) -> None:
        self._flush = flush
        self.max_group = max_group
        self.max_in_flight = max_in_flight
        self.patience = patience
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight = 0
        self._last_start = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start_flushes()
        return await future

    def _start_flushes(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self.max_in_flight:
            waited = loop.time() - self._last_start
            if self._in_flight and waited < self.patience:
                if self._timer is None:  # look again when the latest flush has run for `patience`
                    self._timer = loop.call_later(self.patience - waited, self._on_timer)
                return
            group, self._pending = self._pending[: self.max_group], self._pending[self.max_group :]
            self._in_flight += 1
            self._last_start = loop.time()
            task = asyncio.ensure_future(self._run(group))
            self._tasks.add(task)  # a reference, so the task is not collected mid-flight
            task.add_done_callback(self._tasks.discard)

    def _on_timer(self) -> None:
        self._timer = None
        self._start_flushes()

    async def _run(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._flush([item for item, _ in group])
        except BaseException as exc:  # every waiter gets the failure, then it propagates
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._start_flushes()
