from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from inferforge.bench import BenchSettings  # noqa: E402
from inferforge.search import SearchOptions  # noqa: E402

# Enough runs to exercise the code paths, not to produce figures (figures live in benchmarks/).
FAST_BENCH = BenchSettings(batch_sizes=(1, 4), warmup_runs=1, min_runs=3, max_runs=50, min_seconds=0.0,
                           max_seconds=0.5, sweep_min_runs=2, sweep_seconds=0.05)


def fast_options(**kwargs: object) -> SearchOptions:
    kwargs.setdefault("threads", 2)
    return SearchOptions(bench=FAST_BENCH, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def models_file() -> str:
    return str(Path(__file__).parent / "models.py")
