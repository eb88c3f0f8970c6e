"""Blocking model calls seen from the event loop: a generator run in a worker thread, its items yielded
to the loop as they come."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Iterator

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
