"""Candidates run in a worker process: a crash or a hang fails that candidate alone, and the time budget holds."""

from __future__ import annotations

import time

import pytest
from conftest import fast_options

import inferforge
from inferforge import search
from inferforge.backends import get_backend
from inferforge.backends.base import SEARCH_ORDER
from inferforge.candidate import Status
from inferforge.search import candidate_configs, protected


def test_a_candidate_that_crashes_its_worker_is_reported_and_the_search_goes_on() -> None:
    options = fast_options(backends=("eager", "onnxruntime"), precisions=("fp32",), isolate=True)
    result = inferforge.optimize("models:make_crashes_in_worker", options=options)
    ran = [c for c in result.search.candidates if c.status is not Status.SKIPPED]
    assert len(ran) == 2  # the first crash did not end the search
    for candidate in ran:
        assert candidate.status is Status.FAILED
        assert "worker process died (signal SIGSEGV)" in candidate.reason
    assert result.best is None


def test_a_hung_candidate_is_stopped_at_its_timeout() -> None:
    options = fast_options(backends=("eager",), precisions=("fp32",), isolate=True, candidate_timeout_s=8)
    started = time.monotonic()
    result = inferforge.optimize("models:make_hangs_in_worker", options=options)
    assert time.monotonic() - started < 120  # not the hour the model sleeps
    (candidate,) = result.search.candidates
    assert candidate.status is Status.FAILED and "still running after 8 s" in candidate.reason


def test_time_budget_stops_a_running_candidate_and_skips_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    # eager fp32 is protected (always started) but hangs in the worker: the deadline stops it; torchscript is
    # then not started. The protected window is shortened so that the test takes seconds, not a minute.
    monkeypatch.setattr(search, "PROTECTED_WINDOW_S", 2.0)
    options = fast_options(backends=("eager", "torchscript"), precisions=("fp32",), isolate=True,
                           time_budget_s=15)
    started = time.monotonic()
    result = inferforge.optimize("models:make_hangs_in_worker", options=options)
    elapsed = time.monotonic() - started
    by_key = {c.key: c for c in result.search.candidates}
    assert by_key["eager-fp32"].status is Status.SKIPPED and "deadline" in by_key["eager-fp32"].reason
    assert by_key["torchscript-fp32"].status is Status.SKIPPED
    assert "time budget of 15 s was spent" in by_key["torchscript-fp32"].reason
    assert elapsed < 45  # the budget, plus stopping the worker; not the candidate's 1800 s timeout


def test_search_order_puts_the_reference_and_fallback_first_and_slow_builds_last() -> None:
    pairs = candidate_configs(fast_options(device="cuda", thorough=True))
    keys = [config.key() for _, config in pairs]
    guarded = [config.key() for backend, config in pairs if protected(backend, config)]
    assert keys[0] == "eager-fp32-cuda"
    assert {"eager-fp32", "onnxruntime-fp32"} <= set(guarded)  # the CPU fallbacks of a GPU package
    assert keys[: len(guarded)] == guarded
    orders = [backend.search_order(config) for backend, config in pairs]
    assert orders == sorted(orders)
    slow = {config.key() for backend, config in pairs if backend.search_order(config) == SEARCH_ORDER["slow"]}
    assert {"torchao-fp8-cuda", "inductor-fp16-cuda-graphs-mode-max-autotune-no-cudagraphs-cuda"} <= slow
    assert get_backend("eager").search_order(pairs[0][1]) == 0
