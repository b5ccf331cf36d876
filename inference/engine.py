"""One inference engine for the daemon: views from every study in flight, batched dynamically.

The preparation workers decode views; the studies being scored (``model.studies_in_flight``
threads) hand their prepared views to :meth:`InferenceEngine.submit`, which queues them and
returns a future per view. One engine thread owns the model: it takes the most urgent view,
waits at most ``max_wait_ms`` for more to fill a batch of ``batch_size``, scores the batch in
one forward pass, and resolves the futures. So views of different studies share a batch, the
model never waits for a study to finish decoding, and a study's latency grows by at most
``max_wait_ms`` over scoring it alone.

The queue is bounded (``queue_views``): when it is full :meth:`submit` blocks, so a burst of
studies waits in their threads, as files on disk, rather than as tensors in memory
(back-pressure). Memory stays at ``queue_views`` + ``batch_size`` views whatever the burst.

**Urgent first, without starving the rest.** Each view carries its study's rank (0 the most
urgent: HIGH, 1 ROUTINE, ...). The queue is ordered by ``enqueued_at + rank * aging_s``
(earliest deadline first, with a slack per rank): a HIGH view overtakes every ROUTINE view
queued less than ``aging_s`` before it, and a ROUTINE view waits at most ``aging_s`` longer than
it would have with no urgent work at all, however much urgent work keeps arriving.

The engine is model-agnostic: its ``backend`` is anything with ``score(views)`` and, for
heatmaps, ``score_with_heatmaps(views, method)`` (an :class:`inference.model.Scorer`, or a test
stand-in). Device matters (autocast, channels_last, pinned memory, compilation, OOM halving)
live in the backend.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: The result of one view: its probability and heatmap (None when none was asked for).
ViewResult = tuple[float, "np.ndarray | None"]


class EngineClosed(RuntimeError):
    """The engine was stopped; the view was not scored."""


@dataclass(order=True)
class _Item:
    key: float
    seq: int
    view: np.ndarray = field(compare=False)
    heatmap: str | None = field(compare=False)
    future: "Future[ViewResult]" = field(compare=False)


@dataclass
class EngineStats:
    """Counters since start (read by the daemon's status and benchmarks)."""

    batches: int = 0
    views: int = 0
    busy_s: float = 0.0
    largest_batch: int = 0
    max_queued: int = 0


class InferenceEngine:
    """Dynamic batching over one backend in one thread; see the module's docstring."""

    def __init__(self, backend: Any = None, *, factory: Callable[[], Any] | None = None,
                 batch_size: int | None = None, max_wait_ms: float = 10.0,
                 queue_views: int = 0, aging_s: float = 30.0,
                 on_batch: Callable[[int, float, int], None] | None = None) -> None:
        """``backend``, or ``factory``: called in the engine thread by :meth:`start` to make the
        backend (load the model, warm it up), so every torch operation of the daemon runs in
        that one thread. On the CPU this matters: OpenMP keeps a thread team per calling
        thread, and a second team on a 2-core machine makes both spin less and sleep more
        (the engine measured 25 % slower when the model was loaded in another thread).
        ``batch_size``: default the backend's own; ``queue_views``: 0 means four batches.
        ``on_batch(views, seconds, still_queued)`` is called after every batch (metrics)."""
        if (backend is None) == (factory is None):
            raise ValueError("give the engine a backend or a factory, not both or neither")
        self.backend = backend
        self._factory = factory
        self._batch_size_arg = batch_size
        self.batch_size = int(batch_size or getattr(backend, "batch_size", 16) or 16)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.queue_views = max(int(queue_views or 4 * self.batch_size), self.batch_size)
        self.aging_s = float(aging_s)
        self.on_batch = on_batch
        self.stats = EngineStats()
        #: a backend without heatmaps scores views asked for with one; their heatmap is None
        self._heatmaps = callable(getattr(backend, "score_with_heatmaps", None))
        self._queue_views_arg = queue_views
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- what the worker sees (the ViewScorer protocol, plus submit) ---------------------------

    @property
    def card(self):  # type: ignore[no-untyped-def]  # an inference.model.ModelCard
        if self.backend is None:
            raise RuntimeError("the engine makes its model when it starts: call start() first")
        return self.backend.card

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    def start(self) -> "InferenceEngine":
        """Start the engine thread; with a factory, wait until it has made the backend (and
        raise what the factory raised)."""
        with self._cond:
            if self._thread is not None:
                return self
            self._closing = False
            ready = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(target=self._run, args=(ready, failure),
                                            name="radtriage-inference", daemon=True)
            self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def submit(self, views: Sequence[np.ndarray], *, heatmap: str | None = None, rank: int = 1,
               timeout_s: float | None = None) -> list["Future[ViewResult]"]:
        """Queue views (each 3 x H x W float32, normalised); one future per view, in order.

        Blocks while the queue is full. ``timeout_s``: if the queue has not room for every
        view by then, the views not yet queued get futures that fail with TimeoutError.
        """
        if self._thread is None:
            self.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        futures: list[Future[ViewResult]] = []
        with self._cond:
            for view in views:
                fut: Future[ViewResult] = Future()
                futures.append(fut)
                while len(self._heap) >= self.queue_views and not self._closing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.notify_all()  # the engine may be waiting for what is queued
                    self._cond.wait(left)
                if self._closing:
                    fut.set_exception(EngineClosed("the inference engine is stopping"))
                    continue
                if len(self._heap) >= self.queue_views:
                    fut.set_exception(TimeoutError("the inference queue stayed full"))
                    continue
                key = time.monotonic() + rank * self.aging_s
                heapq.heappush(self._heap, _Item(key, next(self._seq), view, heatmap, fut))
                self.stats.max_queued = max(self.stats.max_queued, len(self._heap))
            self._cond.notify_all()
        return futures

    def score(self, views: Sequence[np.ndarray], *, rank: int = 1) -> list[float]:
        """Probabilities, in order (blocks until scored)."""
        return [p for p, _ in self._wait(self.submit(views, rank=rank))]

    def score_with_heatmaps(self, views: Sequence[np.ndarray], method: str = "cam", *,
                            rank: int = 1) -> list[ViewResult]:
        return self._wait(self.submit(views, heatmap=method, rank=rank))

    @staticmethod
    def _wait(futures: Sequence["Future[ViewResult]"]) -> list[ViewResult]:
        return [f.result() for f in futures]

    def close(self) -> None:
        """Finish the views already queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            self._thread = None

    # -- the engine thread ---------------------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        """The next batch: the most urgent view and up to batch_size - 1 more with the same
        heatmap method, after waiting at most max_wait for the batch to fill."""
        with self._cond:
            while not self._heap:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while len(self._heap) < self.batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            method = self._heap[0].heatmap
            batch: list[_Item] = []
            other: list[_Item] = []
            while self._heap and len(batch) < self.batch_size:
                item = heapq.heappop(self._heap)
                if item.heatmap != method:
                    other.append(item)
                elif item.future.set_running_or_notify_cancel():  # False: the study gave up
                    batch.append(item)
            for item in other:
                heapq.heappush(self._heap, item)
            self._cond.notify_all()  # room for blocked producers
            return batch

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        if self.backend is None:
            try:
                self.backend = self._factory()  # type: ignore[misc]
            except BaseException as exc:  # start() raises it in the caller's thread
                failure.append(exc)
                ready.set()
                return
            self.batch_size = int(self._batch_size_arg or getattr(self.backend, "batch_size", 16) or 16)
            self.queue_views = max(int(self._queue_views_arg or 4 * self.batch_size), self.batch_size)
            self._heatmaps = callable(getattr(self.backend, "score_with_heatmaps", None))
        ready.set()
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            method = batch[0].heatmap
            views = [item.view for item in batch]
            start = time.perf_counter()
            try:
                if method and self._heatmaps:
                    results: list[ViewResult] = [
                        (float(p), m) for p, m in self.backend.score_with_heatmaps(views, method)]
                else:
                    results = [(float(p), None) for p in self.backend.score(views)]
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} scores for "
                                       f"{len(batch)} views")
            except BaseException as exc:  # every view of the batch fails with the model's error
                log.error("inference failed on a batch of %d view(s): %s: %s", len(batch),
                          type(exc).__name__, exc)
                for item in batch:
                    item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            seconds = time.perf_counter() - start
            for item, result in zip(batch, results):
                item.future.set_result(result)
            self.stats.batches += 1
            self.stats.views += len(batch)
            self.stats.busy_s += seconds
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds, self.queued)
