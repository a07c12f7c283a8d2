"""Decode untrusted files in worker processes, each under a memory cap and a per-file timeout.

A hostile file can still find a way past the header checks of `image_io` (a decoder that
allocates more than the header says, or loops): in a worker it only kills its own decode. The
worker's allocations fail above its cap (a MemoryError: the worker reports an error row and goes
on) or the parent kills it at the timeout or finds it dead; either way the item becomes a
`DecodeFailure` row, a fresh worker takes the dead one's place, and results come out in input order.

Workers are forked from the caller (sharing its imported libraries and model pages copy-on-write,
as torch's DataLoader workers do); the cap is RLIMIT_DATA (RLIMIT_AS where that is missing) set
to the worker's own size at start plus its share of `DecodeBudget.memory_mb`. Results travel back
as plain arrays and numbers, never as pickles: a decoder taken over by a file cannot make the
parent run code.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing as mp
import os
import queue
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any, NamedTuple

import numpy as np

from deepfake_moe.data.image_io import MediaReadError
from deepfake_moe.data.limits import DecodeBudget, Failure, ImageLimits
from deepfake_moe.errors import ConfigError

WIRE_DTYPES = frozenset({"uint8", "float16", "float32", "float64", "int64", "bool"})
MAX_FRAME_BYTES = 1 << 31
ORPHAN_CHECK_S = 1.0
"""How often an idle worker checks that its parent is alive (a worker outliving a killed parent ends)."""


class DecodeFailure(NamedTuple):
    """An item that gave no result; `reason` is the error row's text, `kind` why for programs."""

    reason: str
    kind: Failure = Failure.CORRUPT


def failure_of(e: BaseException, cap_bytes: int | None = None) -> DecodeFailure:
    """A user's words and the kind for an exception raised by a decode (memory exhaustion spelled out)."""
    if isinstance(e, MediaReadError):
        return DecodeFailure(e.reason, e.kind)
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, MemoryError) or "Insufficient memory" in text or "can't allocate" in text:
        cap = f" ({cap_bytes >> 20:,} MiB per worker; raise --decode-memory if the file is trusted)" if cap_bytes else ""
        return DecodeFailure("decoding needs more memory than the decode budget" + cap, Failure.MEMORY)
    return DecodeFailure(text, Failure.CORRUPT)


def run_one(fn: Callable[[Any], Any], item: Any, cap_bytes: int | None = None) -> Any:
    try:
        return fn(item)
    except Exception as e:  # noqa: BLE001 - one odd file must not stop a million-image batch
        return failure_of(e, cap_bytes)


class _Part(NamedTuple):
    """One of the results a streaming task yields for its item (more follow)."""

    value: Any


END = object()
"""What a worker sends after the last part of a streaming task."""


