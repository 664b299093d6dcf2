"""`inferforge serve` against calling the runner in-process, and against LitServe, in one run.

All-MiniLM-L6-v2 (real weights; the demo's model, inputs input_ids and attention_mask
int64 [B,128]) is packaged once in a temp dir by the demo's search (``--backends``, default
eager only, to keep the run short and the pick stable), or taken from --package, then
measured, all in one run, as:

- in-process: ``inferforge.load(package)`` called directly in a closed loop, at batch 1, 8,
  16 and the package's best-throughput batch size (the server's ``max_batch_size``);
- ``inferforge serve`` started as a subprocess through the real CLI, loaded over HTTP
  (the binary tensor extension, body built by tritonclient) and over gRPC (ModelInfer
  with raw_input_contents), one sample per request, at each concurrency;
- LitServe serving the same package (a LitAPI whose setup calls ``inferforge.load``),
  with its own batching at the same ``max_batch_size`` and a few ``batch_timeout`` values,
  and its own JSON request format; then LitServe at its best ``batch_timeout`` serving the
  plain PyTorch FP32 module, as a LitServe user deploys MiniLM (``--no-litserve-pytorch``
  skips it).

The load comes from closed-loop clients (asyncio: aiohttp with keep-alive connections,
grpc.aio on one channel) in a separate process, not from tritonclient, which is too
CPU-heavy to generate load on 2 cores; tritonclient is used once to check that the
server's answers equal the in-process ones within 1e-4. The server overhead is HTTP p50
at concurrency 1 minus in-process p50 at batch 1, from pairs measured back to back
(``--repeats`` times), median of the pairs. The mean batch size formed comes from the
server's ``inferforge_batch_size`` histogram, read before and after each phase. Each row also
says how many cores processes outside the benchmark used meanwhile: the machine may be shared.

    .venv/bin/python benchmarks/serve_bench.py [--package PATH] [--seconds 8] [--threads 2] [--wait-quiet 20]
        [--serve-args "--instance-kind process"] [--write docs/benchmarks.md]

About 5 minutes on 2 cores with the defaults (26 phases of 9 s, the package build, six server
starts). With --write, the results replace the section between the serve_bench markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-4  # max abs difference allowed between served and in-process outputs
OUTPUT = "output"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Row:
    """One measured way of running the model. Throughput is samples/s (= requests/s at batch 1)."""

    path: str
    concurrency: int | None  # None: one in-process caller
    batch: int  # samples per request (or per call)
    throughput: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None = None  # batch size the server formed on average during the phase
    compute_ms: float | None = None  # mean time the server's model call took per batch
    client_cpu: float | None = None  # load generator's CPU, in cores
    server_cpu: float | None = None  # server's CPU (all its processes), in cores
    other_cpu: float = 0.0  # CPU of processes outside this benchmark (a shared machine's noise), in cores


@dataclass(frozen=True)
class PhaseTiming:
    """How long each phase lasts, and how long it may first wait for other processes to quiet down."""

    seconds: float  # measured
    warmup_s: float  # run but not measured, at the start of each load phase
    wait_quiet_s: float = 0.0  # wait up to this long for other processes to use under QUIET_CORES


QUIET_CORES = 0.2


# ---- load generator: its own process, closed-loop clients ---------------------------------------------------

async def _closed_loop(call: Any, concurrency: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients each send, await, and send again; keep requests that finish in the window."""
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + seconds)
    latencies: list[float] = []
    errors: list[str] = []

    async def client() -> None:
        while (t0 := time.perf_counter()) < window[1]:
            try:
                await call()
            except Exception as exc:  # counted and reported, never hidden
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            t1 = time.perf_counter()
            if window[0] <= t1 <= window[1]:
                latencies.append((t1 - t0) * 1000)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"latencies_ms": latencies, "errors": len(errors), "first_error": errors[0] if errors else ""}


