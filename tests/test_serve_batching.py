"""Dynamic batching under real concurrency: batches fill, the queue is bounded, failures stay local."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from serve_helpers import hold, hold_one_request, infer_json, post_rows, request, serving, wait_until


def test_queued_requests_fill_one_batch_and_each_gets_its_own_rows(mlp_package: Path) -> None:
    with serving(mlp_package, batching={"max_batch_size": 16}) as server:
        batcher = server.server.repository.serving["mlp"].batcher
        with ThreadPoolExecutor(16) as pool:
            held, first = hold_one_request(server, pool)
            # 14 requests of 1 row (distinct values) queue behind the running batch
            rest = [pool.submit(post_rows, server, 1, float(i)) for i in range(1, 15)]
            wait_until(lambda: batcher.queued_rows == 14, what="14 rows queued")
            held.release.set()
            answers = [first.result()] + [f.result() for f in rest]
        assert held.batches == [1, 14]  # the second batch took everything that had queued
        reference = server.server.repository.serving["mlp"].instances[0]
        for i, (status, _, payload) in enumerate(answers):
            assert status == 200
            out = json.loads(payload)["outputs"][0]
            want = reference.run({"x": np.full((1, 16), float(i), np.float32)})["output"]
            np.testing.assert_allclose(out["data"], want.reshape(-1), rtol=1e-5, atol=1e-5)


def test_max_batch_size_counts_samples_not_requests(mlp_package: Path) -> None:
    with serving(mlp_package, batching={"max_batch_size": 8}) as server:
        batcher = server.server.repository.serving["mlp"].batcher
        with ThreadPoolExecutor(4) as pool:
            held, first = hold_one_request(server, pool)
            big = [pool.submit(post_rows, server, 5) for _ in range(3)]  # 15 rows: at most one 5-row request per batch
            wait_until(lambda: batcher.queued_rows == 15, what="15 rows queued")
            held.release.set()
            assert all(f.result()[0] == 200 for f in [first, *big])
        assert held.batches == [1, 5, 5, 5]


def test_full_queue_answers_503_with_retry_after_at_once(mlp_package: Path) -> None:
    with serving(mlp_package, batching={"max_batch_size": 4, "max_queue_size": 3}) as server:
        batcher = server.server.repository.serving["mlp"].batcher
        with ThreadPoolExecutor(8) as pool:
            held, running = hold_one_request(server, pool)
            queued = [pool.submit(post_rows, server, 1) for _ in range(3)]
            wait_until(lambda: batcher.queued_rows == 3, what="a full queue")
            status, headers, payload = post_rows(server)
            assert status == 503 and "Retry-After" in headers and b"queue is full" in payload
            held.release.set()
            assert [f.result()[0] for f in [running, *queued]] == [200, 200, 200, 200]
        assert post_rows(server)[0] == 200


def test_a_failing_batch_fails_only_its_requests(mlp_package: Path) -> None:
    with serving(mlp_package) as server:
        instance = server.server.repository.serving["mlp"].instances[0]
        original = instance.run
        calls = []

        def flaky(inputs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return original(inputs)

        instance.run = flaky  # type: ignore[method-assign]
        status, _, payload = post_rows(server)
        assert status == 500 and b"illegal memory access" in payload
        assert post_rows(server)[0] == 200
        assert request(server, "GET", "/v2/health/ready")[0] == 200


def test_request_timeout_answers_504(mlp_package: Path) -> None:
    with serving(mlp_package) as server, ThreadPoolExecutor(2) as pool:
        held, running = hold_one_request(server, pool)
        body = {**infer_json(np.ones((1, 16), np.float32)), "parameters": {"timeout": 50_000}}  # 50 ms, in µs
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", body)
        assert status == 504 and b"timed out" in payload
        held.release.set()
        assert running.result()[0] == 200


def test_graceful_shutdown_finishes_requests_in_flight(mlp_package: Path) -> None:
    with serving(mlp_package) as server:
        with ThreadPoolExecutor(2) as pool:
            held, in_flight = hold_one_request(server, pool, rows=2)
            stopping = pool.submit(server.call, server.server.stop())
            wait_until(lambda: server.server.endpoints.draining, what="draining")
            assert not stopping.done()  # waits for the request still running
            held.release.set()
            status, _, payload = in_flight.result()
            stopping.result()
        assert status == 200 and len(json.loads(payload)["outputs"][0]["data"]) == 10


def test_process_instances_serve_the_same_answers(mlp_package: Path) -> None:
    with serving(mlp_package, batching={"instances": 2, "instance_kind": "process"}) as server:
        x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", infer_json(x))
        import inferforge

        want = inferforge.load(mlp_package)({"x": x})["output"]
        assert status == 200
        np.testing.assert_allclose(json.loads(payload)["outputs"][0]["data"], want.reshape(-1), rtol=1e-5, atol=1e-5)


def test_batches_are_padded_to_a_static_size_and_sliced_back(mlp_package: Path) -> None:
    with serving(mlp_package, batching={"max_batch_size": 8, "static_batch_sizes": (4, 8)}) as server:
        held = hold(server)
        held.release.set()
        x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", infer_json(x))
        import inferforge

        want = inferforge.load(mlp_package)({"x": x})["output"]
        assert status == 200 and held.batches == [4]  # 3 rows ran as the built size 4
        out = json.loads(payload)["outputs"][0]
        assert out["shape"] == [3, 5]
        np.testing.assert_allclose(out["data"], want.reshape(-1), rtol=1e-5, atol=1e-5)


def test_concurrent_clients_form_batches(mlp_package: Path) -> None:
    """16 closed-loop clients against a model that takes 5 ms per batch: requests must share batches."""
    with serving(mlp_package, batching={"max_batch_size": 16}) as server:
        model = server.server.repository.serving["mlp"]
        instance = model.instances[0]
        original = instance.run

        def slow(inputs):  # stands in for a model whose compute dominates the request
            import time

            time.sleep(0.005)
            return original(inputs)

        instance.run = slow  # type: ignore[method-assign]
        before = model.stats.execution_count
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: post_rows(server)[0], range(320)))
        assert statuses == [200] * 320
        batches = model.stats.execution_count - before
        assert batches <= 320 / 3, f"{batches} batches for 320 requests: batching did not form batches"


def test_a_request_abandoned_in_the_queue_leaves_it_at_once_and_never_runs() -> None:
    """A client that hangs up, or a request whose deadline passes while queued, must not keep its rows
    against the queue limit nor run later for nobody (issue 17)."""
    import asyncio
    import threading
    from concurrent.futures import Future

    from inferforge.serve.batcher import BatchingConfig, DynamicBatcher

    release = threading.Event()
    ran: list[int] = []

    class Slow:
        def submit(self, inputs: dict) -> Future:
            done: Future = Future()

            def work() -> None:
                release.wait(5)
                ran.append(len(inputs["x"]))
                done.set_result({"y": inputs["x"]})

            threading.Thread(target=work, daemon=True).start()
            return done

        def close(self) -> None:
            pass

    async def scenario() -> None:
        batcher = DynamicBatcher([Slow()], BatchingConfig(max_batch_size=4, max_queue_size=8))
        batcher.start()
        first = asyncio.create_task(batcher.submit({"x": np.ones((1, 2))}, 1))
        await asyncio.sleep(0.05)  # the first runs (and blocks the only instance)
        waiting = [asyncio.create_task(batcher.submit({"x": np.ones((3, 2))}, 3)) for _ in range(2)]
        timed_out = asyncio.create_task(batcher.submit({"x": np.ones((2, 2))}, 2, timeout_s=0.05))
        await asyncio.sleep(0.02)
        assert batcher.queued_rows == 8
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert batcher.queued_rows == 2  # the hung-up requests left the queue at once
        await asyncio.gather(timed_out, return_exceptions=True)
        assert batcher.queued_rows == 0
        release.set()
        await first
        await batcher.close(drain_timeout_s=1)
        assert ran == [1]  # nothing ran for the requests nobody waited for

    asyncio.run(scenario())
