"""The scoring service on the session's Ray Serve: hot swaps under load across replicas,
autoscaling, and the OpenAPI contract checked by schemathesis against the running service."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.protocol import Command
from pipelines.registry import Registry
from tests.ray_cluster import free_port
from tests.serving_helpers import (
    KEYS,
    Stream,
    fitted,
    keys_file,
    records,
    register,
    serving_config,
)

pytestmark = pytest.mark.ray

WEB = {"X-API-Key": KEYS["web"][1]}
OPS = {"X-API-Key": KEYS["ops"][1]}


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    """Serve's proxy on a free local port for this module's applications."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


class App:
    def __init__(self, cfg: PipelineConfig, tmp: Path, name: str, base: str) -> None:
        self.cfg, self.name = cfg, name
        self.url = f"{base}/{name}"
        self.registry = Registry(cfg.registry_url())
        self.a = register(self.registry, tmp, cfg.name, "sk-a", fitted(1.0))
        self.b = register(self.registry, tmp, cfg.name, "sk-b", fitted(-1.0))
        self.stream = Stream(cfg, self.registry)

    def deploy(self) -> None:
        from ray import serve

        from actors.serving import deployment_for

        serve.run(deployment_for(self.cfg).bind(self.cfg, None), name=self.name,
                  route_prefix=f"/{self.name}")

    def apply(self, **fields: Any) -> None:
        self.stream.apply(Command(pipeline=self.cfg.name, actor="ci", **fields))

    def close(self) -> None:
        from ray import serve

        serve.delete(self.name)
        self.registry.close()


@pytest.fixture
def make_app(make_config: Any, tmp_path: Path, serve_url: str) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(name: str, **serving: Any) -> App:
        cfg = serving_config(make_config, keys_file=str(keys_file(tmp_path)), num_cpus=0,
                             **serving)
        app = App(cfg, tmp_path, name, serve_url)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


