"""CUDA graphs captured by hand, one per batch bucket, around a compiled module.

A CUDA graph replays a whole forward pass with one launch, which removes the
per-kernel launch cost that dominates small batches. ``torch.compile(mode=
"reduce-overhead")`` does this too, but its graph-tree wrapper does Python work on
every call (input checks, buffer bookkeeping) that is longer than the GPU work at
batch 1 (docs/benchmarks.md's GPU section has the figures: 0.59 against 0.94 ms on BERT-base).

So the GPU candidates compile in Inductor's default mode and capture their graphs
here: a call copies its inputs into the bucket's static input buffers (padding the
batch up to the bucket by repeating the last row), replays, and returns copies of
the first ``rows`` outputs. All buckets share one memory pool; replays are
serialized by a lock and outputs are copied out before the next replay, which is
what makes sharing the pool safe.

Throughput: the buckets go past 256 to 512 and 1024, captured only when a batch that
large arrives; where the GPU has not the memory for one, its capture's out-of-memory
error drops that bucket and the ones above it, and such batches run uncaptured. Warm-up
and capture run with ``torch.backends.cudnn.benchmark`` on (``cudnn_benchmark``): the
shapes of a captured graph never change, so timing cuDNN's algorithms once per bucket
is paid back on every replay, and the graph keeps the algorithms chosen.
"""

from __future__ import annotations

import threading
from typing import Any

from inferforge.backends.torch_common import cudnn_benchmark

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # batch sizes a graph is captured for, at first use
WARMUP_CALLS = 3  # before capture: compiles, autotunes cuBLAS/cuDNN, allocates workspaces


class GraphedBuckets:
    """Callable like ``fn``; batches up to the largest bucket replay a captured graph, larger ones call ``fn``.

    ``fn`` is compiled for a static batch of 1 and a dynamic batch above (``maybe_mark_dynamic`` on
    the static inputs of buckets above 1), so the nine buckets cost two compiles, not nine."""

    def __init__(self, fn: Any, buckets: tuple[int, ...] = BUCKETS) -> None:
        self._fn = fn
        self._buckets = buckets
        self._graphs: dict[int, _Graph] = {}
        self._pool: Any = None
        self._lock = threading.Lock()

    @property
    def captured(self) -> list[int]:
        return sorted(self._graphs)

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        rows = args[0].shape[0]
        size = next((b for b in self._buckets if b >= rows), None)
        if size is None:  # above the largest bucket: no graph, the compiled module itself
            with cudnn_benchmark():
                return _as_tuple(self._fn(*args))
        with self._lock:
            graph = self._graphs.get(size)
            if graph is None:
                try:
                    graph = self._graphs[size] = self._capture(size, args)
                except _out_of_memory():
                    return self._without(size, args)
            return graph.run(args, rows)

    def _without(self, size: int, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """A bucket too large for the GPU's free memory: drop it and those above it, run this batch as it is."""
        import torch

        self._buckets = tuple(b for b in self._buckets if b < size)
        torch.cuda.empty_cache()
        with cudnn_benchmark():
            return _as_tuple(self._fn(*args))

    def _capture(self, size: int, example: tuple[Any, ...]) -> _Graph:
        import torch

        static = [_padded(a, size) for a in example]
        if size > 1:
            for a in static:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        with cudnn_benchmark():
            self._fn(*static)  # the compile happens here, on the caller's stream
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(WARMUP_CALLS):
                    self._fn(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                outputs = _as_tuple(self._fn(*static))
        self._pool = graph.pool()
        return _Graph(graph, static, outputs)


class _Graph:
    def __init__(self, graph: Any, static: list[Any], outputs: tuple[Any, ...]) -> None:
        self.graph, self.static, self.outputs = graph, static, outputs

    def run(self, args: tuple[Any, ...], rows: int) -> tuple[Any, ...]:
        for buffer, value in zip(self.static, args, strict=True):
            buffer[:rows].copy_(value, non_blocking=True)
            if rows < buffer.shape[0]:  # padding rows repeat the last sample: always valid model input
                buffer[rows:].copy_(value[-1:].expand(buffer.shape[0] - rows, *value.shape[1:]), non_blocking=True)
        self.graph.replay()
        return tuple(o[:rows].clone() for o in self.outputs)


def _padded(value: Any, size: int) -> Any:
    """A new tensor of ``size`` rows holding ``value`` padded with its last row, in ``value``'s memory format."""
    import torch

    rows = value.shape[0]
    channels_last = value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) and rows > 0
    padded = torch.cat([value, value[-1:].expand(size - rows, *value.shape[1:])]) if size > rows else value.clone()
    return padded.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _out_of_memory() -> type[BaseException]:
    import torch

    return torch.cuda.OutOfMemoryError


def _as_tuple(outputs: Any) -> tuple[Any, ...]:
    import torch

    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
