"""Model repository: versions, hot reload under traffic with no failed request, broken versions, the API."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import infer_json, request, serving, wait_until

from inferforge.serve.auth import Auth
from inferforge.serve.repository import scan


def _install(package: Path, repo: Path, version: int) -> Path:
    """Copy beside, then rename into place: the repository never sees half a package."""
    target = repo / "mlp" / str(version)
    staging = repo / "mlp" / f".{version}.tmp"
    shutil.copytree(package, staging)
    staging.rename(target)
    return target


@pytest.fixture
def repo(tmp_path: Path, mlp_package: Path) -> Path:
    _install(mlp_package, tmp_path / "repo", 1)
    return tmp_path / "repo"


def test_scan_reads_a_repository_and_a_single_package(repo: Path, mlp_package: Path) -> None:
    assert scan(repo) == {"mlp": {"1": repo / "mlp" / "1"}}
    assert scan(mlp_package) == {"mlp": {"1": mlp_package}}


def test_new_version_under_traffic_switches_with_no_failed_request(repo: Path, mlp_package: Path) -> None:
    with serving(repo) as server:
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                status, _, payload = request(server, "POST", "/v2/models/mlp/infer",
                                             infer_json(np.ones((2, 16), np.float32)))
                results.append((status, json.loads(payload).get("model_version", payload.decode())))

        clients = [threading.Thread(target=traffic) for _ in range(4)]
        for c in clients:
            c.start()
        wait_until(lambda: len(results) > 20, what="traffic on version 1")
        old = weakref.ref(server.server.repository.serving["mlp"])
        _install(mlp_package, repo, 2)
        server.call(server.server.repository.poll())
        seen = len(results)
        wait_until(lambda: sum(1 for _, v in results[seen:] if v == "2") > 20, what="traffic on version 2")
        stop.set()
        for c in clients:
            c.join()
        statuses = {s for s, _ in results}
        assert statuses == {200}, [r for r in results if r[0] != 200][:3]
        assert {v for _, v in results} == {"1", "2"}
        index = {(e["name"], e["version"]): e["state"] for e in server.server.repository.index_json()}
        assert index == {("mlp", "1"): "UNAVAILABLE", ("mlp", "2"): "READY"}
        wait_until(lambda: (gc.collect(), old() is None)[1], what="version 1 released (no leak)")


def _break(version: Path) -> Path:
    for artifact in (p for p in (version / "artifacts").rglob("*") if p.is_file()):
        artifact.write_bytes(b"truncated")  # every artifact: no fallback may rescue the version
    return version


def _repair(package: Path, version: Path) -> None:
    """Rewrite the version's files in place (fresh mtimes, as an editor or a deploy would)."""
    shutil.copytree(package, version, dirs_exist_ok=True, copy_function=shutil.copy)


def test_a_broken_new_version_leaves_the_old_one_serving(repo: Path, mlp_package: Path) -> None:
    with serving(repo) as server:
        _break(_install(mlp_package, repo, 2))
        server.call(server.server.repository.poll())
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((1, 16), np.float32)))
        assert status == 200 and json.loads(payload)["model_version"] == "1"
        states = {e["version"]: e for e in server.server.repository.index_json()}
        assert states["1"]["state"] == "READY"
        assert states["2"]["state"] == "UNAVAILABLE" and "checksum" in states["2"]["reason"]


def test_a_repaired_version_loads_whatever_newer_broken_versions_exist(tmp_path: Path, mlp_package: Path) -> None:
    """Issue 17: with v2 serving and v4 broken, repairing v3 in place loaded nothing until v4 was removed.
    A failed version is retried when its files change, and only then; the newest that loads serves."""
    repo = tmp_path / "repo"
    _install(mlp_package, repo, 2)
    with serving(repo) as server:
        repository = server.server.repository
        tried: list[str] = []
        report = repository.on_change
        repository.on_change = lambda state: (tried.append(state.version) if state.state == "LOADING" else None,
                                              report(state))[1]
        _break(_install(mlp_package, repo, 3))
        _break(_install(mlp_package, repo, 4))
        server.call(repository.poll())
        assert repository.serving["mlp"].version == "2" and tried == ["4", "3"]

        _repair(mlp_package, repo / "mlp" / "3")
        server.call(repository.poll())
        assert repository.serving["mlp"].version == "3"
        assert tried == ["4", "3", "3"], "v4's files did not change: it must not be retried"
        server.call(repository.poll())  # nothing changed: nothing is tried again
        assert tried == ["4", "3", "3"]

        _repair(mlp_package, repo / "mlp" / "4")
        server.call(repository.poll())
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((1, 16), np.float32)))
        assert status == 200 and json.loads(payload)["model_version"] == "4"
        states = {e["version"]: e["state"] for e in repository.index_json()}
        assert states == {"2": "UNAVAILABLE", "3": "UNAVAILABLE", "4": "READY"}


def test_polling_picks_up_a_new_version_by_itself(repo: Path, mlp_package: Path) -> None:
    with serving(repo, poll_seconds=0.05) as server:
        _install(mlp_package, repo, 2)
        wait_until(lambda: server.server.repository.is_ready("mlp", "2"), what="version 2 loaded by polling")


def test_repository_api_unload_and_load(repo: Path) -> None:
    admin = {"Authorization": "Bearer adm1n"}
    with serving(repo, auth=Auth(admin_token="adm1n"), poll_seconds=0.05) as server:
        assert request(server, "POST", "/v2/repository/models/mlp/unload", b"", admin)[0] == 200
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((1, 16), np.float32)))
        assert status == 503 and b"unloaded" in payload
        server.call(server.server.repository.poll())  # polling leaves a model unloaded on request alone
        assert not server.server.repository.is_ready("mlp")
        assert request(server, "POST", "/v2/repository/models/mlp/load", b"", admin)[0] == 200
        assert request(server, "POST", "/v2/repository/models/ghost/load", b"", admin)[0] == 404
        status, _, payload = request(server, "POST", "/v2/repository/index", b"", admin)
        assert json.loads(payload) == [{"name": "mlp", "version": "1", "state": "READY"}]
