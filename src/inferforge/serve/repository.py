"""The model repository: which versions are loaded, and reloading them without downtime.

Layout, as Triton lays it out: ``REPO/<model>/<version>/`` where each numbered version
folder holds an inferforge package. A single package folder also works (one model,
version 1). The newest version that loads is served (Triton's default "latest 1" policy); a
version that fails to load is retried when its files change (``_sync_model``).

Reload without downtime (Triton #2076 unloads before it loads): a new or changed
version is opened beside the one serving, verified (checksums) and warmed up, and only
then does traffic switch to it; the old one finishes its queued and running requests
before its instances are released. A version that fails to open leaves the old one
serving; the index and the log say why.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferforge.errors import InferforgeError, ProtocolError, one_line
from inferforge.manifest import MANIFEST, read_manifest
from inferforge.serve.model import ModelOptions, ServedModel

log = logging.getLogger("inferforge.serve")


@dataclass
class VersionState:
    """One version folder as the index reports it."""

    name: str
    version: str
    path: Path
    fingerprint: str = ""
    state: str = "UNAVAILABLE"  # LOADING, READY, UNAVAILABLE
    reason: str = ""
    failed: bool = False  # the files of ``fingerprint`` failed to load: retried only once they change

    def to_json(self) -> dict[str, Any]:
        data = {"name": self.name, "version": self.version, "state": self.state}
        if self.reason:
            data["reason"] = self.reason
        return data


def folder_fingerprint(path: Path) -> str:
    """Changes whenever any file of the package changes (manifest bytes, every file's size and mtime)."""
    digest = hashlib.sha256()
    manifest = path / MANIFEST
    if manifest.is_file():
        digest.update(manifest.read_bytes())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def scan(root: Path) -> dict[str, dict[str, Path]]:
    """Model name -> version -> package folder, from a repository or a single package."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return {str(read_manifest(root).get("model") or root.name.split(".")[0]): {"1": root}}
    if not root.is_dir():
        raise InferforgeError(f"{root} is neither an inferforge package nor a model repository folder")
    models: dict[str, dict[str, Path]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = {v.name: v for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()}
        if versions:
            models[model_dir.name] = versions
    return models


@dataclass
class ModelRepository:
    root: Path
    options: ModelOptions = field(default_factory=ModelOptions)
    on_change: Callable[[VersionState], None] = lambda state: None
    on_model: Callable[[ServedModel], None] = lambda model: None  # called when a model starts serving
    serving: dict[str, ServedModel] = field(default_factory=dict)
    index: dict[tuple[str, str], VersionState] = field(default_factory=dict)
    unloaded: set[str] = field(default_factory=set)  # unloaded by request: polling leaves them alone
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retired: set[asyncio.Task[None]] = field(default_factory=set)

    # ---- lookups used by the front ends ---------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self.serving.get(name)
        if model is None:
            known = ", ".join(sorted(self.serving)) or "none"
            state = next((s for (n, _), s in self.index.items() if n == name), None)
            if state is not None:
                raise ProtocolError(f"model {name!r} is not ready ({state.state}"
                                    f"{': ' + state.reason if state.reason else ''})", 503, retry_after_s=1.0)
            raise ProtocolError(f"unknown model {name!r}; models served: {known}", 404)
        if version not in (None, "", model.version):
            raise ProtocolError(f"model {name!r} serves version {model.version}, not {version}", 404)
        return model

    def is_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.get(name, version)
        except ProtocolError:
            return False
        return True

    @property
    def ready(self) -> bool:
        """Every model found in the repository (and not unloaded on request) is serving."""
        wanted = {n for (n, _) in self.index} - self.unloaded
        return bool(self.serving) and wanted <= set(self.serving)

    def index_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for _, s in sorted(self.index.items())]

    # ---- loading --------------------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Bring what serves in line with the folder: new versions, changed packages, removed models."""
        async with self._lock:
            found = await asyncio.to_thread(scan, self.root)
            for name, versions in found.items():
                if name not in self.unloaded:
                    await self._sync_model(name, versions)
            for name in [n for n in self.serving if n not in found]:
                log.info(f"model {name} left the repository: unloading")
                await self._retire(self.serving.pop(name))
            for key in [k for k in self.index if k[0] not in found or k[1] not in found[k[0]]]:
                del self.index[key]

    async def load(self, name: str) -> None:
        """Repository API: (re)load a model from the folder; raises ProtocolError if it cannot serve."""
        async with self._lock:
            self.unloaded.discard(name)
            versions = (await asyncio.to_thread(scan, self.root)).get(name)
            if not versions:
                raise ProtocolError(f"model {name!r} is not in the repository {self.root}", 404)
            await self._sync_model(name, versions, force=True)
            if name not in self.serving:
                reasons = "; ".join(f"version {s.version}: {s.reason}" for (n, _), s in self.index.items()
                                    if n == name and s.reason)
                raise ProtocolError(f"model {name!r} failed to load: {reasons}", 400)

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self.serving and all(n != name for (n, _) in self.index):
                raise ProtocolError(f"unknown model {name!r}", 404)
            self.unloaded.add(name)
            model = self.serving.pop(name, None)
            for (n, _), state in self.index.items():
                if n == name:
                    state.state, state.reason = "UNAVAILABLE", "unloaded"
            if model is not None:
                await self._retire(model)

    async def _sync_model(self, name: str, versions: dict[str, Path], force: bool = False) -> None:
        """Serve the newest version that loads: try versions newest first, down to the one serving.

        A version that failed to load is skipped while its files stay as they were, and retried
        as soon as they change, whatever newer broken versions exist: a broken v4 never hides a
        repaired v3 (``force``, the load API, retries every version). Reaching the serving version
        unchanged ends the walk; when the serving version's folder is gone, older ones may replace it.
        """
        current = self.serving.get(name)
        floor = int(current.version) if current is not None and current.version in versions else None
        for version in sorted(versions, key=int, reverse=True):
            if floor is not None and int(version) < floor:
                break  # the version serving is the newest that loads
            path = versions[version]
            fingerprint = await asyncio.to_thread(folder_fingerprint, path)
            state = self.index.setdefault((name, version), VersionState(name, version, path))
            unchanged = state.fingerprint == fingerprint and not force
            if unchanged and current is not None and version == current.version:
                break
            if unchanged and state.failed:
                continue  # failed with exactly these files: an older version may load
            state.fingerprint, state.state, state.reason, state.failed = fingerprint, "LOADING", "", False
            self.on_change(state)
            try:
                model = await asyncio.to_thread(ServedModel.open, name, version, path, self.options)
            except Exception as exc:
                state.state, state.reason, state.failed = "UNAVAILABLE", one_line(exc, 500), True
                log.warning(f"model {name} version {version} failed to load; "
                            f"{'still serving version ' + current.version if current else 'nothing serves it'}: "
                            f"{state.reason}")
                self.on_change(state)
                continue
            model.start()
            self.serving[name] = model
            self.on_model(model)
            state.state = "READY"
            self.on_change(state)
            log.info(f"model {name} version {version} ready ({model.artifact_key})")
            for (n, v), other in self.index.items():
                if n == name and v != version and other.state == "READY":
                    other.state, other.reason = "UNAVAILABLE", f"replaced by version {version}"
                    self.on_change(other)
            if current is not None and current is not model:
                await self._retire(current)
            break

    async def _retire(self, model: ServedModel) -> None:
        """Drain in the background: in-flight requests on the old model finish there."""
        task = asyncio.create_task(model.stop())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Graceful shutdown: every model finishes what it has queued, then stops."""
        models = list(self.serving.values())
        self.serving.clear()
        await asyncio.gather(*(m.stop(drain_timeout_s) for m in models), *self._retired, return_exceptions=True)
