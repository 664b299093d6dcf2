from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Tests build afresh: a shared artifact cache would let one test's builds stand in for another's.
# The cache's own tests pass a cache_dir explicitly.
os.environ["INFERFORGE_CACHE"] = "off"

from inferforge.bench import BenchSettings  # noqa: E402
from inferforge.options import SearchOptions  # noqa: E402
from inferforge.validate import AccuracyBudget  # noqa: E402

# Enough runs to exercise the code paths, not to produce figures (figures live in benchmarks/).
FAST_BENCH = BenchSettings(batch_sizes=(1, 4), warmup_runs=1, min_runs=3, max_runs=50, min_seconds=0.0,
                           max_seconds=0.5, sweep_min_runs=2, sweep_seconds=0.05, confirm_min_rounds=2,
                           confirm_max_rounds=3, confirm_seconds=0.0, confirm_block_seconds=0.001,
                           confirm_settle_seconds=0.0)


# For tests that compare loaded or served outputs at 1e-5: only FP32 candidates meet it, so no INT8 or bf16
# candidate is picked (dynamic INT8 also answers a row differently when other rows share its batch).
FP32_EXACT = AccuracyBudget(min_cosine=0.999999)


def fast_options(**kwargs: object) -> SearchOptions:
    """Quick searches in this process: the worker isolation has tests of its own (test_isolation.py), and a
    worker per search would cost every test a torch import."""
    kwargs.setdefault("threads", 2)
    kwargs.setdefault("tune", False)
    kwargs.setdefault("isolate", False)
    kwargs.setdefault("bench", FAST_BENCH)
    return SearchOptions(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def models_file() -> str:
    return str(Path(__file__).parent / "models.py")


@pytest.fixture(scope="session")
def mlp_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real package (TinyMLP: x float32[B,16] -> output float32[B,5]) for the serving tests."""
    import inferforge

    out = tmp_path_factory.mktemp("serve") / "mlp.inferforge"
    inferforge.optimize("models:make_mlp", out=out, name="mlp",
                        options=fast_options(backends=("eager", "onnxruntime"), precisions=("fp32",),
                                             budget=FP32_EXACT))
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip, saying why, where torch sees no CUDA device (CI has none)."""
    from inferforge.environment import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason:
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