class DecodePool:
    """`map(fn, items)` in `workers` capped processes, results in input order (0 workers: in-process).

    `stream(item)` runs a task that yields several results for one item (a video's frames) in one
    capped worker; `call(item)` runs one item in a worker kept for the next call (a server's uploads).
    """

    def __init__(self, fn: Callable[[Any], Any], workers: int, budget: DecodeBudget | None = None,
                 ahead_per_worker: int = 8):
        if workers < 0:
            raise ConfigError(f"the number of decoding workers must be >= 0, not {workers}")
        self.fn = fn
        self.workers = workers
        self.budget = budget or DecodeBudget()
        self.cap_bytes = self.budget.worker_cap_bytes(workers)
        self.ahead = max(2, workers * ahead_per_worker)
        self.replaced = 0
        self._context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._idle: list[_Worker] = []
        self._busy: dict[_Worker, tuple[int, float]] = {}
        self._sent = 0

    def map(self, items: Iterable[Any]) -> Iterator[Any]:
        if self.workers == 0:
            for item in items:
                yield run_one(self.fn, item)
            return
        self._sent = 0
        todo = enumerate(items)
        done: dict[int, Any] = {}
        next_out, exhausted = 0, False
        try:
            while True:
                # Results are buffered until their turn: stay at most `ahead` items past the oldest.
                exhausted = exhausted or self._dispatch(todo, next_out + self.ahead)
                if not self._busy and exhausted and not done:
                    return
                self._collect(done)
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
        finally:
            self.close()

    def _dispatch(self, todo, limit: int) -> bool:
        """Give items to free workers; True once `todo` is exhausted."""
        while len(self._busy) < self.workers and self._sent < limit:
            nxt = next(todo, None)
            if nxt is None:
                return True
            self._busy[self._send(nxt)] = (nxt[0], time.monotonic() + self.budget.timeout_s)
            self._sent += 1
        return False

    def _send(self, message) -> _Worker:
        """An idle worker (or a fresh one) that was given `message` (index, item)."""
        worker = self._idle.pop() if self._idle else _Worker(self._context, self.fn, self.cap_bytes)
        try:
            worker.conn.send(message)
        except (OSError, ValueError):  # it died between items: a fresh one takes the item
            worker.kill()
            worker = _Worker(self._context, self.fn, self.cap_bytes)
            worker.conn.send(message)
        return worker

    def stream(self, item: Any) -> Iterator[Any]:
        """The results of a task that yields several for `item`, as they come, from one capped worker.

        The timeout applies to each result (a long video is not a slow one). A failure ends the stream
        as its last result, a DecodeFailure; stopping early ends the worker."""
        if self.workers == 0:
            try:
                yield from self.fn(item)
            except Exception as e:  # noqa: BLE001 - the item's error, as a worker would report it
                yield failure_of(e)
            return
        worker, finished = self._send((0, item)), False
        self._busy[worker] = (0, float("inf"))  # close() ends it
        try:
            while True:
                if not worker.conn.poll(self.budget.timeout_s):
                    finished = True
                    yield self._retire(worker, self._timeout_reason(), Failure.TIMEOUT)
                    return
                value = self._read(worker)
                if isinstance(value, _Part):
                    yield value.value
                    continue
                finished = True
                if not worker.dead:
                    self._idle.append(worker)
                if value is not END:  # a failure, or a task that returned one result
                    yield value
                return
        finally:
            self._busy.pop(worker, None)
            if not finished:  # abandoned mid-stream: the worker is still producing
                worker.kill()

    def call(self, item: Any) -> Any:
        """`fn(item)` in a capped worker that stays for the next call (`close()` ends it)."""
        if self.workers == 0:
            return run_one(self.fn, item)
        return next(self.stream(item))

    def _timeout_reason(self) -> str:
        return f"decoding took longer than {self.budget.timeout_s:g} s (stopped; raise --decode-timeout if the file is trusted)"

    def _collect(self, done: dict[int, Any]) -> None:
        if not self._busy:
            return
        now = time.monotonic()
        timeout = max(0.0, min(deadline for _, deadline in self._busy.values()) - now)
        ready = set(wait([w.conn for w in self._busy] + [w.process.sentinel for w in self._busy], timeout))
        now = time.monotonic()
        for worker, (index, deadline) in list(self._busy.items()):
            if worker.conn in ready:
                done[index] = self._receive(worker)
            elif worker.process.sentinel in ready:
                done[index] = self._retire(worker, worker.death(), Failure.CRASHED)
            elif now >= deadline:
                done[index] = self._retire(worker, self._timeout_reason(), Failure.TIMEOUT)
            else:
                continue
            del self._busy[worker]

    def _receive(self, worker: _Worker) -> Any:
        result = self._read(worker)
        if not worker.dead:
            self._idle.append(worker)
        return result

    def _read(self, worker: _Worker) -> Any:
        """The worker's next message; a dead or misbehaving worker is retired, its item a DecodeFailure."""
        try:
            return from_wire(worker.conn.recv_bytes(MAX_FRAME_BYTES))
        except (EOFError, OSError):
            return self._retire(worker, worker.death(), Failure.CRASHED)
        except ValueError as e:
            return self._retire(worker, f"the decoder returned a malformed result ({e})", Failure.CRASHED)

    def _retire(self, worker: _Worker, reason: str, kind: Failure) -> DecodeFailure:
        worker.kill()
        self.replaced += 1
        return DecodeFailure(reason, kind)

    def close(self) -> None:
        for worker in [*self._idle, *self._busy]:
            worker.stop()
        self._idle, self._busy = [], {}

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SharedDecoders:
    """`fn(item)` callable from many threads at once (a server's uploads): each call takes one of
    `workers` single-worker pools, so at most `workers` decodes run, each under its share of the
    budget, and a worker is kept for the next call."""

    def __init__(self, fn: Callable[[Any], Any], workers: int, budget: DecodeBudget | None = None):
        budget = budget or DecodeBudget()
        workers = max(1, workers)
        share = replace(budget, memory_mb=max(64, budget.memory_mb // workers))
        self._pools: queue.Queue[DecodePool] = queue.Queue()
        for _ in range(workers):
            self._pools.put(DecodePool(fn, 1, share))
        self.workers = workers

    def __call__(self, item: Any) -> Any:
        """The result of `fn(item)`, or a DecodeFailure (memory cap, timeout, crash, read error)."""
        pool = self._pools.get()
        try:
            return pool.call(item)
        finally:
            self._pools.put(pool)

    def close(self) -> None:
        for _ in range(self.workers):
            self._pools.get().close()


class _Worker:
    def __init__(self, context, fn, cap_bytes: int):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, fn, cap_bytes), daemon=True)
        stdin = sys.stdin
        if stdin is not None and not hasattr(stdin, "close"):
            sys.stdin = None  # the child closes stdin first thing; a stand-in object would end it
        try:
            self.process.start()
        finally:
            sys.stdin = stdin
        child.close()
        self.cap_bytes = cap_bytes
        self.dead = False
        # A stream's consumer thread may end the worker while close() does (a video timeout): one closes the pipe.
        self._ending = threading.Lock()

    def death(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"the decoder crashed on this file: killed by {name}{hint}"
        return f"the decoder crashed on this file (worker exit code {code})"

    def kill(self) -> None:
        with self._ending:
            self.dead = True
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5.0)
            if not self.conn.closed:
                self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=1.0)
        self.kill()


