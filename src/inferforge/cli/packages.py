"""Commands on a written package: ``inferforge info`` (manifest and integrity) and ``inferforge export`` (one file
for a runtime without Python)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

INFO_HELP = "show a package's manifest: chosen artifact, fallbacks, figures"
EXPORT_HELP = ("the package's model as one file for a runtime without Python (LibTorch, ONNX Runtime C++), with "
               "its input/output spec and a sample")
INTACT = "intact"


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", type=Path)
    parser.add_argument("--json", action="store_true", help="the manifest and each artifact's integrity as JSON")


def run_info(args: argparse.Namespace) -> int:
    """The manifest's summary and whether every artifact still matches its checksums; exit 2 when one does not,
    so a script can tell a damaged package from a sound one."""
    from inferforge.manifest import read_manifest

    manifest = read_manifest(args.package)
    integrity = _integrity(args.package, manifest["artifacts"])
    if args.json:
        print(json.dumps({**manifest, "integrity": integrity}, indent=2))
    else:
        print("\n".join(info_lines(manifest, integrity)))
    damaged = [key for key, state in integrity.items() if state != INTACT]
    if damaged:
        print(f"error: {len(damaged)} of {len(integrity)} artifacts in {args.package} do not match their checksums "
              f"({', '.join(damaged)}): rebuild the package or copy it again", file=sys.stderr)
        return 2
    return 0


def info_lines(manifest: dict[str, Any], integrity: dict[str, str]) -> list[str]:
    """What a newcomer needs from a package without reading its JSON: each artifact with its figures, why it
    is there and what it needs; the model's inputs and outputs; the adapter; where it was built."""
    lines = [f"{manifest['model']}: chosen {manifest['chosen']} (objective {manifest['objective']})", "artifacts:"]
    for entry in manifest["artifacts"]:
        bench = entry.get("bench") or {}
        latency = bench.get("latency") or {}
        figures = [f"p50 {latency['p50_ms']:.3g} ms at batch {latency.get('batch_size', 1)}"] if latency.get("p50_ms") else []
        if bench.get("best_throughput"):
            rate = bench["best_throughput"]
            figures.append(f"{rate:,.0f} samples/s best" if rate >= 100 else f"{rate:.3g} samples/s best")
        figures.append(_accuracy_text(entry.get("accuracy")))
        if entry.get("size_bytes"):
            figures.append(f"{entry['size_bytes'] / 1e6:.1f} MB")
        lines.append(f"  #{entry['rank']} {entry['key']}: " + ", ".join(f for f in figures if f)
                     + f"  [{integrity[entry['key']]}]")
        if entry.get("why"):
            lines.append(f"      why: {entry['why']}")
        if entry.get("requires"):
            lines.append("      needs: " + ", ".join(f"{k.split(':', 1)[-1]} {v}" for k, v in entry["requires"].items()))
    spec = manifest["spec"]
    def tensors(specs: list[dict[str, Any]]) -> str:
        return "  ".join(f"{s['name']}: {s['dtype']}[{','.join(map(str, s['shape']))}]" for s in specs)

    lines.append("inputs:  " + tensors(spec["inputs"]))
    lines.append("outputs: " + tensors(spec.get("outputs", [])))
    adapter = (manifest.get("serve") or {}).get("adapter")
    lines.append(f"adapter: {adapter['kind']} (inferforge serve also takes raw {adapter['kind']} as input "
                 f"{adapter['input']!r})" if adapter else "adapter: none (inferforge serve takes the inputs above)")
    env = manifest.get("environment") or {}
    libraries = env.get("libraries") or {}
    lines.append(f"built on: {env.get('cpu', '?')} ({env.get('cores', '?')} cores)"
                 + (f", {env['gpu']}" if env.get("gpu") else "") + f", Python {env.get('python', '?')}, "
                 + ", ".join(f"{k} {v}" for k, v in libraries.items() if v))
    return lines


def _accuracy_text(accuracy: dict[str, Any] | None) -> str:
    """The figure the budget was decided on, as the leaderboard words it."""
    from inferforge.validate import DecidingFigure

    if not accuracy:
        return ""
    decided = DecidingFigure(accuracy["decided_by"])
    if decided is DecidingFigure.ACCURACY_DROP and accuracy.get("accuracy") is not None:
        return f"accuracy {100 * accuracy['accuracy']:.2f}%"
    if decided is DecidingFigure.TOP1_AGREEMENT and accuracy.get("top1_agreement") is not None:
        return f"top-1 agreement {100 * accuracy['top1_agreement']:.1f}% vs FP32"
    return f"cosine {accuracy.get('cosine', 1.0):.4f} vs FP32"


def _integrity(package: Path, entries: list[dict[str, Any]]) -> dict[str, str]:
    """Per artifact key: 'intact', or what is missing or changed (manifest.verify_checksums' words)."""
    from inferforge.errors import PackageError
    from inferforge.manifest import verify_checksums

    states = {}
    for entry in entries:
        try:
            verify_checksums(package, entry)
            states[entry["key"]] = INTACT
        except PackageError as exc:
            states[entry["key"]] = "DAMAGED: " + str(exc).split(": ", 1)[-1].removesuffix(
                ". Rebuild it or copy it again.")
    return states


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.backends import export_formats

    parser.add_argument("package", type=Path)
    parser.add_argument("--format", required=True, choices=list(export_formats()))
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run_export(args: argparse.Namespace) -> int:
    from inferforge.export import export_package

    result = export_package(args.package, args.format, args.out, overwrite=args.overwrite)
    checked = "" if result.max_abs_error is None else f", max abs error {result.max_abs_error:.2g} against its program"
    print(f"{result.format}: {result.out / result.file} ({result.how} from {result.from_artifact}{checked}); "
          f"inputs, outputs and a sample in {result.out}")
    return 0