class Load:
    """``clients`` threads posting batches until stopped; every answer is kept."""

    def __init__(self, url: str, *, clients: int, batch: int) -> None:
        self.url, self.batch = url, batch
        self.answers: list[tuple[float, int, str, frozenset[str], int | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, i: int) -> None:
        with requests.Session() as session:
            n = 0
            while not self._stop.is_set():
                try:
                    r = session.post(f"{self.url}/v1/predict", headers=WEB, timeout=30,
                                     json={"records": records(self.batch, i * 100_000 + n)})
                    body = r.json() if r.status_code == 200 else {}
                    answer = (time.monotonic(), r.status_code,
                              r.headers.get("x-riffle-replica", ""),
                              frozenset(p["model_version"] for p in body.get("predictions", [])),
                              body.get("deployment"))
                except requests.RequestException as e:
                    answer = (time.monotonic(), -1, repr(e), frozenset(), None)
                with self._lock:
                    self.answers.append(answer)
                n += self.batch

    def seen(self) -> list[tuple[float, int, str, frozenset[str], int | None]]:
        with self._lock:
            return list(self.answers)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_serving_deploys_reach_every_replica_under_load_without_a_failed_or_mixed_request(
        make_app: Callable[..., App]) -> None:
    app = make_app("swap", num_replicas=2)
    app.apply(op="deploy", version=app.a)
    app.deploy()
    with Load(app.url, clients=4, batch=20) as load:
        def replicas_serving(version: str, after: int = 0) -> set[str]:
            return {r for _, s, r, v, _ in load.seen()[after:] if s == 200 and v == {version}}

        _wait(lambda: len(replicas_serving(app.a)) == 2, 60, "both replicas serving a")
        mark = len(load.seen())
        app.apply(op="deploy", version=app.b)  # what the stream's Supervisor records
        _wait(lambda: len(replicas_serving(app.b, mark)) == 2, 30, "both replicas on b")
        mark = len(load.seen())
        app.apply(op="rollback")
        _wait(lambda: len(replicas_serving(app.a, mark)) == 2, 30, "both back on a")
    answers = load.seen()  # (the waits above saw both replicas answer in every phase)
    assert [a for a in answers if a[1] != 200] == []  # no request failed during the swaps
    assert all(len(versions) == 1 for _, _, _, versions, _ in answers)  # none mixed
    # Per replica, each deployment it loaded (its serial) served one version, and in the
    # order loaded they are a, b, a: no replica flipped back and forth.
    for replica in {r for _, _, r, _, _ in answers}:
        by_serial: dict[int, set[str]] = {}
        for _, _, r, versions, serial in answers:
            if r == replica:
                assert serial is not None
                by_serial.setdefault(serial, set()).update(versions)
        assert all(len(v) == 1 for v in by_serial.values()), (replica, by_serial)
        assert [next(iter(by_serial[k])) for k in sorted(by_serial)] == [
            app.a, app.b, app.a], (replica, by_serial)


def test_serving_autoscales_up_under_load_and_back_down_after_without_failures(
        make_app: Callable[..., App]) -> None:
    from ray import serve

    app = make_app("scale", max_ongoing_requests=8, autoscaling_config={
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1.0,
        "upscale_delay_s": 0.5, "downscale_delay_s": 2.0, "metrics_interval_s": 0.5,
        "look_back_period_s": 1.0})
    app.deploy()

    def running() -> int:
        status = serve.status().applications[app.name].deployments["ScoringReplica"]
        return int(status.replica_states.get("RUNNING", 0))

    assert running() == 1
    with Load(app.url, clients=8, batch=500) as load:
        _wait(lambda: running() >= 2, 60, "a second replica under load")
        grown = running()
    _wait(lambda: running() == 1, 60, "back to one replica after the load")
    answers = load.seen()
    assert grown >= 2 and len(answers) >= 8  # every client was answered
    assert [a for a in answers if a[1] != 200] == []


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: Any, serve_url: str) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("contract")
    cfg = PipelineConfig.model_validate({
        "name": "contract", "source": {"kind": "synthetic", "partitions": 1},
        "output": {"out_dir": str(tmp / "out")},
        "serving": {"keys_file": str(keys_file(tmp)), "num_cpus": 0, "max_batch": 20,
                    "poll_interval_s": 0.2}})
    app = App(cfg, tmp, "contract", serve_url)
    app.apply(op="deploy", version=app.a)
    app.apply(op="deploy", version=app.b, mode="canary", share=0.5)
    app.deploy()
    try:
        yield schemathesis.openapi.from_url(f"{app.url}/openapi.json")
    finally:
        app.close()


def test_serving_openapi_contract_holds_no_500s_and_schema_conformant_responses(
        api_schema: Any) -> None:
    """Every operation (but those that change the stream, tested above by name) fuzzed
    from the generated OpenAPI document, a bounded number of examples each."""
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if re.match(r"^/v1/(admin|forget)", operation.path):
            continue
        tested.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            case.call_and_validate(headers=OPS, checks=checks)

        conforms()
    assert {"POST /v1/predict", "POST /v1/feedback", "GET /v1/models",
            "GET /v1/models/{version}", "GET /readyz"} <= set(tested)


def test_serving_build_app_takes_replicas_and_autoscaling_from_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.serving import build_app

    config = tmp_path / "c.yaml"
    config.write_text("name: c\nsource: {kind: synthetic}\nserving:\n  max_ongoing_requests: 9\n"
                      "  autoscaling_config: {min_replicas: 2, max_replicas: 5, "
                      "target_ongoing_requests: 3}\n")
    monkeypatch.setenv("RIFFLE_SERVE_KEYS", "web:scorer:k")
    deployment = build_app({"config": str(config)})._bound_deployment
    assert deployment.max_ongoing_requests == 9
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (
        2, 5, 3.0)
    with pytest.raises(ValueError, match="config=PATH"):
        build_app({})
    monkeypatch.delenv("RIFFLE_SERVE_KEYS")
    with pytest.raises(ConfigError, match="no API keys"):
        build_app({"config": str(config)})
