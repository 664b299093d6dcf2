"""Write and open packages: a folder with a manifest, checksummed artifacts and a report.

A package is written to a temporary folder beside its destination and renamed
into place, so a crash never leaves half a package. ``load`` verifies every file
of the artifact it opens, checks that this machine fits, and falls back down the
ranked list, saying which artifact it took and why.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferforge.backends import artifact_from_json, backend_names, export_formats, get_backend
from inferforge.backends.base import Runner
from inferforge.cache import file_sha256
from inferforge.candidate import CandidateResult
from inferforge.environment import fingerprint, unmet_requirements, usable_cores
from inferforge.errors import InferforgeError, PackageError, SpecError, one_line
from inferforge.manifest import (
    ARTIFACTS,
    FORMAT_VERSION,
    MANIFEST,
    read_manifest,
    swap_into_place,
    tuned_threads,
    verify_checksums,
)
from inferforge.report.document import packaged_json
from inferforge.search import SearchResult
from inferforge.types import ModelSpec, Precision

if TYPE_CHECKING:
    from inferforge.adapters import AdapterSpec
    from inferforge.tune import Tuning

def check_fallbacks(fallbacks: int) -> None:
    """SpecError unless ``fallbacks`` (passed candidates packaged after the best) is 0 or more."""
    if fallbacks < 0:
        raise SpecError(f"fallbacks must be 0 or more (passed candidates packaged after the best), got {fallbacks}")


def choose_packaged(result: SearchResult, fallbacks: int) -> list[tuple[CandidateResult, str]]:
    """The best candidate and up to ``fallbacks`` more passed ones, one per backend, then whatever the package
    still lacks of: a portable CPU FP32 artifact (no compiled code, no GPU; one that loads without running
    the user's code where one passed), and an artifact for each format ``inferforge export`` writes (one in
    that format, else a torch.export program it converts). Each with why it is packaged (the manifest's
    ``why``, shown by ``info`` and ``runner.selection``)."""
    chosen: list[tuple[CandidateResult, str]] = []
    for candidate in result.passed:
        if len(chosen) > fallbacks:
            break
        if all((c.config.backend, c.config.device) != (candidate.config.backend, candidate.config.device)
               for c, _ in chosen):
            chosen.append((candidate, result.pick_reason() if not chosen else
                           f"fallback: the best passing {candidate.config.backend} candidate on {candidate.config.device}"))
    if not chosen:
        return chosen

    def has(wanted: Callable[[CandidateResult], bool]) -> bool:
        return any(wanted(c) for c, _ in chosen)

    def add_first(wanted: Callable[[CandidateResult], bool], why: str) -> None:
        found = next((c for c in result.passed if wanted(c)), None)
        if found is not None and not has(lambda c: c is found):
            chosen.append((found, why))

    # The export formats first: their artifacts (TorchScript, ONNX) are often the portable fallback too.
    formats = export_formats()
    for fmt in formats:
        if not has(partial(_gives, fmt=fmt)):
            add_first(partial(_gives, fmt=fmt), f"what `inferforge export --format {fmt}` copies")
    if not all(has(partial(_gives, fmt=fmt)) or has(_keeps_program) for fmt in formats):
        add_first(_keeps_program, "a torch.export program `inferforge export` converts")
    if not has(lambda c: _portable(c) and not _runs_user_code(c)):
        add_first(lambda c: _portable(c) and not _runs_user_code(c),
                  "portable: CPU FP32, no compiled code, runs no user code")
    if not has(_portable):
        add_first(_portable, "portable: CPU FP32, no compiled code")
    return chosen


def _portable(candidate: CandidateResult) -> bool:
    return (get_backend(candidate.config.backend).portable and candidate.config.device == "cpu"
            and candidate.config.precision is Precision.FP32)


def _runs_user_code(candidate: CandidateResult) -> bool:
    return get_backend(candidate.config.backend).runs_user_code


def _gives(candidate: CandidateResult, fmt: str) -> bool:
    """Whether export copies this artifact as ``fmt`` (a CPU artifact of a backend that writes that format)."""
    return fmt in get_backend(candidate.config.backend).export_formats and candidate.config.device == "cpu"


def _keeps_program(candidate: CandidateResult) -> bool:
    return get_backend(candidate.config.backend).keeps_program


def write_package(result: SearchResult, spec: ModelSpec, out: Path, *, model_name: str, source_fingerprint: str,
                  report_json: Mapping[str, Any], report_md: str, fallbacks: int = 2, overwrite: bool = False,
                  adapter: AdapterSpec | None = None, tuning: Tuning | None = None) -> Path:
    """Copy the chosen artifacts with checksums and a manifest into ``out`` atomically.

    ``tuning``: the measured threads/instances of the best artifact (``load`` and ``serve`` default to them).

    ``adapter``: the input adapter the server puts in front of the model; checked against
    ``spec`` (SpecError when it does not fit), its files copied into serve/ and checksummed.
    """
    chosen = choose_packaged(result, fallbacks)
    if not chosen:
        raise InferforgeError("no candidate passed the accuracy budget, so there is nothing to package")
    if adapter is not None:
        from inferforge.adapters import build_adapter  # serving code stays out of optimize's imports

        build_adapter(adapter, spec)
    out = out.resolve()
    if out.exists() and not overwrite:
        raise PackageError(f"{out} already exists: choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for rank, (candidate, why) in enumerate(chosen):
            assert candidate.artifact is not None
            rel_dir = f"{ARTIFACTS}/{candidate.key}"
            shutil.copytree(candidate.artifact.directory, staging / rel_dir)
            entries.append({
                "rank": rank, "key": candidate.key, "path": rel_dir, "why": why, **candidate.artifact.to_json(),
                "sha256": {f: file_sha256(staging / rel_dir / f) for f in candidate.artifact.files},
                "accuracy": candidate.accuracy.to_json() if candidate.accuracy else None,
                "bench": candidate.bench.to_json() if candidate.bench else None,
                "build_seconds": candidate.build_seconds,
            })
        manifest = {
            "format_version": FORMAT_VERSION, "model": model_name, "source_fingerprint": source_fingerprint,
            "spec": spec.to_json(), "objective": result.options.objective.value,
            "chosen": entries[0]["key"], "artifacts": entries, "environment": fingerprint(),
            "tuning": tuning.to_json() if tuning is not None else None,
        }
        if adapter is not None:
            manifest["serve"] = _write_serve_files(staging, adapter)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        report_json = {**report_json, "packaged": packaged_json(entries)}  # the reports mark what was packaged
        (staging / "report.json").write_text(json.dumps(report_json, indent=2, default=str) + "\n")
        (staging / "report.md").write_text(report_md)
        _write_html_report(staging / "report.html", report_json)
        swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_serve_files(staging: Path, adapter: AdapterSpec) -> dict[str, Any]:
    """Copy the adapter's files into serve/ and return the manifest's ``serve`` section."""
    from inferforge.adapters import SERVE_DIR

    folder = staging / SERVE_DIR
    folder.mkdir()
    checksums = {}
    for name, source in adapter.files().items():
        shutil.copyfile(source, folder / name)
        checksums[name] = file_sha256(folder / name)
    return {"path": SERVE_DIR, "sha256": checksums, "adapter": adapter.to_json()}


def _write_html_report(path: Path, report_json: Mapping[str, Any]) -> None:
    """The run's charts and leaderboard as one self-contained page; a package is still written without it."""
    try:
        from inferforge.report.html_optimize import optimize_report_html

        path.write_text(optimize_report_html(dict(report_json)))
    except Exception as exc:  # e.g. matplotlib missing: the JSON and Markdown reports carry the same figures
        warnings.warn(f"report.html not written: {one_line(exc)}", stacklevel=3)


