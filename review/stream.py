"""Overlapping stages for the video path: decode ahead in one thread, render and encode behind in another; and the
same interface run inline, in the calling thread (the serial mode, review.streaming=false, and still images).

The heavy parts (FFmpeg decoding and encoding, OpenCV resizing and PNG compression, the model) release Python's GIL,
so plain threads overlap them on a few cores. Every queue is bounded, so memory stays flat however long the video;
one worker per stage keeps frames in order. An exception in a worker reaches the main thread at the next submit or
at the end, and leaving the ``with`` block on an error stops the workers before the writers drop their partial files.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yield ``items`` while a background thread produces up to ``depth`` of them ahead (e.g. decoded frames)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # re-raised in the consumer
            put(e)

    t = threading.Thread(target=produce, name="endolift-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the producer's timed puts see it within 0.1 s, even on a full queue
        t.join(timeout=5)


class OrderedWorker:
    """One background thread that runs submitted jobs in order, with at most ``depth`` waiting (back-pressure)."""

    def __init__(self, depth: int, name: str = "endolift-worker") -> None:
        self.depth = max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args, **kwargs))
        while self._pending and (len(self._pending) > self.depth or self._pending[0].done()):
            self._pending.popleft().result()  # re-raises a worker's exception here

    def __enter__(self) -> OrderedWorker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            return
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


def in_order(items: Iterable[T], depth: int) -> Iterator[T]:
    """prefetch's serial counterpart: ``items`` produced in the calling thread, one at a time (``depth`` unused)."""
    return iter(items)


class InlineWorker:
    """OrderedWorker's serial counterpart: each submitted job runs at once, in the calling thread."""

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)

    def __enter__(self) -> InlineWorker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        return None
