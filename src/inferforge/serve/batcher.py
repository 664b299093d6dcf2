"""Dynamic batching: one loop per model instance, requests merged by rows, results split back.

Why this shape: each instance's loop takes whatever is queued the moment it is
free, so while a batch runs the next one fills by itself. Under load, batches grow
to ``max_batch_size`` rows with no timer at all; when idle, a lone request runs at
once instead of waiting for company (``max_queue_delay_ms`` adds a wait only when
asked for). Sizes are counted in samples (rows), never in requests, so a client
that sends 8 rows takes 8 places (BentoML #3859). The queue is bounded: a full
queue refuses at once with a retry hint instead of growing until memory runs out.

The one collector: the server's models, a Ray Serve replica (``--ray-batching inferforge``) and
LoadGen's in-process runs all queue through ``DynamicBatcher``. Ray Serve's own ``@serve.batch``
(``--ray-batching ray``, kept to compare against) collects by itself, and merges and splits its
batches with ``merge_rows`` and ``split_rows`` as this loop does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inferforge.errors import ProtocolError, SpecError, one_line

INSTANCE_KINDS = ("thread", "process")  # process: one process each, for GIL-bound runners


@dataclass(frozen=True)
class BatchingConfig:
    """How one model is batched. Sizes are in samples (rows of dimension 0)."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0  # extra wait for a fuller batch; 0 = run as soon as an instance is free
    preferred_batch_sizes: tuple[int, ...] = ()  # with a delay: stop waiting once one of these is reached
    max_queue_size: int = 512  # samples waiting; beyond it requests are refused (503 / UNAVAILABLE)
    instances: int = 1
    instance_kind: str = "thread"  # "thread" or "process" (one process each, for GIL-bound runners)
    static_batch_sizes: tuple[int, ...] = ()  # artifact needs these exact sizes: pad up, slice back

    def __post_init__(self) -> None:
        problems = [f"{name} is {getattr(self, name)}, it must be at least 1"
                    for name in ("max_batch_size", "instances", "max_queue_size") if getattr(self, name) < 1]
        if self.max_queue_delay_ms < 0:
            problems.append(f"max_queue_delay_ms is {self.max_queue_delay_ms}, it must be 0 or more")
        if self.instance_kind not in INSTANCE_KINDS:
            problems.append(f"instance_kind must be one of {', '.join(INSTANCE_KINDS)}, not {self.instance_kind!r}")
        if problems:
            raise SpecError("BatchingConfig: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "max_queue_delay_ms": self.max_queue_delay_ms,
                "preferred_batch_sizes": list(self.preferred_batch_sizes), "max_queue_size": self.max_queue_size,
                "instances": self.instances, "instance_kind": self.instance_kind,
                "static_batch_sizes": list(self.static_batch_sizes)}


class Batcher(Protocol):
    """What a served model queues requests on: ``DynamicBatcher``, or Ray Serve's collector on a replica."""

    @property
    def queued_rows(self) -> int: ...

    async def submit(self, inputs: dict[str, np.ndarray], rows: int,
                     timeout_s: float | None = None) -> dict[str, np.ndarray]: ...

    async def close(self, drain_timeout_s: float = 30.0) -> None: ...


