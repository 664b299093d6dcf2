"""One process serving a repository over HTTP, gRPC and a metrics port, and shutting down gracefully.

The event loop only parses, validates, queues and answers; models run on their
instances' threads or processes (see batcher.py). Shutdown (SIGTERM/SIGINT): readiness
turns false, listeners close, queued and running requests finish (up to
``drain_timeout_s``), then models are released.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from inferforge.serve.auth import Auth
from inferforge.serve.endpoints import V2Endpoints
from inferforge.serve.http import HttpFrontEnd
from inferforge.serve.metrics import ServerMetrics
from inferforge.serve.model import ModelOptions, ServedModel
from inferforge.serve.repository import ModelRepository, VersionState

log = logging.getLogger("inferforge.serve")


@dataclass(frozen=True)
class ServerConfig:
    """Ports 0 pick free ones (tests); ``None`` turns that listener off. Defaults are Triton's ports."""

    root: Path
    host: str = "127.0.0.1"
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    auth: Auth = field(default_factory=Auth)
    models: ModelOptions = field(default_factory=ModelOptions)
    poll_seconds: float = 2.0  # 0 = no polling; the repository API still reloads
    max_body_bytes: int = 64 << 20
    read_timeout_s: float = 60.0  # a request's head, and then its body, must arrive within it (slowloris)
    drain_timeout_s: float = 30.0


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id and whatever ``extra`` fields a call passed."""

    _plain = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in self._plain})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("inferforge")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


@dataclass
class Server:
    config: ServerConfig
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    ports: dict[str, int] = field(default_factory=dict)
    repository: ModelRepository = field(init=False)
    endpoints: V2Endpoints = field(init=False)  # the one route table; HTTP adapts it, gRPC calls its operations
    http: HttpFrontEnd = field(init=False)
    _runners: list[web.AppRunner] = field(default_factory=list)
    _grpc: Any = None
    _poller: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.repository = ModelRepository(self.config.root, self.config.models, self._on_state, self._on_model)
        self.endpoints = V2Endpoints(self.repository, metrics=self.metrics, repository=self.repository,
                                     max_body_bytes=self.config.max_body_bytes)
        self.http = HttpFrontEnd(self.endpoints, self.config.auth, self.config.max_body_bytes,
                                 self.config.read_timeout_s)

    def _on_state(self, state: VersionState) -> None:
        self.metrics.set_state(state.name, state.version, state.state)

    def _on_model(self, model: ServedModel) -> None:
        def record(m: ServedModel, timing: Any) -> None:
            self.metrics.record_batch(m.name, timing, m.batcher.queued_rows if m.batcher else 0)
        model.on_batch = record

    async def start(self) -> None:
        """Load the repository (models that fail are reported, not fatal), then open the listeners."""
        await self.repository.poll()
        if not self.repository.serving:
            log.warning(f"no model in {self.config.root} could be loaded; serving anyway so that the index shows "
                        "why: " + "; ".join(f"{s['name']}/{s['version']}: {s.get('reason', '')}"
                                            for s in self.repository.index_json()))
        host = self.config.host
        if self.config.http_port is not None:
            self.ports["http"] = await self._site(self.http.app(), host, self.config.http_port)
        if self.config.metrics_port is not None:
            self.ports["metrics"] = await self._site(self.http.metrics_app(), host, self.config.metrics_port)
        if self.config.grpc_port is not None:
            from inferforge.serve.grpc import build_grpc_server

            self._grpc, self.ports["grpc"] = build_grpc_server(self.endpoints, self.config.auth, host,
                                                               self.config.grpc_port, self.config.max_body_bytes)
            await self._grpc.start()
        if self.config.poll_seconds > 0:
            self._poller = asyncio.create_task(self._poll_forever())
        log.info("serving", extra={"ports": self.ports, "models": sorted(self.repository.serving)})

    async def _site(self, app: web.Application, host: str, port: int) -> int:
        runner = self.http.runner(app, self.config.drain_timeout_s)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            try:
                await self.repository.poll()
            except Exception as exc:  # a bad scan must not stop later ones
                log.warning(f"repository scan failed: {exc}")

    async def stop(self) -> None:
        """Graceful: not ready, stop listening, finish in-flight requests, release models."""
        self.endpoints.draining = True
        if self._poller is not None:
            self._poller.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=self.config.drain_timeout_s)
        for runner in self._runners:
            await runner.cleanup()
        await self.repository.close(self.config.drain_timeout_s)


def run(config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""

    async def main() -> None:
        server = Server(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(f"inferforge serve: models {', '.join(sorted(server.repository.serving)) or 'none'}; "
              + ", ".join(f"{k} {config.host}:{v}" for k, v in server.ports.items()), flush=True)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests")
        await server.stop()

    asyncio.run(main())


class BackgroundServer:
    """A server on its own event loop thread (tests, benchmarks, notebooks). ``with`` starts and stops it."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = Server(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="inferforge-serve")

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=600)
        return self

    def call(self, coroutine: Any, timeout: float = 600) -> Any:
        """Run a coroutine on the server's loop (e.g. ``repository.poll()``) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    @property
    def http_url(self) -> str:
        return f"{self.server.config.host}:{self.server.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.server.config.host}:{self.server.ports['grpc']}"

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.stop(), timeout=120)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()