def _worker_main(conn, fn, cap_bytes: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    faulthandler.disable()  # a decoder crash is an error row, not a traceback on the user's terminal
    _single_threaded()
    cap_memory(cap_bytes)
    parent = os.getppid()
    while True:
        try:
            # The pipe's EOF cannot tell that the parent died (this process holds copies of the parent's ends,
            # inherited by fork): its new parent id can.
            while not conn.poll(ORPHAN_CHECK_S):
                if os.getppid() != parent:
                    return
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, item = msg
        result = run_one(fn, item, cap_bytes)
        if isinstance(result, Iterator):  # a streaming task: each part as it comes, then END
            try:
                for part in result:
                    conn.send_bytes(to_wire(_Part(part)))
                result = END
            except Exception as e:  # noqa: BLE001 - the item's error ends its stream
                result = failure_of(e, cap_bytes)
        conn.send_bytes(to_wire(result))


def _single_threaded() -> None:
    """One decode per process: library thread pools would only multiply memory and threads."""
    import cv2

    # 0, not 1: in a child forked after the parent ran OpenCV's thread pool, resizing that pool
    # (setNumThreads(1)) sometimes waits forever for threads that did not survive the fork.
    cv2.setNumThreads(0)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def cap_memory(cap_bytes: int) -> bool:
    """Limit this process to its present size plus cap_bytes; False where the OS offers no way."""
    try:
        import resource
    except ImportError:  # Windows
        return False
    for limit, field in (("RLIMIT_DATA", "VmData"), ("RLIMIT_AS", "VmSize")):
        now = _status_bytes(field)
        if now is None or not hasattr(resource, limit):
            continue
        which = getattr(resource, limit)
        hard = resource.getrlimit(which)[1]
        soft = now + cap_bytes if hard == resource.RLIM_INFINITY else min(hard, now + cap_bytes)
        resource.setrlimit(which, (soft, hard))
        return True
    return False


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# Wire format, worker -> parent: u32 header length, JSON header, raw array bytes.


def to_wire(value: Any) -> bytes:
    """A result (DecodeFailure, an array/tensor, or a flat dict or list of arrays and scalars) as bytes."""
    if isinstance(value, DecodeFailure):
        return _frame({"error": value.reason, "kind": Failure(value.kind).value}, [])
    if value is END:
        return _frame({"end": True}, [])
    part = isinstance(value, _Part)
    value = value.value if part else value
    fields, arrays = {}, []
    kind = "dict" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple)) else "single"
    items = value.items() if kind == "dict" else enumerate(value) if kind == "list" else [("", value)]
    for key, v in items:
        if v is None or isinstance(v, (bool, int, float, str)):
            fields[str(key)] = {"scalar": v}
            continue
        is_torch = type(v).__module__.startswith("torch")
        arr = np.ascontiguousarray(v.detach().cpu().numpy() if is_torch else v)
        fields[str(key)] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "torch": is_torch}
        arrays.append(arr)
    return _frame({"kind": kind, "fields": fields, "part": part}, arrays)


