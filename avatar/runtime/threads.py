"""Blocking model calls seen from the event loop: a call or a generator run in a worker thread, its items
yielded to the loop as they come, within the stage timeouts (``limits.stage_timeout_s``, ``item_timeout_s``)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator

from avatar.errors import StageError

_DONE = object()


async def iterate_in_thread(make_iter: Callable[[], Iterator[Any]], executor=None) -> AsyncIterator[Any]:
    """Run a blocking generator in a worker thread and yield its items in the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed while the worker was busy (shutdown)
            pass

    def work() -> None:
        try:
            for item in make_iter():
                put((item, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            put((None, exc))
            return
        put((_DONE, None))

    future = loop.run_in_executor(executor, work)
    try:
        while True:
            item, exc = await queue.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                break
            yield item
    finally:
        if future.done():
            future.exception()  # collected, so asyncio does not warn about it
        else:  # collected when the worker ends, so asyncio does not warn about it either
            future.add_done_callback(lambda f: f.cancelled() or f.exception())


async def run_in_worker(pool: ThreadPoolExecutor, work: Callable, what: str, timeout: float):
    """``work()`` in one of ``pool``'s threads, within ``timeout`` seconds; called holding a turn of the
    pool's FairQueue.

    A worker thread cannot be stopped. When the caller is cancelled (a speculation the user talked
    over, a session that left), the turn is held until the thread is free again: released at once, it
    let the next job queue inside the pool behind the abandoned one, unseen by the fair order. Three
    chattering sessions had their dropped speculations running that way, and a fourth session's
    speculative transcription of 2 s took 913 ms instead of 50-70 ms."""
    call = asyncio.get_running_loop().run_in_executor(pool, work)
    call.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, whoever waits
    try:
        return await asyncio.wait_for(asyncio.shield(call), timeout)
    except asyncio.TimeoutError:
        raise StageError(f"{what} took longer than {timeout:.0f} s") from None
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(asyncio.shield(call), timeout)
        except BaseException:  # noqa: BLE001 - its result is unwanted; a second cancel ends the wait
            pass
        raise


async def with_timeouts(items: AsyncIterator, limits, what: str, cancel: threading.Event, *,
                        each_like_first: bool = False) -> AsyncIterator:
    """A stage that hangs, before its first output (``limits.stage_timeout_s``) or between two outputs
    (``limits.item_timeout_s``), becomes a StageError instead of a stuck turn; ``cancel`` tells the worker
    thread to stop. ``each_like_first``: every output is a whole piece of work (a synthesised sentence), so
    each gets the first output's time."""
    iterator = items.__aiter__()
    first = True
    try:
        while True:
            timeout = limits.stage_timeout_s if first or each_like_first else limits.item_timeout_s
            try:
                item = await asyncio.wait_for(iterator.__anext__(), timeout)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                cancel.set()
                if first:
                    raise StageError(f"{what} gave no output within {timeout:g} s; try again or check the "
                                     "server log") from None
                raise StageError(f"{what} stalled for {timeout:g} s in the middle of a reply; try again or "
                                 "check the server log") from None
            first = False
            yield item
    finally:
        await iterator.aclose()
