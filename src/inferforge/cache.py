"""Built artifacts, cached by everything that decides their contents, so a second ``optimize`` is fast.

Compiling is a user's cost: Inductor and AOTInductor take tens of seconds per
candidate on CPU, minutes with max-autotune on GPU. A build's files depend only on
the model (weights and spec), the build config, the calibration samples (static
INT8) and the environment that compiled them (inferforge, torch and the other
libraries, Python, the CPU's flags, the GPU). The key hashes all of these, so any
change means a fresh build, never a stale artifact.

Entries are written to a temporary folder and renamed into place, so a crashed or
concurrent run never leaves a half entry; each file's sha256 is checked when an
entry is read, and an entry that fails is deleted and rebuilt. Nothing is evicted:
the folder (``$INFERFORGE_CACHE``, default ``~/.cache/inferforge/artifacts``) may be
deleted at any time. ``INFERFORGE_CACHE=off`` or ``--no-cache`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import Artifact, BuildConfig
from inferforge.data import Dataset
from inferforge.environment import fingerprint

META = "inferforge-cache.json"
OFF = ("off", "0", "none", "")


def default_cache_dir() -> Path | None:
    """``$INFERFORGE_CACHE`` ("off" turns caching off), else ``~/.cache/inferforge/artifacts``."""
    value = os.environ.get("INFERFORGE_CACHE")
    if value is None:
        return Path.home() / ".cache" / "inferforge" / "artifacts"
    return None if value.strip().lower() in OFF else Path(value).expanduser()


def dataset_fingerprint(dataset: Dataset | None) -> str | None:
    if dataset is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(dataset.inputs):
        value = np.ascontiguousarray(dataset.inputs[name])
        digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CachedBuild:
    artifact: Artifact
    build_seconds: float  # what the original build took: the leaderboard shows the cost, and that it was saved


@dataclass(frozen=True)
class ArtifactCache:
    root: Path

    def key(self, source_fingerprint: str, config: BuildConfig, calibration_fingerprint: str | None) -> str:
        from inferforge.version import __version__

        env = fingerprint()
        env.pop("cores", None)  # the same machine with a different affinity builds the same files
        material = {"inferforge": __version__, "source": source_fingerprint, "config": config.to_json(),
                    "calibration": calibration_fingerprint, "environment": env}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def get(self, key: str, config: BuildConfig, out_dir: Path) -> CachedBuild | None:
        """Copy a cached build into ``out_dir`` (empty); None when there is none or it fails its checksums."""
        entry = self.root / key
        try:
            meta = json.loads((entry / META).read_text())
        except (OSError, ValueError):
            return None
        files = meta["files"]
        try:
            intact = all(file_sha256(entry / "files" / name) == want for name, want in files.items())
        except OSError:
            intact = False
        if not intact:
            shutil.rmtree(entry, ignore_errors=True)  # corrupt: rebuild
            return None
        shutil.copytree(entry / "files", out_dir, dirs_exist_ok=True)
        details = {**meta["details"], "cache": f"reused the build from the artifact cache ({key})"}
        artifact = Artifact(config, out_dir, tuple(sorted(files)), meta["requires"], details, meta["size_bytes"])
        return CachedBuild(artifact, float(meta["build_seconds"]))

    def put(self, key: str, artifact: Artifact, build_seconds: float) -> None:
        """Store a build; a failure to write the cache never fails the search."""
        entry = self.root / key
        if entry.exists():
            return
        staging: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            shutil.copytree(artifact.directory, staging / "files")
            meta: dict[str, Any] = {
                "files": {name: file_sha256(staging / "files" / name) for name in artifact.files},
                "requires": dict(artifact.requires), "details": dict(artifact.details),
                "size_bytes": artifact.size_bytes, "build_seconds": build_seconds,
                "config": artifact.config.to_json()}
            (staging / META).write_text(json.dumps(meta, indent=1, default=str))
            os.replace(staging, entry)
        except OSError:  # e.g. a concurrent run stored the same entry first, or the disk is full
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """The file's sha256 in hex (packages and the cache both check files with it)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