async def _http_phase(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def call() -> None:
            async with session.post(spec["url"], data=spec["body"], headers=spec["headers"]) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        return await _closed_loop(call, spec["concurrency"], spec["warmup_s"], spec["seconds"])


async def _grpc_phase(spec: dict[str, Any]) -> dict[str, Any]:
    import grpc

    async with grpc.aio.insecure_channel(spec["target"]) as channel:
        # No serializers: the request is sent as the bytes serialized once, the reply kept as bytes.
        infer = channel.unary_unary(GRPC_INFER)

        async def call() -> None:
            await infer(spec["body"], timeout=60)

        return await _closed_loop(call, spec["concurrency"], spec["warmup_s"], spec["seconds"])


def _loadgen_main(conn: Any) -> None:
    """Child process: run each phase it is sent, answer with latencies and its own CPU time."""
    phases = {"http": _http_phase, "grpc": _grpc_phase}
    while (spec := conn.recv()) is not None:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = asyncio.run(phases[spec["kind"]](spec))
        result["cpu_s"], result["elapsed_s"] = time.process_time() - cpu0, time.perf_counter() - wall0
        conn.send(result)


class LoadGenerator:
    """The load generator process; ``run`` blocks until a phase is over."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_loadgen_main, args=(child,), daemon=True, name="serve-bench-load")
        self._process.start()

    def run(self, **spec: Any) -> dict[str, Any]:
        self._conn.send(spec)
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=30)


# ---- servers as subprocesses ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(root_pid: int) -> float:
    """User+system CPU of a process and all its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in times.items():
        p = pid
        while p not in (0, 1) and p != root_pid:
            p = parents.get(p, 0)
        total += seconds if p == root_pid else 0.0
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat; idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Cores busy during a phase: in one process tree (a server), and outside this benchmark altogether."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        server = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        return time.perf_counter(), machine_busy_seconds(), cpu_seconds(os.getpid()), server

    def stop(self) -> tuple[float, float]:
        """(server cores, other cores) since the meter was made."""
        wall, busy, ours, server = (b - a for a, b in zip(self._start, self._read(), strict=True))
        return server / wall, max(0.0, busy - ours) / wall


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


@contextlib.contextmanager
def subprocess_server(command: list[str], ready_url: str, log: Path, timeout_s: float = 300) -> Iterator[int]:
    """Start a server, wait until ``ready_url`` answers 200, yield its pid, then stop it.

    It runs in its own process group, and the whole group is sent SIGTERM: LitServe's API server and
    worker processes outlive a SIGTERM sent to its main process alone."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.perf_counter() + timeout_s
        while http_get(ready_url, timeout=2)[0] != 200:
            if process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"server did not become ready ({' '.join(command)}):\n"
                                   + log.read_text()[-3000:])
            time.sleep(0.2)
        yield process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(ProcessLookupError):  # children that ignored SIGTERM
            os.killpg(process.pid, signal.SIGKILL)


def metrics_batches(metrics_url: str, model: str) -> tuple[float, float, float]:
    """(samples, batches, seconds computing) so far, from the server's ``inferforge_batch_size`` and
    ``inferforge_compute_duration_seconds`` histograms for one model."""
    text = http_get(metrics_url)[1].decode()

    def value(metric: str) -> float:
        found = re.search(rf'^inferforge_{metric}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("batch_size_sum"), value("batch_size_count"), value("compute_duration_seconds_sum")


def litserve_batches(stats: Path) -> tuple[float, float, float]:
    """The same three counters from LitServe's worker (benchmarks/litserve_minilm.py writes them)."""
    text = stats.read_text().split() if stats.exists() else []
    return (float(text[0]), float(text[1]), float(text[2])) if len(text) == 3 else (0.0, 0.0, 0.0)


# ---- measuring ----------------------------------------------------------------------------------------------

def build_package(out: Path, backends: tuple[str, ...]) -> Path:
    """The demo's MiniLM search (same inputs, data, task and batch sizes), without the text adapter
    so that clients send token tensors; ``backends`` narrows it to keep the run short. No tuning of
    threads and instances: every path here runs one model copy on ``--threads`` threads."""
    import inferforge
    from inferforge.bench import BenchSettings
    from inferforge.demo import DEMOS
    from inferforge.validate import Task

    demo = DEMOS["minilm"]
    options = inferforge.SearchOptions(task=Task(demo.task), bench=BenchSettings(batch_sizes=(1, 8, 32)),
                                       backends=backends, tune=False)
    result = inferforge.optimize(demo.model, inputs=list(demo.inputs), data=demo.data, options=options, out=out,
                                 name="minilm", overwrite=True)
    if result.package is None:
        raise RuntimeError("no candidate passed validation: nothing to serve")
    return Path(result.package)


def wait_for_quiet(max_s: float) -> None:
    """Wait (at most ``max_s``) until processes outside this benchmark use under QUIET_CORES for a second."""
    deadline = time.perf_counter() + max_s
    while time.perf_counter() < deadline:
        meter = CpuMeter()
        time.sleep(1.0)
        if meter.stop()[1] < QUIET_CORES:
            return


def time_in_process(runner: Any, inputs: dict[str, np.ndarray], timing: PhaseTiming) -> Row:
    from inferforge.bench import time_calls

    batch = len(next(iter(inputs.values())))
    wait_for_quiet(timing.wait_quiet_s)
    meter = CpuMeter()
    stats = time_calls(lambda: runner(inputs), batch, warmup=3, min_runs=5, max_runs=10**9,
                       min_seconds=timing.seconds, max_seconds=timing.seconds)
    row = Row("in-process", None, batch, batch * 1000 / stats.mean_ms, stats.p50_ms, stats.p99_ms,
              compute_ms=stats.mean_ms, other_cpu=meter.stop()[1])
    print(f"  in-process bs{batch}: {row.throughput:.1f}/s, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, "
          f"other processes {row.other_cpu:.2f} cores", flush=True)
    return row


def load_phase(load: LoadGenerator, path: str, pid: int, batches: Any, timing: PhaseTiming, concurrency: int,
               **spec: Any) -> Row:
    """One closed-loop phase against a server; ``batches()`` reads its (samples, batches, compute s) counters.

    Throughput and latencies come from the requests that finished inside the measured window; the
    batch size formed and the CPU shares cover the warm-up too (the same load throughout)."""
    from inferforge.bench import summarize

    wait_for_quiet(timing.wait_quiet_s)
    before, meter = batches(), CpuMeter(pid)
    result = load.run(concurrency=concurrency, seconds=timing.seconds, warmup_s=timing.warmup_s, **spec)
    server_cpu, other_cpu = meter.stop()
    after = batches()
    latencies = result["latencies_ms"]
    if result["errors"]:
        raise RuntimeError(f"{path} at concurrency {concurrency}: {result['errors']} requests failed, "
                           f"{len(latencies)} answered; first error: {result['first_error']}")
    if not latencies:
        raise RuntimeError(f"{path} at concurrency {concurrency}: no request finished inside the {timing.seconds:g} s "
                           "window; give more --seconds")
    stats = summarize(latencies, 1)
    samples, formed, compute_s = (b - a for a, b in zip(before, after, strict=True))
    row = Row(path, concurrency, 1, len(latencies) / timing.seconds, stats.p50_ms, stats.p99_ms,
              samples / formed if formed else None, 1000 * compute_s / formed if formed else None,
              result["cpu_s"] / result["elapsed_s"], server_cpu, other_cpu)
    print(f"  {path} c{concurrency}: {row.throughput:.1f}/s, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, "
          f"batch {row.mean_batch or 0:.1f} in {row.compute_ms or 0:.1f} ms, server {server_cpu:.2f} cores, "
          f"client {row.client_cpu:.2f} cores, other processes {other_cpu:.2f} cores", flush=True)
    return row


def check_triton(name: str, http_port: int, grpc_port: int, runner: Any,
                 samples: list[dict[str, np.ndarray]]) -> float:
    """tritonclient (HTTP and gRPC) gets the in-process outputs within TOLERANCE; returns the worst difference."""
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    worst = 0.0
    for module, url in ((triton_http, f"127.0.0.1:{http_port}"), (triton_grpc, f"127.0.0.1:{grpc_port}")):
        client = module.InferenceServerClient(url)
        for inputs in samples:
            expected = runner(inputs)[OUTPUT]
            got = client.infer(name, triton_inputs(module, inputs)).as_numpy(OUTPUT)
            worst = max(worst, compare(f"tritonclient {module.__name__}", got, expected))
        client.close()
    return worst


def compare(what: str, got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        raise RuntimeError(f"{what}: output shape {got.shape}, in-process {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise RuntimeError(f"{what}: output differs from in-process by {diff:.2e} (tolerance {TOLERANCE:g})")
    return diff


def triton_inputs(module: Any, inputs: dict[str, np.ndarray]) -> list[Any]:
    tensors = []
    for name, value in inputs.items():
        tensor = module.InferInput(name, list(value.shape), "INT64")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def http_request(inputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The body and headers tritonclient.http sends: JSON header, then raw tensors; outputs come back binary."""
    import tritonclient.http as triton_http

    body, json_size = triton_http.InferenceServerClient.generate_request_body(triton_inputs(triton_http, inputs))
    return body, ({"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {})


def grpc_request(name: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A serialized ModelInferRequest with raw_input_contents, as tritonclient.grpc builds it (its protos)."""
    from tritonclient.grpc import service_pb2

    message = service_pb2.ModelInferRequest(model_name=name)
    for key, value in inputs.items():
        message.inputs.add(name=key, datatype="INT64", shape=list(value.shape))
        message.raw_input_contents.append(value.astype("<i8").tobytes())
    return message.SerializeToString()


def median_by_p50(rows: list[Row]) -> Row:
    return sorted(rows, key=lambda r: r.p50_ms)[len(rows) // 2]


@dataclass(frozen=True)
class Workload:
    """What every path is given: the package, its model name, and the same real sentences."""

    package: Path
    name: str
    max_batch: int  # the package's best-throughput batch: the server's max_batch_size, and LitServe's
    data: dict[str, np.ndarray]  # the demo's sentences, tokenized

    def rows(self, batch: int) -> dict[str, np.ndarray]:
        """The first ``batch`` sentences (repeated if there are fewer); every client request carries one."""
        n = len(next(iter(self.data.values())))
        return {k: np.ascontiguousarray(v[np.arange(batch) % n]) for k, v in self.data.items()}


Phase = Callable[[str, int], Row]  # (protocol "HTTP" or "gRPC", clients) -> the measured row


@contextlib.contextmanager
def inferforge_server(args: argparse.Namespace, work: Workload, runner: Any, load: LoadGenerator, tmp: Path,
                      info: dict[str, Any]) -> Iterator[Phase]:
    """``inferforge serve`` through the real CLI, as a subprocess; its answers are checked with tritonclient
    before anything is timed. Yields a function that runs one load phase against it."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # One instance on --threads threads, as in-process and LitServe, whatever the package's tuning says;
    # --serve-args come last, so they override these.
    flags = ["--threads", str(args.threads), "--instances", "1", "--poll-seconds", "0", "--log-level", "warning",
             *shlex.split(args.serve_args)]
    command = [sys.executable, "-m", "inferforge.cli", "serve", str(work.package), "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), *flags]
    info["serve_command"] = " ".join(["inferforge serve PACKAGE", *flags])
    with subprocess_server(command, f"http://127.0.0.1:{http_port}/v2/health/ready", tmp / "serve.log") as pid:
        one = work.rows(1)
        info["triton_diff"] = check_triton(work.name, http_port, grpc_port, runner, [one, work.rows(4)])
        body, headers = http_request(one)
        url = f"http://127.0.0.1:{http_port}/v2/models/{work.name}/infer"
        specs: dict[str, dict[str, Any]] = {
            "HTTP": {"kind": "http", "url": url, "body": body, "headers": headers},
            "gRPC": {"kind": "grpc", "target": f"127.0.0.1:{grpc_port}", "body": grpc_request(work.name, one)},
        }

        def counters() -> tuple[float, float, float]:
            return metrics_batches(f"http://127.0.0.1:{metrics_port}/metrics", work.name)

        def phase(protocol: str, concurrency: int) -> Row:
            return load_phase(load, f"inferforge {protocol}", pid, counters, phase_timing(args), concurrency,
                              **specs[protocol])

        yield phase


def measure_inferforge(args: argparse.Namespace, work: Workload, runner: Any, phase: Phase,
                       info: dict[str, Any]) -> list[Row]:
    """In-process at batch 1 (paired with HTTP at 1 client) and at larger batches up to the server's
    max_batch_size (the best of them is what batching is held against), then the server's rows."""
    pairs = []
    for _ in range(args.repeats):  # back to back, so that drift on this shared machine hits both alike
        local = time_in_process(runner, work.rows(1), phase_timing(args))
        pairs.append((local, phase("HTTP", 1)))
    info["overheads_ms"] = [remote.p50_ms - local.p50_ms for local, remote in pairs]
    rows = [median_by_p50([local for local, _ in pairs]),
            *(time_in_process(runner, work.rows(b), phase_timing(args))
              for b in sorted({min(8, work.max_batch), min(16, work.max_batch), work.max_batch}) if b > 1),
            median_by_p50([remote for _, remote in pairs])]
    rows += [phase("HTTP", c) for c in args.concurrency if c != 1]
    return rows + [phase("gRPC", c) for c in args.concurrency]


def measure_litserve(args: argparse.Namespace, work: Workload, expected: np.ndarray, load: LoadGenerator,
                     tmp: Path, info: dict[str, Any], then: Callable[[], Row]) -> list[Row]:
    """LitServe (benchmarks/litserve_minilm.py, a subprocess) at each batch_timeout, most then fewest clients.

    First on inferforge's own artifact (the serving layers alone), then at its best batch_timeout on
    the plain PyTorch FP32 module (what a LitServe user deploys). Once each LitServe is stopped,
    ``then()`` measures inferforge again at the most clients, so that each LitServe row has an
    inferforge row taken right after it: ``info["pairs"]``."""
    rows: list[Row] = []
    info["litserve_diff"], info["pairs"], info["plain_cosine"] = 0.0, [], None
    top = max(args.concurrency)
    for timeout_ms in args.litserve_timeouts:
        rows += litserve_phases(args, work, str(work.package), timeout_ms, expected, load, tmp, info)
        info["pairs"].append((rows[-2], then()))
    if args.litserve_pytorch:
        best = max((r for r in rows if r.concurrency == top), key=lambda r: r.throughput)
        timeout_ms = float(best.path.split("batch_timeout ")[1].split(" ms")[0])
        rows += litserve_phases(args, work, "pytorch", timeout_ms, expected, load, tmp, info)
        info["pairs"].append((rows[-2], then()))
    return rows


def litserve_phases(args: argparse.Namespace, work: Workload, served: str, timeout_ms: float, expected: np.ndarray,
                    load: LoadGenerator, tmp: Path, info: dict[str, Any]) -> list[Row]:
    """One LitServe process serving ``served`` (a package, or "pytorch"): its answer checked, then timed."""
    body = json.dumps({k: v[0].tolist() for k, v in work.rows(1).items()}).encode()
    headers = {"Content-Type": "application/json"}
    port, stats = free_port(), tmp / f"litserve-{served == 'pytorch'}-{timeout_ms:g}.stats"
    command = [sys.executable, str(Path(__file__).with_name("litserve_minilm.py")), served, str(port),
               str(args.threads), str(work.max_batch), str(timeout_ms / 1000), str(stats)]
    label = f"LitServe{' + PyTorch FP32' if served == 'pytorch' else ''}, batch_timeout {timeout_ms:g} ms"
    rows = []
    with subprocess_server(command, f"http://127.0.0.1:{port}/health", tmp / "litserve.log") as pid:
        url = f"http://127.0.0.1:{port}/predict"
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=60) as r:
            got = np.asarray(json.loads(r.read())[OUTPUT], dtype=np.float32)
        if served == "pytorch":  # another precision: the embedding must agree, not the bits
            info["plain_cosine"] = float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected)))
            if info["plain_cosine"] < 0.99:
                raise RuntimeError(f"plain PyTorch answer has cosine {info['plain_cosine']:.4f} to the package's")
        else:
            info["litserve_diff"] = max(info["litserve_diff"], compare("LitServe", got, expected))
        for c in (max(args.concurrency), min(args.concurrency)):
            rows.append(load_phase(load, label, pid, lambda stats=stats: litserve_batches(stats), phase_timing(args),
                                   c, kind="http", url=url, body=body, headers=headers))
    return rows


def run_all(args: argparse.Namespace, package: Path, tmp: Path) -> tuple[list[Row], dict[str, Any]]:
    """Every row, in this order: the inferforge server stays up throughout (idle while LitServe runs)."""
    import inferforge
    from inferforge.demo.minilm import make_data
    from inferforge.manifest import read_manifest
    from inferforge.serve.model import suggested_batching

    manifest = read_manifest(package)
    max_batch = suggested_batching(manifest).max_batch_size
    work = Workload(package, manifest["model"], max_batch, make_data())
    runner = inferforge.load(package, threads=args.threads)
    info: dict[str, Any] = {"artifact": runner.selection.key, "max_batch": max_batch}
    load = LoadGenerator()
    try:
        with inferforge_server(args, work, runner, load, tmp, info) as phase:
            rows = measure_inferforge(args, work, runner, phase, info)
            top = max(args.concurrency)
            rows += measure_litserve(args, work, runner(work.rows(1))[OUTPUT][0], load, tmp, info,
                                     lambda: phase("HTTP", top))
        # inferforge HTTP at the most clients ran once more after each LitServe: its row is the median run.
        index = next(i for i, r in enumerate(rows) if r.path == "inferforge HTTP" and r.concurrency == top)
        runs = [rows[index]] + [after for _, after in info["pairs"]]
        info["http_top_runs"] = [r.throughput for r in runs]
        rows[index] = median_by_p50(runs)
    finally:
        load.close()
    return rows, info


# ---- report -----------------------------------------------------------------------------------------------------

def render(rows: list[Row], info: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    import inferforge
    from inferforge.environment import cpu_model, usable_cores, version_of

    def fmt(value: float | None, digits: int = 2) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    top = max(args.concurrency)
    same = [pair for pair in info["pairs"] if "PyTorch" not in pair[0].path]
    plain = [pair for pair in info["pairs"] if "PyTorch" in pair[0].path]
    lit_top, http_top = max(same, key=lambda pair: pair[0].throughput)  # LitServe's best, and its pair
    runs = info["http_top_runs"]
    pairs = "; ".join(f"{lit.path.split(', ')[1]}: {lit.throughput:.1f} against {after.throughput:.1f} "
                      f"(other processes {lit.other_cpu:.2f} and {after.other_cpu:.2f} cores)"
                      for lit, after in same)
    best_local = max((r for r in rows if r.path == "in-process"), key=lambda r: r.throughput)
    reachable = max((r for r in rows if r.path == "in-process" and r.batch <= top), key=lambda r: r.throughput)
    http_top_row = next(r for r in rows if r.path == "inferforge HTTP" and r.concurrency == top)
    local = rows[0]
    grpc_one = next(r for r in rows if r.path == "inferforge gRPC" and r.concurrency == 1)
    overheads = info["overheads_ms"]
    http_one = next(r for r in rows if r.path == "inferforge HTTP" and r.concurrency == 1)
    versions = ", ".join(f"{p} {version_of(p)}" for p in ("torch", "aiohttp", "grpcio", "litserve", "tritonclient"))
    lines = [
        f"Measured {date.today().isoformat()} with `{command}` on {cpu_model()} ({usable_cores()} cores usable, "
        f"one model copy on {args.threads} threads everywhere), {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}, inferforge {inferforge.__version__}, {versions}. Package: MiniLM, artifact "
        f"`{info['artifact']}`, server `max_batch_size` {info['max_batch']} (the package's best-throughput batch), "
        f"LitServe's the same. Served with `{info['serve_command']}` (free HTTP, gRPC and metrics ports). Every "
        + (f"phase waited up to {args.wait_quiet:g} s for processes outside the benchmark to use under "
           f"{QUIET_CORES} cores, then ran " if args.wait_quiet else "phase: ")
        + f"{args.warmup:g} s warm-up, then {args.seconds:g} s measured, closed-loop clients in one separate "
        "process that shares the cores with the server. One sample per request: samples/s = requests/s. "
        "\"Model ms per batch\" is the mean model call inside the server (its compute histogram; LitServe: timed "
        "around `predict`'s model call), or the mean call in-process. CPU columns are cores busy; the last is what "
        "processes outside this benchmark used meanwhile (the machine is shared: rows where it is high are noise).",
        "",
        "| path | clients | samples/request | samples/s | p50 ms | p99 ms | mean batch formed | model ms per batch | "
        "server CPU | load-generator CPU | other processes' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.path} | {r.concurrency or 'direct call'} | {r.batch} | {r.throughput:.1f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {fmt(r.mean_batch, 1)} | {fmt(r.compute_ms, 1)} | "
                     f"{fmt(r.server_cpu)} | {fmt(r.client_cpu)} | {r.other_cpu:.2f} |")
    lines += [
        "",
        f"- Server overhead, HTTP p50 at 1 client minus in-process p50 at batch 1: **{statistics.median(overheads):.2f} "
        f"ms** (median of {len(overheads)} back-to-back pairs: {', '.join(f'{o:.2f}' for o in overheads)}). "
        f"gRPC at 1 client minus the in-process median: {grpc_one.p50_ms - local.p50_ms:.2f} ms. Inside the server "
        f"at 1 client the model call alone took {fmt(http_one.compute_ms)} ms against {fmt(local.compute_ms)} ms "
        f"in-process (means); the rest of the HTTP p50, {http_one.p50_ms - (http_one.compute_ms or 0):.2f} ms, is "
        "decoding, queueing, encoding and the client.",
        f"- inferforge HTTP / LitServe at {top} clients: **{http_top.throughput / lit_top.throughput:.2f}x** the "
        f"throughput ({http_top.throughput:.1f} against {lit_top.throughput:.1f} samples/s), p50 {http_top.p50_ms:.1f} "
        f"against {lit_top.p50_ms:.1f} ms, p99 {http_top.p99_ms:.1f} against {lit_top.p99_ms:.1f} ms. LitServe "
        f"at its best batch_timeout ({lit_top.path.split(', ')[1]}), inferforge measured right after it (the server "
        f"stays up, idle, while LitServe runs). Every LitServe setting, LitServe against inferforge just after, "
        f"samples/s: {pairs}. The inferforge HTTP row at {top} clients is the median of its {len(runs)} runs "
        f"({', '.join(f'{t:.1f}' for t in runs)} samples/s); against LitServe's best that median is "
        f"{statistics.median(runs) / lit_top.throughput:.2f}x. Those runs of one setting spread by "
        f"{100 * (max(runs) - min(runs)) / statistics.median(runs):.0f}% of their median: read smaller gaps as ties.",
        f"- inferforge HTTP at {top} clients against in-process at its best batch ({best_local.batch}): "
        f"**{100 * http_top_row.throughput / best_local.throughput:.0f}%** of the throughput "
        f"({http_top_row.throughput:.1f} against {best_local.throughput:.1f} samples/s); against the best batch "
        f"{top} clients can form at most ({reachable.batch}): "
        f"**{100 * http_top_row.throughput / reachable.throughput:.0f}%** ({reachable.throughput:.1f} samples/s).",
    ]
    for lit, after in plain:
        lines.append(
            f"- Against LitServe serving the plain PyTorch FP32 module, as a LitServe user deploys MiniLM "
            f"({lit.path.split(', ')[1]}, LitServe's best setting above; cosine {info['plain_cosine']:.4f} to the "
            f"package's answer), inferforge HTTP measured right after it at {top} clients: "
            f"**{after.throughput / lit.throughput:.2f}x** the throughput ({after.throughput:.1f} against "
            f"{lit.throughput:.1f} samples/s); at 1 client p50 {http_one.p50_ms:.1f} against "
            f"{next(r for r in rows if r.path == lit.path and r.concurrency == 1).p50_ms:.1f} ms.")
    lines += [
        f"- Answers checked before timing: tritonclient HTTP and gRPC (batch 1 and 4) differ from in-process by at "
        f"most {info['triton_diff']:.1e}, LitServe by {info['litserve_diff']:.1e} (tolerance {TOLERANCE:g}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    from inferforge.environment import usable_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="a MiniLM package to serve (default: build one in a temp dir)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at the start of each phase")
    parser.add_argument("--threads", type=int, default=usable_cores(), help="model threads, everywhere")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help=f"before each phase, wait up to this many seconds for processes outside the benchmark "
                             f"to use under {QUIET_CORES} cores (a shared machine)")
    parser.add_argument("--repeats", type=int, default=3, help="in-process/HTTP pairs for the server overhead")
    parser.add_argument("--concurrency", type=_ints, default=(1, 4, 16), help="clients, e.g. 1,4,16")
    parser.add_argument("--litserve-timeouts", type=_floats, default=(2.0, 10.0, 50.0),
                        help="LitServe batch_timeout values to try, in ms")
    parser.add_argument("--no-litserve-pytorch", dest="litserve_pytorch", action="store_false",
                        help="skip LitServe serving the plain PyTorch FP32 module")
    parser.add_argument("--backends", default="eager",
                        help="backends searched when building the package (default eager: its pick, bf16 where the "
                             "CPU has it, does not flip between runs; 'all': the demo's full search, minutes longer)")
    parser.add_argument("--serve-args", default="", help="more `inferforge serve` flags, e.g. '--instance-kind process'")
    parser.add_argument("--write", type=Path, help="markdown file whose serve_bench section gets the results")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        package = args.package
        if package is None:
            backends = () if args.backends == "all" else tuple(args.backends.split(","))
            print(f"== building the MiniLM package (backends: {args.backends})", flush=True)
            package = build_package(Path(tmp) / "minilm", backends)
            print(f"   built in {time.perf_counter() - started:.0f} s", flush=True)
        print(f"== measuring {package}", flush=True)
        rows, info = run_all(args, package, Path(tmp))
    table = render(rows, info, args, "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:]))
    print(table)
    if args.write:
        from cpu_peers import write_section

        write_section(args.write, table, "serve_bench")
    print(f"serve_bench finished in {time.perf_counter() - started:.0f} s")
    return 0


def phase_timing(args: argparse.Namespace) -> PhaseTiming:
    return PhaseTiming(args.seconds, args.warmup, args.wait_quiet)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


if __name__ == "__main__":
    sys.exit(main())
