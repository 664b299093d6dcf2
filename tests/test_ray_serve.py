"""inferforge serve --ray: a local Ray cluster on loopback, the unmodified tritonclient, replicas killed and added.

One cluster for the module; each test deploys its own applications and removes them.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import inferforge
from inferforge.cli import main
from inferforge.errors import PackageError
from inferforge.serve.ray_config import RayScaling, RayServeConfig
from inferforge.serve.ray_serve import (
    RayDeployment,
    _materialize,
    _package_reference,
    _verify_every_artifact,
    start,
)

MODEL = "mlp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, int]]:
    import ray
    from ray import serve

    ports = {"http": _free_port(), "metrics": _free_port()}
    ray.init(num_cpus=2, namespace="inferforge", log_to_driver=False, include_dashboard=False,
             _metrics_export_port=ports["metrics"], _system_config={"metrics_report_interval_ms": 1000})
    yield ports
    serve.shutdown()
    ray.shutdown()


def _deploy(ray_cluster: dict[str, int], package: Path, **scaling: object) -> RayDeployment:
    transfer = str(scaling.pop("transfer", "object-store"))
    batching = str(scaling.pop("batching", "inferforge"))
    config = RayServeConfig(packages={MODEL: package}, port=ray_cluster["http"], transfer=transfer,
                            batching=batching, scaling=RayScaling(cpus_per_replica=0.5, **scaling))  # type: ignore[arg-type]
    return start(config)


class Load:
    """Client threads sending tritonclient HTTP requests until stopped; records replicas and failures."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.replicas: Counter[str] = Counter()
        self.failures: list[str] = []
        self.outputs: list[np.ndarray] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, seed: int) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{self.port}", network_timeout=30)
        x = np.random.default_rng(seed).standard_normal((2, 16)).astype(np.float32)
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        while not self._stop.is_set():
            try:
                result = client.infer(MODEL, [tensor])
                self.replicas[result.get_response()["parameters"]["replica"]] += 1
                if seed == 0 and len(self.outputs) < 1:
                    self.outputs.append(result.as_numpy("output"))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                self.failures.append(f"{type(exc).__name__}: {exc}"[:200])

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def wait_for(self, condition: object, timeout: float, what: str) -> None:
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.5)
        raise AssertionError(f"{what} within {timeout} s; replicas seen {dict(self.replicas)}, "
                             f"failures {self.failures[:3]}")


def test_tritonclient_requests_spread_over_two_replicas(ray_cluster: dict[str, int], mlp_package: Path) -> None:
    import tritonclient.http as httpclient

    deployment = _deploy(ray_cluster, mlp_package, replicas=2, transfer="shared")
    try:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{ray_cluster['http']}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        assert [i["name"] for i in client.get_model_metadata(MODEL)["inputs"]] == ["x"]
        with pytest.raises(Exception, match="no such model"):
            client.get_model_metadata("nope")
        with Load(ray_cluster["http"], clients=4) as load:
            load.wait_for(lambda: len(load.replicas) == 2 and sum(load.replicas.values()) >= 40, 60,
                          "requests did not reach both replicas")
        assert not load.failures, load.failures[:3]
        x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
        want = inferforge.load(mlp_package)({"x": x})["output"]
        np.testing.assert_allclose(load.outputs[0], want, rtol=1e-5, atol=1e-6)
        _wait_for_metric(ray_cluster["metrics"], "inferforge_requests")
    finally:
        deployment.stop()


def _wait_for_metric(port: int, name: str, timeout: float = 30) -> None:
    """Ray's metrics agent exports the replicas' metrics in Prometheus text, after its report interval."""
    ends = time.monotonic() + timeout
    text = ""
    while time.monotonic() < ends:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        if name in text and "ray_serve_" in text:
            return
        time.sleep(1)
    raise AssertionError(f"{name} not exported on the metrics port after {timeout} s")


def test_a_killed_replica_is_replaced_and_only_its_requests_fail(ray_cluster: dict[str, int],
                                                                 mlp_package: Path) -> None:
    import ray

    deployment = _deploy(ray_cluster, mlp_package, replicas=2)
    try:
        with Load(ray_cluster["http"], clients=4) as load:
            load.wait_for(lambda: len(load.replicas) == 2, 60, "requests did not reach both replicas")
            victim = load.replicas.most_common(1)[0][0]
            ray.kill(ray.get_actor(f"SERVE_REPLICA::inferforge-{MODEL}#model#{victim}", namespace="serve"),
                     no_restart=True)
            load.wait_for(lambda: len(load.replicas) == 3, 90, "no new replica answered after the kill")
            served_after = sum(load.replicas.values())
            load.wait_for(lambda: sum(load.replicas.values()) > served_after + 40, 60, "traffic did not resume")
        # Each of the 4 clients has at most one request in flight: at most those in the killed replica fail.
        assert len(load.failures) <= 4, load.failures
    finally:
        deployment.stop()


def test_autoscaling_adds_a_replica_under_load(ray_cluster: dict[str, int], mlp_package: Path) -> None:
    from ray import serve

    deployment = _deploy(ray_cluster, mlp_package, autoscale=(1, 2), target_ongoing_requests=1.0,
                         upscale_delay_s=1.0)
    try:
        def running() -> int:
            states = serve.status().applications[f"inferforge-{MODEL}"].deployments["model"].replica_states
            return int(states.get("RUNNING", 0))

        assert running() == 1
        with Load(ray_cluster["http"], clients=6) as load:
            load.wait_for(lambda: running() == 2 and len(load.replicas) == 2, 90, "did not scale to 2 replicas")
        assert not load.failures, load.failures[:3]
    finally:
        deployment.stop()


def test_ray_serve_batching_answers_the_same(ray_cluster: dict[str, int], mlp_package: Path) -> None:
    deployment = _deploy(ray_cluster, mlp_package, replicas=1, batching="ray")
    try:
        with Load(ray_cluster["http"], clients=4) as load:
            load.wait_for(lambda: sum(load.replicas.values()) >= 40, 60, "requests were not answered")
        assert not load.failures, load.failures[:3]
        x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
        np.testing.assert_allclose(load.outputs[0], inferforge.load(mlp_package)({"x": x})["output"], rtol=1e-5,
                                   atol=1e-6)
    finally:
        deployment.stop()


def test_a_replica_refuses_a_modified_package(mlp_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(mlp_package, copy)
    _verify_every_artifact(_materialize({"path": str(copy)}))
    model_file = next(p for p in (copy / "artifacts").rglob("*") if p.is_file())
    model_file.write_bytes(model_file.read_bytes() + b"!")
    with pytest.raises(PackageError, match="does not match its checksum"):
        _verify_every_artifact(_materialize({"path": str(copy)}))


def test_object_store_transfer_unpacks_an_identical_package(ray_cluster: dict[str, int], mlp_package: Path) -> None:
    holder = RayDeployment("", [], started_cluster=False)
    folder = _materialize(_package_reference(mlp_package, "object-store", holder))
    _verify_every_artifact(folder)
    assert sorted(p.name for p in folder.rglob("*")) == sorted(p.name for p in mlp_package.rglob("*"))


def test_serve_ray_rejects_bad_scaling(mlp_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(mlp_package), "--ray", "--autoscale", "3"]) == 2
    assert "--autoscale takes MIN,MAX" in capsys.readouterr().err
    assert main(["serve", str(mlp_package), "--ray", "--autoscale", "3,1"]) == 2
    assert "0 < MIN <= MAX" in capsys.readouterr().err