@dataclass(frozen=True)
class Selection:
    """Which artifact ``load`` took, and why each one ranked above it was passed over."""

    key: str
    rank: int
    passed_over: tuple[str, ...] = field(default_factory=tuple)
    why: str = ""  # why the search packaged this artifact (the manifest's "why")

    def __str__(self) -> str:
        lines = [f"{self.key} (rank {self.rank})" + (f": {self.why}" if self.why else "")]
        lines += [f"  passed over {reason}" for reason in self.passed_over]
        return "\n".join(lines)


TRUST_SOURCE_ENV = "INFERFORGE_TRUST_SOURCE"  # "1": trust_source for every load in this process and its children


def load(path: str | Path, *, threads: int | None = None, artifact: str | None = None,
         trust_source: bool | None = None) -> Runner:
    """Open a package and return a runner for the best artifact this machine can run.

    ``artifact`` forces one by key. The runner's ``selection`` says which was taken and why
    the ones above it were not. Raises PackageError when none fits, listing each reason.
    ``trust_source``: also open artifacts that import and run the model's own Python code (the source
    artifact, for models no graph capture takes); without it they are passed over, saying so. None: as the
    environment variable INFERFORGE_TRUST_SOURCE says (set by ``inferforge serve --trust-source``).
    """
    if trust_source is None:
        trust_source = os.environ.get(TRUST_SOURCE_ENV) == "1"
    package = Path(path)
    manifest = read_manifest(package)
    spec = ModelSpec.from_json(manifest["spec"])
    entries = manifest["artifacts"]
    if artifact is not None:
        entries = [e for e in entries if e["key"] == artifact]
        if not entries:
            raise PackageError(f"package {package} has no artifact {artifact!r}; it has "
                               f"{', '.join(e['key'] for e in manifest['artifacts'])}")
    passed_over: list[str] = []
    for entry in entries:
        unmet = unmet_requirements(entry.get("requires", {}))
        backend_name = entry["config"]["backend"]
        if not trust_source and backend_name in backend_names() and get_backend(backend_name).runs_user_code:
            unmet = [*unmet, "it runs the model's own Python code, packaged with it (checksummed): load it with "
                     "trust_source=True (CLI: --trust-source) if you trust whoever built this package"]
        if unmet:
            passed_over.append(f"{entry['key']}: " + "; ".join(unmet))
            continue
        verify_checksums(package, entry)
        try:
            backend = get_backend(entry["config"]["backend"])
            runner = backend.load(artifact_from_json(entry, package / entry["path"]), spec,
                                  threads or tuned_threads(manifest, entry["key"]) or usable_cores())
        except InferforgeError as exc:
            passed_over.append(f"{entry['key']}: {exc}")
            continue
        except Exception as exc:
            passed_over.append(f"{entry['key']}: loading failed: {one_line(exc)}")
            continue
        runner.selection = Selection(entry["key"], entry["rank"], tuple(passed_over), entry.get("why", ""))  # type: ignore[attr-defined]
        if passed_over:
            warnings.warn(f"inferforge: loaded {entry['key']} (rank {entry['rank']}) from {package}; passed over: "
                          + " | ".join(passed_over), stacklevel=2)
        return runner
    raise PackageError(f"no artifact in {package} can run on this machine: " + " | ".join(passed_over))


