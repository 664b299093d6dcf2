"""Each candidate in a worker process: a segfault, a hang or a memory blow-up fails that candidate alone.

One worker process (spawned, never forked: forking a process that holds OpenMP or CUDA
state deadlocks) receives the search context once, rebuilds the model from its recipe,
then evaluates candidates one at a time as the search sends them. The search watches it:
a worker that dies, passes the candidate's deadline or its memory cap is killed, the
candidate is reported with the stage it was in and why, and the next candidate gets a
fresh worker. Peak memory measured in a worker is that worker's own.

Messages between the search and its own worker are pickled dataclasses of this package;
no user file is ever unpickled.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from inferforge.backends import get_backend
from inferforge.backends.base import Backend, BuildConfig
from inferforge.candidate import CandidateResult, Progress, SearchContext, Status, evaluate
from inferforge.errors import one_line
from inferforge.source import ModelSource, SourceKind

POLL_S = 0.2


@dataclass(frozen=True)
class SourceRecipe:
    """How a worker rebuilds the search's model: from its factory reference or file, else from the pickled
    module object the Python API was given. The spec and examples are the search's, not re-inferred."""

    source: ModelSource  # with module=None and no exported program: the rest is plain data
    pickled_model: bytes | None  # the user's nn.Module, for sources with no reference to import


def source_recipe(source: ModelSource) -> SourceRecipe | None:
    """The recipe for ``source``, or None when a worker could not rebuild it (an object that does not pickle)."""
    plain = replace(source, module=None, _exported=None)
    if source.kind is SourceKind.ONNX or source.factory_ref is not None or source.path is not None:
        return SourceRecipe(plain, None)
    try:
        return SourceRecipe(plain, pickle.dumps(source.module.model))
    except Exception:
        return None


def rebuild_source(recipe: SourceRecipe) -> ModelSource:
    from inferforge.capture import make_flat_module
    from inferforge.source import load_source, module_from_factory

    source = recipe.source
    names = source.spec.input_names
    if source.kind is SourceKind.ONNX:
        return replace(source)
    if source.factory_ref is not None:
        module = module_from_factory(source.factory_ref, names, source.call_by_keyword)
    elif recipe.pickled_model is not None:  # our own parent's bytes, made by source_recipe
        module = make_flat_module(pickle.loads(recipe.pickled_model), names, source.call_by_keyword)
    else:
        assert source.path is not None
        module = load_source(source.path, inputs=list(source.spec.inputs)).module
    rebuilt = replace(source, module=module, dim_ranges=dict(source.dim_ranges), notes=list(source.notes))
    rebuilt.flatten_rnn_weights()
    return rebuilt


def _worker_main(conn: Connection) -> None:
    """The worker's loop: context once, then (backend, config, deadline) -> results, until told to stop."""
    import logging

    warnings.simplefilter("once")  # a library warning repeated at every call is shown once
    # torch logs partial graphs and environment notices at warning level when a capture fails: the candidate's
    # one-line reason says what matters, --debug-free.
    logging.getLogger("torch").setLevel(logging.ERROR)
    recipe, context = conn.recv()
    context.source = rebuild_source(recipe)

    def report(key: str, stage: str) -> None:
        conn.send(("stage", key, stage))

    while True:
        message = conn.recv()
        if message is None:
            return
        if message[0] == "remeasure":
            conn.send(("done", _remeasure_or_reason(message[1], context)))
            continue
        _, backend_name, config, deadline = message
        try:
            results = evaluate(get_backend(backend_name), config, context, report, deadline)
        except BaseException as exc:  # evaluate records candidate failures itself; this is a bug, say so
            results = [CandidateResult(config, Status.FAILED, f"search worker error: {one_line(exc)}")]
        conn.send(("done", results))


def _remeasure_or_reason(chosen: list[CandidateResult], context: SearchContext) -> dict[str, np.ndarray] | str:
    """ranking.remeasure's times, or why it could not run (the search then keeps the first pass)."""
    from inferforge.ranking import remeasure

    try:
        return remeasure(chosen, context)
    except Exception as exc:
        return f"the re-measure failed: {one_line(exc)}"


@dataclass(frozen=True)
class _Stopped:
    """A request the worker did not answer: why, and how the candidate is marked."""

    reason: str
    status: Status = Status.FAILED


class InProcessEvaluator:
    """Candidates in the search's own process: no isolation (``SearchOptions.isolate=False``)."""

    def __init__(self, context: SearchContext, report: Progress) -> None:
        self.context = context
        self.report = report
        self.note = "candidates ran in the search's own process (isolation off)"

    def run(self, backend: Backend, config: BuildConfig, deadline: float | None) -> list[CandidateResult]:
        with warnings.catch_warnings():
            warnings.simplefilter("once")
            return evaluate(backend, config, self.context, self.report, deadline)

    def remeasure(self, chosen: list[CandidateResult], stop_at: float | None) -> dict[str, np.ndarray] | str:
        return _remeasure_or_reason(chosen, self.context)

    def close(self) -> None:
        pass


