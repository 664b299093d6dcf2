"""Where a packaged model's time goes: call stages, top operators, and a measured roofline.

``inferforge profile PACKAGE`` answers "why is it this slow?" in three views, one module each:
``stages`` (the call cut at its stage boundaries), the runner's own ``profile_operators`` (each runtime's
profiler, through the backend contract; see ``inferforge.operator_profile``) and ``roofline``. ``report``
puts them together for one loaded runner; ``text`` prints it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inferforge.profile.report import ProfileReport, profile_package
from inferforge.profile.text import format_report

__all__ = ["ProfileReport", "format_report", "profile_command", "profile_package"]


def profile_command(args: argparse.Namespace) -> int:
    """``inferforge profile PACKAGE``: print the breakdown (or JSON with ``--json``); the trace goes to
    ``--trace``, by default ``<package name>-profile-trace.json`` in the current directory."""
    trace = args.trace or Path.cwd() / f"{Path(args.package).name}-profile-trace.json"
    report = profile_package(args.package, batch_size=args.batch_size, runs=args.runs, trace_path=trace,
                             threads=args.threads)
    print(json.dumps(report.to_json(), indent=2, default=str) if args.json else format_report(report))
    return 0
