"""The model zoo end to end (tests/zoo.py): optimize -> package -> load, checked on inputs the user never gave.

For every zoo model: a package is written; it keeps a CPU FP32 artifact (the fallback); what ``load`` picks
matches the factory's eager module on fresh inputs at batch 1 and 3, at other sizes of every dynamic dim,
and on both sides of any data-dependent branch, although branchy models are validated on data that reaches
one side only; every packaged artifact matches on both sides too; and, in one subprocess at the end, every
package written here loads in a fresh process and answers as eager does.

The candidate set is restricted for time: ``ZOO_BACKENDS`` (the environment variable INFERFORGE_ZOO_BACKENDS,
comma-separated, overrides it), FP32 only on the CPU, and the source backend without its ``compile=True`` variant
(torch.compile with graph breaks recompiles per probe shape: 15-20 s a model on 2 cores; set
INFERFORGE_ZOO_COMPILE=1 to keep it). Candidates run in this process (no worker: each worker start imports
torch again, about 7 s a model). benchmarks/zoo.py runs the default set, isolated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from zoo import ZOO, ZOO_FILE, ZooModel, mismatch

import inferforge
from inferforge.backends.base import BuildConfig
from inferforge.bench import BenchSettings
from inferforge.capture import flatten_outputs
from inferforge.data import Dataset
from inferforge.manifest import MANIFEST
from inferforge.options import SearchOptions

ZOO_BACKENDS = tuple(os.environ.get("INFERFORGE_ZOO_BACKENDS", "eager,torchscript,onnxruntime,source").split(","))
GPU_BACKENDS = ("eager", "inductor", "onnxruntime", "source", "torchscript")
KEEP_COMPILE = os.environ.get("INFERFORGE_ZOO_COMPILE") == "1"
# Timing only has to run: one batch size, a couple of calls.
ZOO_BENCH = BenchSettings(batch_sizes=(1,), warmup_runs=1, min_runs=2, max_runs=5, min_seconds=0.0,
                          max_seconds=0.2, sweep_min_runs=1, sweep_seconds=0.01, confirm_min_rounds=2,
                          confirm_max_rounds=2, confirm_seconds=0.0, confirm_block_seconds=0.001,
                          confirm_settle_seconds=0.0)
FRESH_BATCHES = (1, 3)
FRESH_SEEDS = (11, 12)  # one odd, one even: zoo.py's convention for reaching both sides of a branch
# FP32 picks: what load() gives must match eager this closely (atol scales with the output's magnitude).
# Other precisions (GPU picks): relative L2 error per output, as loose as the search's own probes.

# name (or name@cuda) -> (package, whether loading it needs trust_source), filled by the tests below and
# loaded in one fresh process at the end.
WRITTEN: dict[str, tuple[Path, bool]] = {}


def optimize_zoo(name: str, model: ZooModel, out: Path, **options: Any) -> inferforge.api.OptimizeResult:
    """Optimize on one-sided data where the model has a branch (the search must catch a one-sided artifact
    by itself), else on data generated from the spec."""
    data = None
    if model.one_sided_data is not None:
        data = Dataset(model.one_sided_data(), None, f"zoo {name}: one side of its branch only")
    options.setdefault("backends", ZOO_BACKENDS)
    options.setdefault("precisions", ("fp32",))
    return inferforge.optimize(model.ref, inputs=model.inputs, data=data, out=out, name=name,
                               options=SearchOptions(tune=False, cache_dir=None, threads=2, bench=ZOO_BENCH,
                                                     isolate=False, **options))


@pytest.fixture(scope="module", autouse=True)
def _source_without_compile() -> Iterator[None]:
    """The source backend's plain candidates only (see the module's docstring)."""
    from inferforge.backends.python_source import PythonSourceBackend

    configs = PythonSourceBackend.configs

    def plain(self: PythonSourceBackend, device: str) -> list[BuildConfig]:
        return [c for c in configs(self, device) if not c.options.compile]

    with pytest.MonkeyPatch.context() as patch:
        if not KEEP_COMPILE:
            patch.setattr(PythonSourceBackend, "configs", plain)
        yield


def load(package: Path, *, trust: bool, **kwargs: Any) -> Any:
    """inferforge.load; a package that may hold a ``source`` artifact needs consent to run the model's code."""
    if trust:
        kwargs["trust_source"] = True
    return inferforge.load(package, **kwargs)


class Eager:
    """The factory's own module, run as the user would: keyword inputs, nested outputs flattened by path."""

    def __init__(self, model: ZooModel) -> None:
        self.module, _ = model.build()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = self.module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
        return {name: t.detach().cpu().numpy() for name, t in flatten_outputs(result)}


def search_summary(result: inferforge.api.OptimizeResult) -> str:
    return "; ".join(f"{c.key}: {c.status.value}" + (f" ({c.reason})" if c.reason else "")
                     for c in result.search.candidates)


