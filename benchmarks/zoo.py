"""The model zoo (tests/zoo.py) through inferforge's default search: what each model's package picks, and why
every other candidate failed, was rejected or was skipped.

For each zoo model: ``optimize`` with the default candidate set for the target (every backend, every
precision; on cuda the CPU fallbacks too), no thread tuning, no artifact cache, candidates isolated in a
worker process as by default, and ``--time-budget`` seconds per model. Models with a data-dependent branch
are validated on data that reaches one side of it only (as in tests/test_zoo.py), so the table shows what
the search's own probe inputs caught. The package's pick is then loaded back (``trust_source=True``) and
compared with the factory's eager module on fresh inputs: batch 1 and 3, both sides of any branch, every
dynamic dim at other sizes.

    python benchmarks/zoo.py [--target cpu|cuda] [--out zoo-cpu.md] [--models sign_branch,fft]
                             [--time-budget 300] [--quick]

It writes the Markdown table (for docs/benchmarks.md) to --out and the raw results beside it (.json).
On a 2-core CPU the whole zoo takes long (Inductor, AOTInductor, OpenVINO and INT8 builds for each of 19
models): run a subset with --models, or use the GPU machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ZOO_PATH = ROOT / "tests" / "zoo.py"
FRESH_SEEDS = (11, 12)  # one odd, one even: both sides of any branch (tests/zoo.py's convention)


def import_zoo() -> Any:
    """tests/zoo.py by path (tests/ is not a package)."""
    if "inferforge_zoo" in sys.modules:
        return sys.modules["inferforge_zoo"]
    spec = importlib.util.spec_from_file_location("inferforge_zoo", ZOO_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    import torch

    from inferforge.environment import usable_cores

    cpu = platform.processor() or platform.machine()
    cores = usable_cores()
    gpu = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
           else "no CUDA GPU")
    return (f"{platform.platform()}, {cpu}, {cores} usable cores; Python {platform.python_version()}, "
            f"torch {torch.__version__}; GPU: {gpu}")


def eager_outputs(module: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    from inferforge.capture import flatten_outputs

    with torch.inference_mode():
        result = module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
    return {name: t.detach().cpu().numpy() for name, t in flatten_outputs(result)}


def check_pick(model: Any, package: Path) -> tuple[str, str]:
    """(the artifact load took, 'ok (N inputs)' or the first fresh input where it differs from eager)."""
    import inferforge

    runner = inferforge.load(package, trust_source=True)
    manifest = json.loads((package / "inferforge.json").read_text())
    key = runner.selection.key
    precision = next(e["config"]["precision"] for e in manifest["artifacts"] if e["key"] == key)
    module, _ = model.build()
    cases = [(f"batch {b}, seed {s}", model.fresh_inputs(b, s)) for b in (1, 3) for s in FRESH_SEEDS]
    cases += [(f"{dim}={size}, seed {s}", model.fresh_inputs(2, s, **{dim: size}))
              for dim, sizes in model.dynamic.items() for size in sizes for s in FRESH_SEEDS]
    for label, inputs in cases:
        try:
            problem = import_zoo().mismatch(runner(inputs), eager_outputs(module, inputs), model.canonical, precision)
        except Exception as exc:
            problem = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if problem:
            return key, f"WRONG at {label}: {problem}"
    return key, f"ok ({len(cases)} inputs)"


def run_model(name: str, model: Any, target: str, time_budget: float | None, quick: bool) -> dict[str, Any]:
    import inferforge
    from inferforge.bench import BenchSettings
    from inferforge.data import Dataset
    from inferforge.options import SearchOptions

    bench = (BenchSettings(batch_sizes=(1,), warmup_runs=1, min_runs=3, max_runs=20, min_seconds=0.0,
                           max_seconds=0.3, sweep_min_runs=1, sweep_seconds=0.05, confirm_min_rounds=3,
                           confirm_max_rounds=3, confirm_seconds=0.0, confirm_block_seconds=0.001, confirm_settle_seconds=0.0) if quick
             else BenchSettings())
    options = SearchOptions(device=target, tune=False, cache_dir=None, time_budget_s=time_budget, bench=bench)
    data = None
    if model.one_sided_data is not None:
        data = Dataset(model.one_sided_data(), None, f"zoo {name}: one side of its branch only")

    def progress(key: str, stage: str) -> None:
        if stage in ("passed", "rejected", "failed", "skipped"):
            print(f"  {name}: {key} {stage}", file=sys.stderr, flush=True)

    row: dict[str, Any] = {"model": name, "target": target, "note": model.note}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as scratch:
        out = Path(scratch) / "pkg"
        try:
            result = inferforge.optimize(model.ref, inputs=model.inputs, data=data, options=options, out=out,
                                         name=name, progress=progress)
        except Exception as exc:  # the model itself was refused (spec, data): a row that says so
            row.update(error=f"optimize raised {type(exc).__name__}: {exc}", seconds=time.perf_counter() - started)
            return row
        row["seconds"] = time.perf_counter() - started
        row["candidates"] = [{"key": c.key, "status": c.status.value, "reason": c.reason,
                              "device": c.config.device, "precision": c.config.precision.value}
                             for c in result.search.candidates]
        row["pick"] = result.best.key if result.best is not None else None
        if result.package is not None:
            try:
                row["loaded"], row["fresh_check"] = check_pick(model, result.package)
            except Exception as exc:
                row["loaded"], row["fresh_check"] = None, f"load failed: {type(exc).__name__}: {exc}"
        else:
            row["fresh_check"] = "no package (nothing passed)"
    return row


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], command: str, target: str, time_budget: float | None, quick: bool) -> str:
    lines = [
        f"Zoo on `{target}`: `{command}`, {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Machine: {machine()}.",
        "",
        "Default candidate set for the target, no thread tuning, no artifact cache, "
        + (f"time budget {time_budget:g} s per model" if time_budget else "no time budget")
        + (", short timing runs (--quick)" if quick else "")
        + ". Branchy models are validated on one-sided data. \"Fresh inputs\": the loaded pick against the "
          "factory's eager module on batch 1 and 3, both sides of any branch and other sizes of every dynamic dim.",
        "",
        "| model | target | pick | passed / total | fresh inputs vs eager | search s | failed, rejected, skipped: why |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['target']} | - | - | - | {row['seconds']:.0f} | "
                         f"{_cell(row['error'])} |")
            continue
        candidates = row["candidates"]
        passed = sum(c["status"] == "passed" for c in candidates)
        others = "<br>".join(f"**{c['key']}** {c['status']}: {_cell(c['reason'])}" for c in candidates
                             if c["status"] != "passed")
        pick = row["pick"] or "none"
        if row.get("loaded") and row["loaded"] != row["pick"]:
            pick += f" (loaded {row['loaded']})"
        lines.append(f"| {row['model']} | {row['target']} | {pick} | {passed} / {len(candidates)} | "
                     f"{_cell(row['fresh_check'])} | {row['seconds']:.0f} | {others or '-'} |")
    lines += ["", "What each model breaks:", ""]
    lines += [f"- `{row['model']}`: {row['note']}" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    zoo = import_zoo()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: zoo-TARGET.md)")
    parser.add_argument("--models", default="", help=f"comma-separated subset of: {', '.join(zoo.ZOO)}")
    parser.add_argument("--time-budget", type=float, default=300.0,
                        help="seconds of search per model (SearchOptions.time_budget_s); 0: no limit")
    parser.add_argument("--quick", action="store_true", help="short timing runs (checks the table, not speed)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(zoo.ZOO)
    unknown = [n for n in names if n not in zoo.ZOO]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; the zoo has {', '.join(zoo.ZOO)}")
    if args.target == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--target cuda needs a CUDA GPU (torch sees none)")
    out = args.out or Path(f"zoo-{args.target}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    budget = args.time_budget or None
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/zoo.py", *sys.argv[1:]])
    rows = []
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        row = run_model(name, zoo.ZOO[name], args.target, budget, args.quick)
        print(f"{name}: pick {row.get('pick')}, {row.get('fresh_check', row.get('error'))}, "
              f"{row['seconds']:.0f} s", file=sys.stderr, flush=True)
        rows.append(row)
        # Written after every model, so an interrupted run keeps what it measured.
        out.write_text(markdown(rows, command, args.target, budget, args.quick))
        out.with_suffix(".json").write_text(json.dumps(
            {"command": command, "machine": machine(), "rows": rows}, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":  # candidates run in spawned worker processes, which import this file again
    main()
