"""Model instances: a runner on a thread of its own, or a worker process per instance.

Every instance owns one thread for its whole life, and a thread instance's runner is
loaded, warmed up and called on that same thread. Why: OpenMP (torch's CPU ops)
keeps a team of worker threads per calling thread; a model loaded on one thread and
called from another leaves two teams alive, libgomp then counts more threads than
CPUs and stops spin-waiting, and every small parallel region pays a futex wake-up.
Measured on the 2-core machine with MiniLM eager-bf16 at batch 1: 9.2-10.8 ms called
where it was loaded, 15.4-18.0 ms when loaded on another thread.

Threads suit runners that release the GIL while they compute (ONNX Runtime, torch
ops). A runner that holds the GIL (Python-heavy pre/post code, TorchScript
interpreter overhead) scales only across processes: each process instance loads the
package itself (checksums verified there too) and exchanges arrays as raw bytes with
a JSON header over a pipe. Nothing is pickled in either direction.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.errors import ProtocolError


class _OwnThread:
    """One thread per instance: ``submit`` queues a batch on it, ``run`` is what executes there."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inferforge-instance")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def submit(self, inputs: dict[str, np.ndarray]) -> Future[dict[str, np.ndarray]]:
        return self._thread.submit(lambda: self.run(inputs))  # looked up late: tests may wrap ``run``

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class ThreadInstance(_OwnThread):
    """A runner in this process, loaded on the instance's own thread (or shared with another instance)."""

    def __init__(self, load_runner: Callable[[], Any]) -> None:
        super().__init__()
        try:
            self.runner = self._thread.submit(load_runner).result()
        except BaseException:
            self._thread.shutdown(wait=False)
            raise

    def sharing(self) -> ThreadInstance:
        """Another instance calling the same loaded runner from its own thread (one more OpenMP team)."""
        runner = self.runner
        return ThreadInstance(lambda: runner)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner(inputs)


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays as ``<header length><JSON header><raw data...>``: no pickle on the pipe."""
    header = [(name, a.dtype.str, list(a.shape)) for name, a in arrays.items()]
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())


def unpack_arrays(data: bytes) -> dict[str, np.ndarray]:
    (length,) = struct.unpack_from("<I", data)
    header = json.loads(data[4:4 + length])
    offset = 4 + length
    arrays = {}
    for name, dtype_str, shape in header:
        dtype = np.dtype(dtype_str)
        count = int(np.prod(shape)) if shape else 1
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    return arrays


def _worker_main(conn: Connection, package: str, artifact: str | None, threads: int) -> None:
    """Child process: load the package, say ready (or why not), then answer batches until told to stop."""
    from inferforge.package import load

    try:
        runner = load(package, threads=threads, artifact=artifact)
    except Exception as exc:
        conn.send_bytes(b"E" + str(exc).encode())
        return
    conn.send_bytes(b"R" + runner.selection.key.encode())  # type: ignore[attr-defined]
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            return
        if message == b"STOP":
            return
        try:
            conn.send_bytes(b"O" + pack_arrays(runner(unpack_arrays(message))))
        except Exception as exc:
            conn.send_bytes(b"E" + f"{type(exc).__name__}: {exc}".encode())


class ProcessInstance(_OwnThread):
    """A worker process holding its own copy of the model; ``artifact_key`` says which one it loaded."""

    def __init__(self, package: Path, artifact: str | None, threads: int, start_timeout_s: float = 300.0) -> None:
        super().__init__()
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker_main, args=(child, str(package), artifact, threads),
                                        daemon=True, name="inferforge-instance")
        self._process.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise ProtocolError(f"model instance process did not start within {start_timeout_s:g} s", 500)
        reply = self._conn.recv_bytes()
        if reply[:1] != b"R":
            self.close()
            raise ProtocolError(f"model instance process failed to load: {reply[1:].decode(errors='replace')}", 500)
        self.artifact_key = reply[1:].decode()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            self._conn.send_bytes(pack_arrays(inputs))
            reply = self._conn.recv_bytes()
        except (EOFError, OSError, BrokenPipeError):
            raise ProtocolError(f"model instance process {self._process.pid} died "
                                f"(exit code {self._process.exitcode})", 500) from None
        if reply[:1] == b"E":
            raise ProtocolError(f"model failed: {reply[1:].decode(errors='replace')}", 500)
        return unpack_arrays(reply[1:])

    def close(self) -> None:
        super().close()
        with contextlib.suppress(OSError):  # the process may be gone already
            self._conn.send_bytes(b"STOP")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
