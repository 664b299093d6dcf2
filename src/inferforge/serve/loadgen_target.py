"""The systems under test LoadGen drives: the server's batcher in-process, or client threads against a URL.

Both complete every sample LoadGen issued, failed or not (a failure marks the run invalid instead of
hanging it), and time each sample from issue to completion for the report's charts.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferforge.serve.batcher import BatchingConfig, DynamicBatcher, Instance

Predict = Callable[[Mapping[str, np.ndarray]], Any]  # runs one batch; the result is ignored


class SystemUnderTest:
    """Queries in, completions out; what both ways of running them share: per-sample latency, errors."""

    def __init__(self, inputs: Mapping[str, np.ndarray], max_batch: int) -> None:
        self._inputs = inputs
        self._max_batch = max_batch
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.first_issue = float("inf")
        self.last_done = 0.0
        self._lock = threading.Lock()

    def issue(self, query_samples: list[Any]) -> None:
        now = time.perf_counter()
        self.first_issue = min(self.first_issue, now)
        for start in range(0, len(query_samples), self._max_batch):  # Offline issues everything at once
            self._put([(s, now) for s in query_samples[start:start + self._max_batch]])

    def flush(self) -> None:
        """LoadGen's flush: nothing is held back, so nothing to do."""

    def stop(self) -> None:
        raise NotImplementedError

    def _put(self, chunk: list[Any]) -> None:
        raise NotImplementedError

    def _rows(self, chunk: list[Any]) -> dict[str, np.ndarray]:
        index = np.array([s.index for s, _ in chunk])
        return {k: v[index] for k, v in self._inputs.items()}

    def _complete(self, chunk: list[Any], error: Exception | None) -> None:
        """Every sample completes, failed or not, so LoadGen never hangs; an error marks the run invalid."""
        import mlperf_loadgen as lg

        done = time.perf_counter()
        with self._lock:
            if error is not None:
                self.errors.append(f"{type(error).__name__}: {error}")
            self.latencies += [(done - issued) * 1e3 for _, issued in chunk]
            self.last_done = max(self.last_done, done)
        lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s, _ in chunk])


class _Batched(SystemUnderTest):
    """In-process: queries queue on the server's ``DynamicBatcher`` (its own event loop thread), which runs
    whatever has queued, up to ``max_batch`` samples, as one batch on the instance: what a batching server
    would do. The queue is unbounded: LoadGen, not the system, decides the load."""

    def __init__(self, instance: Instance, inputs: Mapping[str, np.ndarray], max_batch: int) -> None:
        super().__init__(inputs, max_batch)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="inferforge-loadgen")
        self._thread.start()
        self._tasks: set[asyncio.Task[None]] = set()
        config = BatchingConfig(max_batch_size=max_batch, max_queue_size=sys.maxsize)

        async def start() -> DynamicBatcher:
            batcher = DynamicBatcher([instance], config)
            batcher.start()
            return batcher

        self._batcher = asyncio.run_coroutine_threadsafe(start(), self._loop).result()

    def _put(self, chunk: list[Any]) -> None:
        self._loop.call_soon_threadsafe(self._spawn, chunk)

    def _spawn(self, chunk: list[Any]) -> None:
        task = self._loop.create_task(self._one(chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, chunk: list[Any]) -> None:
        try:
            await self._batcher.submit(self._rows(chunk), len(chunk))
        except Exception as exc:
            self._complete(chunk, exc)
            return
        self._complete(chunk, None)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._batcher.close(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


class _Concurrent(SystemUnderTest):
    """Against a server: ``clients`` threads, each sending one query per request; the server batches."""

    def __init__(self, predict: Predict, clients: int, inputs: Mapping[str, np.ndarray], max_batch: int) -> None:
        super().__init__(inputs, max_batch)
        self._predict = predict
        self._queue: queue.Queue[list[Any] | None] = queue.Queue()
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(clients)]
        for worker in self._workers:
            worker.start()

    def _put(self, chunk: list[Any]) -> None:
        self._queue.put(chunk)

    def stop(self) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=30)

    def _work(self) -> None:
        while (chunk := self._queue.get()) is not None:
            try:
                self._predict(self._rows(chunk))
            except Exception as exc:
                self._complete(chunk, exc)
                continue
            self._complete(chunk, None)


@dataclass(frozen=True)
class Target:
    """What LoadGen drives: ``predict`` runs one batch directly (the first timing guesses), ``parallel`` says
    how many run at once, and ``system`` makes a fresh system under test for each run."""

    predict: Predict
    parallel: int
    system: Callable[[Mapping[str, np.ndarray], int], SystemUnderTest]  # (inputs, max_batch) -> SUT

    @classmethod
    def in_process(cls, instance: Instance) -> Target:
        return cls(lambda batch: instance.submit(dict(batch)).result(), 1,
                   lambda inputs, max_batch: _Batched(instance, inputs, max_batch))

    @classmethod
    def remote(cls, predict: Predict, clients: int) -> Target:
        return cls(predict, clients, lambda inputs, max_batch: _Concurrent(predict, clients, inputs, max_batch))