class IsolatedEvaluator:
    """Candidates in a spawned worker process, watched for crashes, deadlines and memory."""

    def __init__(self, context: SearchContext, recipe: SourceRecipe, report: Progress) -> None:
        self.context = context
        self._wire_context = replace(context, source=recipe.source)  # what pickles: no module
        self.recipe = recipe
        self.report = report
        self.memory_cap_mb = context.options.worker_memory_mb or _default_memory_cap_mb()
        self.note = f"each candidate ran in a worker process (memory cap {self.memory_cap_mb:.0f} MB)"
        self._process: Any = None
        self._conn: Connection | None = None

    def _start(self) -> tuple[Any, Connection]:
        if self._process is None or not self._process.is_alive():
            spawn = multiprocessing.get_context("spawn")
            parent, child = spawn.Pipe()
            process = spawn.Process(target=_worker_main, args=(child,), daemon=True, name="inferforge-candidate")
            with _main_not_reimported(self.recipe.pickled_model is None):
                process.start()
            child.close()
            parent.send((self.recipe, self._wire_context))
            self._process, self._conn = process, parent
        assert self._conn is not None
        return self._process, self._conn

    def run(self, backend: Backend, config: BuildConfig, deadline: float | None) -> list[CandidateResult]:
        """Evaluate in the worker; stop it at ``deadline`` (time.monotonic()), the candidate timeout or the
        memory cap, and on a crash report the stage it was in."""
        answer = self._ask(("evaluate", backend.name, config, deadline), deadline)
        if isinstance(answer, _Stopped):
            self._kill()
            return [CandidateResult(config, answer.status, answer.reason)]
        return list(answer)

    def remeasure(self, chosen: list[CandidateResult], stop_at: float | None) -> dict[str, np.ndarray] | str:
        """ranking.remeasure in the worker (the candidates' runners may run user code), under the same watch."""
        answer = self._ask(("remeasure", chosen), stop_at)
        if isinstance(answer, _Stopped):
            self._kill()
            return f"the re-measure was {answer.reason}"
        return answer

    def _ask(self, message: tuple[Any, ...], deadline: float | None) -> Any:
        """Send one request and wait for its answer, relaying progress; a _Stopped when the worker died or
        was stopped (deadline, candidate timeout, memory cap)."""
        process, conn = self._start()
        started = time.monotonic()
        limit = started + self.context.options.candidate_timeout_s
        stop_at = min(limit, deadline) if deadline is not None else limit
        stage = "starting"
        conn.send(message)
        peak = 0.0
        while True:
            try:
                ready = conn.poll(POLL_S)
                while ready:
                    received = conn.recv()
                    if received[0] == "done":
                        return received[1]
                    _, key, stage = received
                    self.report(key, stage)
                    ready = conn.poll(0)
            except (EOFError, OSError):
                pass
            if not process.is_alive():
                return _Stopped(f"the worker process died ({_exit_reason(process.exitcode)}) while {stage}: a "
                                "crash in the backend's native code; the search went on")
            peak = max(peak, _tree_rss_mb(process.pid))
            now = time.monotonic()
            if peak > self.memory_cap_mb:
                return _Stopped(f"stopped while {stage}: the worker used {peak:.0f} MB, over the cap of "
                                f"{self.memory_cap_mb:.0f} MB (SearchOptions.worker_memory_mb)")
            if now >= stop_at:
                if deadline is not None and stop_at == deadline:
                    return _Stopped(f"stopped while {stage} at the time budget's deadline, after "
                                    f"{now - started:.0f} s", Status.SKIPPED)
                return _Stopped(f"stopped while {stage}: still running after "
                                f"{self.context.options.candidate_timeout_s:g} s (a hang?)")

    def _kill(self) -> None:
        if self._process is not None:
            _kill_tree(self._process.pid)
            self._process.join(5)
        self._process = self._conn = None

    def close(self) -> None:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
                self._process.join(10)
            except (OSError, BrokenPipeError):
                pass
        self._kill()


@contextlib.contextmanager
def _main_not_reimported(hide: bool) -> Iterator[None]:
    """Spawned processes re-run the parent's main script unless it hides behind ``if __name__ == "__main__"``;
    a user's script that calls optimize() at top level would run again in every worker. The worker rebuilds
    the model from its reference, so it needs nothing from __main__: hide the script from spawn while it
    starts (not when the model object itself was pickled: its class may live in __main__)."""
    main = sys.modules.get("__main__")
    saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if hide and main is not None:
        for key in saved:
            setattr(main, key, None) if key == "__spec__" else delattr(main, key)
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def make_evaluator(context: SearchContext, report: Progress) -> InProcessEvaluator | IsolatedEvaluator:
    """Isolated when asked and possible (the model can be rebuilt in another process), else in-process."""
    if context.options.isolate:
        recipe = source_recipe(context.source)
        if recipe is not None:
            return IsolatedEvaluator(context, recipe, report)
        evaluator = InProcessEvaluator(context, report)
        evaluator.note = ("candidates ran in the search's own process: the model object does not pickle, so a "
                          "worker could not rebuild it (pass a 'file.py:factory' reference to isolate them)")
        return evaluator
    return InProcessEvaluator(context, report)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of the worker and its children (Inductor compiles in subprocesses), MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            continue


def _default_memory_cap_mb() -> float:
    import psutil

    return 0.8 * psutil.virtual_memory().total / 2**20