def fresh_cases(model: ZooModel) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Batch 1 and 3 at the example's dims, then batch 2 at every other size of every dynamic dim; two seeds
    each (both sides of any branch)."""
    cases = [(f"batch {b}, seed {s}", model.fresh_inputs(b, s)) for b in FRESH_BATCHES for s in FRESH_SEEDS]
    cases += [(f"{dim}={size}, seed {s}", model.fresh_inputs(2, s, **{dim: size}))
              for dim, sizes in model.dynamic.items() for size in sizes for s in FRESH_SEEDS]
    return cases


def check_package(name: str, model: ZooModel, result: inferforge.api.OptimizeResult, out: Path,
                  trust: bool) -> None:
    summary = search_summary(result)
    assert result.package == out and (out / MANIFEST).is_file(), f"{name}: no package was written. {summary}"
    manifest = json.loads((out / MANIFEST).read_text())
    entries = {e["key"]: e for e in manifest["artifacts"]}
    fallbacks = [k for k, e in entries.items() if e["config"]["device"] == "cpu" and e["config"]["precision"] == "fp32"]
    assert fallbacks, f"{name}: no CPU FP32 artifact among {list(entries)}. {summary}"
    spec_outputs = [o["name"] for o in manifest["spec"]["outputs"]]

    eager = Eager(model)
    runner = load(out, trust=trust)
    picked = runner.selection.key
    assert picked == manifest["chosen"], f"{name}: load took {picked}, the package chose {manifest['chosen']}"
    precision = entries[picked]["config"]["precision"]
    print(f"ZOO {name}: pick {picked}; packaged {list(entries)}; {summary}")  # shown with pytest -rA
    sides = set()
    for label, inputs in fresh_cases(model):
        want = eager(inputs)
        assert list(want) == spec_outputs, f"{name}: eager's outputs {list(want)}, the manifest's {spec_outputs}"
        problem = mismatch(runner(inputs), want, model.canonical, precision)
        assert problem is None, f"{name}: the pick {picked} on fresh inputs ({label}): {problem}. {summary}"
        if model.branch is not None:
            sides.add(model.branch(inputs))
    if model.branch is not None:
        assert len(sides) >= 2, f"{name}: the fresh inputs reached only {sides} (zoo.py's fresh_inputs is wrong)"

    # Every packaged artifact (load takes a fallback where the pick cannot run), on both sides at batch 3.
    for key, entry in entries.items():
        if key == picked or (entry["config"]["device"] != "cpu" and not torch.cuda.is_available()):
            continue
        other = load(out, trust=trust, artifact=key)
        for seed in FRESH_SEEDS:
            inputs = model.fresh_inputs(3, seed)
            problem = mismatch(other(inputs), eager(inputs), model.canonical, entry["config"]["precision"])
            assert problem is None, f"{name}: packaged artifact {key}, seed {seed}: {problem}. {summary}"


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_on_cpu(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model = ZOO[name]
    out = tmp_path_factory.mktemp(f"zoo-{name}") / "pkg"
    result = optimize_zoo(name, model, out)
    trust = "source" in ZOO_BACKENDS
    check_package(name, model, result, out, trust)
    WRITTEN[name] = (out, trust)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_on_cuda(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model = ZOO[name]
    out = tmp_path_factory.mktemp(f"zoo-{name}-cuda") / "pkg"
    # Every precision: on a GPU the FP16/BF16/TF32 candidates are the point (compared with eager by relative L2).
    result = optimize_zoo(name, model, out, device="cuda", backends=GPU_BACKENDS, precisions=())
    check_package(name, model, result, out, trust=True)
    WRITTEN[f"{name}@cuda"] = (out, True)


_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import inferforge

    folder, zoo_file = sys.argv[1], sys.argv[2]
    for case, (package, trust) in json.loads(sys.argv[3]).items():
        inputs = dict(np.load(f"{folder}/{case}.in.npz"))
        runner = inferforge.load(package, **({"trust_source": True} if trust else {}))
        np.savez(f"{folder}/{case}.out.npz", **{k: np.asarray(v) for k, v in runner(inputs).items()})
        print(case, runner.selection.key, flush=True)
    leaked = sorted(m.__name__ for m in list(sys.modules.values()) if getattr(m, "__file__", None) == zoo_file)
    assert not leaked, f"the packages imported tests/zoo.py itself: {leaked}"
""")


def test_zoo_packages_load_in_a_fresh_process(tmp_path: Path) -> None:
    """One interpreter for every package written above (each start imports torch, seconds): nothing of this
    process (the zoo module, the search's state) is there, and it must not import tests/zoo.py itself."""
    if not WRITTEN:
        pytest.skip("no zoo package was written in this run")
    cases = {}
    for case in WRITTEN:
        model = ZOO[case.split("@")[0]]
        inputs: dict[str, Any] = model.fresh_inputs(2, 21)  # odd seed: the side seed 0 (the examples) missed
        np.savez(tmp_path / f"{case}.in.npz", **inputs)
        cases[case] = (model, inputs)
    packages = {case: (str(package), trust) for case, (package, trust) in WRITTEN.items()}
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(tmp_path), ZOO_FILE, json.dumps(packages)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the fresh process failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    picks = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.strip())
    problems = []
    for case, (model, inputs) in cases.items():
        manifest = json.loads((WRITTEN[case][0] / MANIFEST).read_text())
        precision = next(e["config"]["precision"] for e in manifest["artifacts"] if e["key"] == picks[case])
        problem = mismatch(dict(np.load(tmp_path / f"{case}.out.npz")), Eager(model)(inputs), model.canonical,
                           precision)
        if problem:
            problems.append(f"{case} ({picks[case]}): {problem}")
    assert not problems, "in a fresh process: " + "; ".join(problems)
