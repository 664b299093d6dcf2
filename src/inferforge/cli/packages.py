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
        print(f"{manifest['model']}: chosen {manifest['chosen']} (objective {manifest['objective']})")
        for entry in manifest["artifacts"]:
            bench = entry.get("bench") or {}
            p50 = bench.get("latency", {}).get("p50_ms")
            figure = f": p50 {p50:.2f} ms" if p50 else ""
            print(f"  #{entry['rank']} {entry['key']}{figure}  [{integrity[entry['key']]}]")
        print("inputs: " + " ".join(f"{s['name']}:{s['dtype']}{s['shape']}" for s in manifest["spec"]["inputs"]))
    damaged = [key for key, state in integrity.items() if state != INTACT]
    if damaged:
        print(f"error: {len(damaged)} of {len(integrity)} artifacts in {args.package} do not match their checksums "
              f"({', '.join(damaged)}): rebuild the package or copy it again", file=sys.stderr)
        return 2
    return 0


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