def _frame(header: dict, arrays: list[np.ndarray]) -> bytes:
    head = json.dumps(header).encode()
    return b"".join([struct.pack("<I", len(head)), head, *(a.tobytes() for a in arrays)])


def from_wire(frame: bytes) -> Any:
    """Inverse of `to_wire`, checking every dtype, shape and length (a ValueError if anything is off)."""
    if len(frame) < 4:
        raise ValueError("short frame")
    (n,) = struct.unpack_from("<I", frame)
    header = json.loads(frame[4 : 4 + n])
    if "error" in header:
        return DecodeFailure(str(header["error"]), Failure.parse(str(header.get("kind", ""))))
    if header.get("end") is True:
        return END
    out, pos = {}, 4 + n
    for key, spec in header["fields"].items():
        if "scalar" in spec:
            out[key] = spec["scalar"]
            continue
        arr, pos = _array(frame, pos, spec)
        out[key] = arr
    if pos != len(frame):
        raise ValueError("trailing bytes")
    kind = header["kind"]
    value = out if kind == "dict" else list(out.values()) if kind == "list" else out[""]
    return _Part(value) if header.get("part") is True else value


def _array(frame: bytes, pos: int, spec: dict) -> tuple[Any, int]:
    dtype, shape = spec["dtype"], spec["shape"]
    if dtype not in WIRE_DTYPES or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"bad array {dtype} {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if pos + nbytes > len(frame):
        raise ValueError("truncated array")
    arr = np.frombuffer(frame, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=pos).reshape(shape)
    arr = arr.copy()
    if spec.get("torch"):
        import torch

        arr = torch.from_numpy(arr)
    return arr, pos + nbytes


def read_images(paths: Iterable[str], limits: ImageLimits | None = None, budget: DecodeBudget | None = None,
                workers: int | None = None, backend: str = "pil") -> Iterator[np.ndarray | DecodeFailure]:
    """RGB arrays of `paths`, in order, decoded in capped workers (`default_workers()` unless given):
    how a stage reads a list of untrusted images. A file that cannot be read is its DecodeFailure."""
    from deepfake_moe.data.image_io import ImageReader

    reader = ImageReader(backend, limits or ImageLimits())
    return DecodePool(reader, default_workers() if workers is None else workers, budget).map(paths)


def decoded_image(result: Any, name: str) -> np.ndarray:
    """A pool's result for an image: the RGB uint8 array, or an ImageReadError of the failure's kind."""
    from deepfake_moe.data.image_io import ImageReadError

    if isinstance(result, DecodeFailure):
        raise ImageReadError(name, result.reason, result.kind)
    if not (isinstance(result, np.ndarray) and result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3):
        raise ImageReadError(name, "the decoder returned a malformed result", Failure.CRASHED)
    return result


def default_workers() -> int:
    """Decoding processes when none are asked for: 4, or fewer where fewer cores are usable."""
    from deepfake_moe.runtime import usable_cores

    return min(4, usable_cores())


# After the consumer stops, how long it waits for a producer to notice; one stuck in a decoder is left behind.
PRODUCER_GRACE_S = 2.0


def prefetch(items: Iterator, depth: int, timeout_s: float | None = None) -> Iterator:
    """`items`, produced in a background thread at most `depth` ahead; its exceptions re-raised here.

    TimeoutError once the consumer has waited `timeout_s` in all for items (None: no limit). When the
    consumer stops, the producer closes `items` (a pool's workers end with it).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            q.put((done, e))
        finally:
            close = getattr(items, "close", None)  # a generator's: ends the pool it reads from
            if close is not None:
                close()

    thread = threading.Thread(target=produce, daemon=True, name="deepfake-moe-prefetch")
    thread.start()
    waited = 0.0
    try:
        while True:
            start = time.monotonic()
            try:
                item, error = q.get(timeout=None if timeout_s is None else max(0.0, timeout_s - waited))
            except queue.Empty:
                raise TimeoutError(f"waited {timeout_s:g} s for frames") from None
            waited += time.monotonic() - start
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        give_up = time.monotonic() + PRODUCER_GRACE_S
        while thread.is_alive() and time.monotonic() < give_up:  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.1)
