"""One profile of a packaged model: its stages, top operators and roofline, from one loaded runner."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferforge.operator_profile import OperatorProfile
from inferforge.profile.roofline import Roofline, roofline_of
from inferforge.profile.stages import StageBreakdown, measure_stages


@dataclass(frozen=True)
class ProfileReport:
    package: str
    artifact: str
    backend: str
    precision: str
    device: str
    batch_size: int
    threads: int
    stages: StageBreakdown
    operators: OperatorProfile
    roofline: Roofline

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def profile_package(path: str | Path, batch_size: int = 1, runs: int = 50, trace_path: Path | None = None,
                    threads: int | None = None) -> ProfileReport:
    """Load a package (the artifact ``inferforge.load`` picks) and profile it on generated inputs of
    ``batch_size``. ``trace_path``: where the Chrome trace goes (None: none is written). Raises
    InferforgeError (from ``load``) when the package is missing or cannot run here."""
    from inferforge.data import generate_inputs
    from inferforge.package import load

    runner = load(path, threads=threads)
    inputs = generate_inputs(runner.spec, batch_size)
    stages = measure_stages(runner, inputs, runs)
    operators = runner.profile_operators(inputs, runs, trace_path)
    used_threads = runner.threads()
    outputs = runner(inputs)
    roofline = roofline_of(Path(path), runner, inputs, outputs, stages.median_ms("compute"), used_threads)
    key = getattr(getattr(runner, "selection", None), "key", runner.artifact.config.key())
    return ProfileReport(str(path), key, runner.artifact.config.backend, runner.artifact.config.precision.value,
                         runner.device, batch_size, used_threads, stages, operators, roofline)
