"""Model instances: a shared runner used from threads, or a worker process per instance.

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
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.errors import ProtocolError


class ThreadInstance:
    """Calls a runner loaded in this process; several thread instances may share one runner."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner(inputs)

    def close(self) -> None:
        pass


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
    conn.send_bytes(b"R")
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


class ProcessInstance:
    """A worker process holding its own copy of the model; ``run`` is called from one thread at a time."""

    def __init__(self, package: Path, artifact: str | None, threads: int, start_timeout_s: float = 300.0) -> None:
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
        with contextlib.suppress(OSError):  # the process may be gone already
            self._conn.send_bytes(b"STOP")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
