"""The manifest: what a package holds, read and checked the same way by ``load``, the server and ``info``.

A package is a folder: ``inferforge.json`` (this module's ``MANIFEST``) lists the model's spec, the
ranked artifacts (each with its build config, the files' sha256 and what it requires of a machine), the
tuning and the input adapter; ``artifacts/KEY/`` holds each artifact's files. Writing lives in
``package.py``; everything that only reads a package (the server, ``info``, ``export``, the adapters)
depends on this module alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferforge.cache import file_sha256
from inferforge.environment import usable_cores
from inferforge.errors import PackageError

MANIFEST = "inferforge.json"
FORMAT_VERSION = 1
ARTIFACTS = "artifacts"


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.exists():
        raise PackageError(f"package {path} does not exist")
    if not manifest_path.is_file():
        raise PackageError(f"{path} is not an inferforge package: it has no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise PackageError(f"{manifest_path} is not valid JSON ({exc}); the package is damaged: rebuild it") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise PackageError(f"{manifest_path} is JSON but not an inferforge manifest (an object with a list of "
                           "artifacts); the package is damaged: rebuild it")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{path} has package format {manifest.get('format_version')}, this inferforge reads "
                           f"format {FORMAT_VERSION}: rebuild it or use a matching inferforge")
    return manifest


def verify_checksums(package: Path, entry: Mapping[str, Any]) -> None:
    """Raise PackageError naming every file that is missing or changed."""
    problems = []
    for rel, want in entry["sha256"].items():
        file = package / entry["path"] / rel
        if not file.is_file():
            problems.append(f"{entry['path']}/{rel} is missing")
        elif file_sha256(file) != want:
            problems.append(f"{entry['path']}/{rel} does not match its checksum")
    if problems:
        raise PackageError(f"package {package} is damaged or was modified: " + "; ".join(problems)
                           + ". Rebuild it or copy it again.")


def tuned_threads(manifest: Mapping[str, Any], key: str, objective: str = "latency") -> int | None:
    """The thread count measured best for the chosen artifact (None for others, or when not tuned).

    Never more than this machine's usable cores: a package built on a bigger machine still fits."""
    tuning = manifest.get("tuning")
    if not tuning or key != manifest.get("chosen"):
        return None
    threads = tuning["latency_threads"] if objective == "latency" else tuning["throughput_threads"]
    return min(int(threads), usable_cores())


def swap_into_place(staging: Path, out: Path) -> None:
    """Put a finished folder where ``out`` is, replacing what was there only once the new one is complete."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
