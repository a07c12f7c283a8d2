"""Batching across requests: images from many requests are scored together on one worker thread.

The worker takes the oldest waiting image, then everything else that arrives before that image has
waited `max_wait_s` (or until `max_batch`), and scores the lot in one call. Under load the model is
busy while images pile up, so batches fill without waiting at all; when idle, an image waits at most
a few milliseconds. Inference never runs on the event loop.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np
import torch


class Overloaded(Exception):
    """More images are in flight than the queue length allows."""


class Capacity:
    """Counts images admitted and not yet answered (decoding, waiting or being scored)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        with self._lock:
            if self.used + n > self.limit:
                raise Overloaded(f"server is busy: {self.used} image(s) in flight, queue length {self.limit}")
            self.used += n
        try:
            yield
        finally:
            with self._lock:
                self.used -= n


class MicroBatcher:
    """`submit(views)` queues one image (one preprocessed tensor per view of the model); its Future gets
    the image's (n_experts,) probabilities. `score(*batches)` takes one stacked batch per view."""

    def __init__(
        self,
        score: Callable[..., torch.Tensor | np.ndarray],
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        history: int = 10_000,
    ):
        self.score = score
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=history)  # most recent batches
        self.images_scored = 0
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="deepfake-moe-batcher", daemon=True)
        self._thread.start()

    def submit(self, views: tuple[torch.Tensor, ...]) -> Future:
        future: Future = Future()
        self._items.put((time.monotonic(), views, future))
        return future

    @property
    def waiting(self) -> int:
        return self._items.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued, then stop the worker."""
        self._items.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._items.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._score(batch)
            if stop:
                return

    def _gather(self, first) -> tuple[list, bool]:
        batch = [first]
        deadline = first[0] + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._items.get(timeout=remaining) if remaining > 0 else self._items.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _score(self, batch: list) -> None:
        live = [(x, f) for _, x, f in batch if f.set_running_or_notify_cancel()]  # skip timed-out requests
        if not live:
            return
        try:
            probs = np.asarray(self.score(*(torch.stack(view) for view in zip(*(x for x, _ in live)))))
        except Exception as e:  # noqa: BLE001 - the requests waiting on this batch get the error
            for _, f in live:
                f.set_exception(e)
            return
        self.batch_sizes.append(len(live))
        self.images_scored += len(live)
        for (_, f), p in zip(live, probs):
            f.set_result(p)