class Instance(Protocol):
    """One copy of the model that runs a merged batch on a thread it owns."""

    def submit(self, inputs: dict[str, np.ndarray]) -> Future[dict[str, np.ndarray]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchTiming:
    """What one batch cost, reported to metrics and statistics."""

    rows: int
    padded_rows: int
    requests: int
    queue_s: tuple[float, ...]  # per request
    compute_s: float
    ok: bool


@dataclass(eq=False)  # compared by identity: the queue removes exactly this request
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    signature: tuple[Any, ...]
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float
    deadline: float | None


def shape_signature(inputs: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """Requests merge only when every input agrees on dtype and every dimension past the batch one."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


@dataclass
class DynamicBatcher:
    """Queue plus one scheduling loop per instance; start with ``start()``, stop with ``close()``."""

    instances: Sequence[Instance]
    config: BatchingConfig
    on_batch: Callable[[BatchTiming], None] = lambda timing: None
    _queue: deque[_Pending] = field(default_factory=deque)
    _queued_rows: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _accepting: bool = True
    _in_flight: int = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(instance)) for instance in self.instances]

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def idle(self) -> bool:
        return not self._queue and self._in_flight == 0

    async def submit(self, inputs: dict[str, np.ndarray], rows: int, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Queue one request's rows and wait for its slice of a batch's outputs.

        Raises ProtocolError 503 (queue full or shutting down), 504 (timed out in the queue),
        500 (the model raised while running the batch this request was in).
        """
        if not self._accepting:
            raise ProtocolError("model is shutting down or being replaced; retry", 503, retry_after_s=1.0)
        if self._queued_rows + rows > self.config.max_queue_size:
            raise ProtocolError(f"queue is full ({self._queued_rows} samples waiting, limit "
                                f"{self.config.max_queue_size}); retry shortly", 503, retry_after_s=0.1)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        pending = _Pending(inputs, rows, shape_signature(inputs), loop.create_future(), now,
                           now + timeout_s if timeout_s else None)
        self._queue.append(pending)
        self._queued_rows += rows
        self._wakeup.set()
        try:
            if timeout_s is None:
                return await asyncio.shield(pending.future)
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
        except TimeoutError:
            self._withdraw(pending)
            raise ProtocolError(f"request timed out after {timeout_s:g} s", 504) from None
        except asyncio.CancelledError:  # the request's own deadline passed, or its client hung up
            self._withdraw(pending)
            raise

    def _withdraw(self, pending: _Pending) -> None:
        """A request nobody waits for any more: out of the queue at once, so it neither runs nor holds its
        rows against the queue limit (one still in a running batch just has its result dropped)."""
        pending.future.cancel()
        try:
            self._queue.remove(pending)
        except ValueError:
            return
        self._queued_rows -= pending.rows

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish, then stop the loops."""
        self._accepting = False
        deadline = time.perf_counter() + drain_timeout_s
        while not self.idle and time.perf_counter() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(ProtocolError("model was unloaded before this request ran", 503, 1.0))
        self._queue.clear()
        self._queued_rows = 0

    # ---- scheduling ------------------------------------------------------------------------------------------

    async def _loop(self, instance: Instance) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            merged, rows, padded = merge_rows([p.inputs for p in batch], [p.rows for p in batch],
                                          self.config.static_batch_sizes)
            self._in_flight += 1
            try:
                outputs = await asyncio.wrap_future(instance.submit(merged))
                error = None
            except Exception as exc:  # the model's failure fails only this batch
                outputs, error = {}, exc
            finally:
                self._in_flight -= 1
            compute_s = time.perf_counter() - started
            self.on_batch(BatchTiming(rows, padded, len(batch), tuple(started - p.enqueued for p in batch),
                                      compute_s, error is None))
            if error is not None:
                failure = error if isinstance(error, ProtocolError) else ProtocolError(
                    f"model failed on a batch of {rows} samples: {one_line(error)}", 500)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(failure)
                continue
            for p, piece in zip(batch, split_rows(outputs, [p.rows for p in batch]), strict=True):
                if not p.future.done():
                    p.future.set_result(piece)

    async def _next_batch(self) -> list[_Pending]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        delay = self.config.max_queue_delay_ms / 1000
        if delay > 0:
            oldest = self._queue[0].enqueued
            while self._compatible_rows() < self._target_rows() and time.perf_counter() - oldest < delay:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), max(0.0, oldest + delay - time.perf_counter()))
                except TimeoutError:
                    break
        return self._take()

    def _target_rows(self) -> int:
        reachable = [s for s in self.config.preferred_batch_sizes if s <= self._queued_rows]
        return max(reachable) if reachable else self.config.max_batch_size

    def _compatible_rows(self) -> int:
        head = self._queue[0].signature
        return sum(p.rows for p in self._queue if p.signature == head)

    def _take(self) -> list[_Pending]:
        """The oldest live request and every later compatible one that still fits, in arrival order."""
        now = time.perf_counter()
        batch: list[_Pending] = []
        rows = 0
        keep: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():  # timed out or cancelled by a disconnected client
                self._queued_rows -= p.rows
                continue
            if p.deadline is not None and now > p.deadline:
                self._queued_rows -= p.rows
                p.future.set_exception(ProtocolError("request timed out in the queue", 504))
                continue
            if (not batch or p.signature == batch[0].signature) and rows + p.rows <= self.config.max_batch_size:
                batch.append(p)
                rows += p.rows
                self._queued_rows -= p.rows
            else:
                keep.append(p)
        self._queue = keep
        return batch


def merge_rows(parts: Sequence[Mapping[str, np.ndarray]], rows_each: Sequence[int],
               static_batch_sizes: Sequence[int] = ()) -> tuple[dict[str, np.ndarray], int, int]:
    """Requests of one ``shape_signature``, ``rows_each[i]`` rows each, as one batch: (merged inputs, rows,
    padded rows).

    Padded up to the smallest static batch size that holds the rows (an artifact built for
    exact sizes), by repeating the last row: it stays inside any value range the model expects.
    """
    rows = sum(rows_each)
    padded = next((s for s in sorted(static_batch_sizes) if s >= rows), rows)
    merged = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if padded > rows:
            arrays.append(np.repeat(arrays[-1][-1:], padded - rows, axis=0))
        merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return merged, rows, padded


def split_rows(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """A batch's outputs back to each request, ``rows[i]`` rows each in order (padding rows dropped)."""
    pieces = []
    start = 0
    for count in rows:
        pieces.append({name: value[start:start + count] for name, value in outputs.items()})
        start += count
    return pieces
