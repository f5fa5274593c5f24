"""The scoring service's core and HTTP API without Ray (FastAPI's test client)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from pipelines.arms import Router
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.protocol import Batch, Command, Event
from pipelines.registry import Registry
from pipelines.scoring import ScorerCore
from pipelines.serving.auth import KeyRing, load_keys
from pipelines.serving.routes import make_api
from pipelines.serving.service import ServingCore
from tests.serving_helpers import KEYS, KEYS_ENV, Stream, fitted, register, serving_config

WEB = {"X-API-Key": KEYS["web"][1]}
ANA = {"Authorization": f"Bearer {KEYS['ana'][1]}"}
OPS = {"X-API-Key": KEYS["ops"][1]}


class Service:
    def __init__(self, cfg: PipelineConfig, tmp: Path) -> None:
        self.cfg = cfg
        self.registry = Registry(cfg.registry_url())
        self.a = register(self.registry, tmp, cfg.name, "sk-a", fitted(1.0))
        self.b = register(self.registry, tmp, cfg.name, "sk-b", fitted(-1.0))
        self.stream = Stream(cfg, self.registry)
        self.core = ServingCore(cfg, keys=KeyRing.parse(KEYS_ENV), registry=self.registry)
        self.client = TestClient(make_api(self.core))

    def apply(self, **fields: Any) -> None:
        self.stream.apply(Command(pipeline=self.cfg.name, actor="ci", **fields))
        self.core.tick()


@pytest.fixture
def service(make_config: Any, tmp_path: Path) -> Iterator[Service]:
    s = Service(serving_config(make_config, max_batch=50, max_body_bytes=4096,
                               keys_file=None), tmp_path)
    s.core.holder.refresh()
    yield s
    s.core.close()


def _records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"record_id": f"r{i}", "key": f"user-{i}", "features": {"a": (i % 7) - 3.0,
                                                                       "b": (i % 5) - 2.0}}
            for i in range(start, start + n)]


def test_serving_canary_routes_each_key_to_the_streams_arm_and_model(service: Service) -> None:
    service.apply(op="deploy", version=service.a)
    service.apply(op="deploy", version=service.b, mode="canary", share=0.3)
    records = _records(50)
    r = service.client.post("/v1/predict", json={"records": records}, headers=WEB)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    # The stream's own scorer, serving the same deployment, scores the same keys.
    deployment = service.stream.lifecycle.deployment
    scorer = ScorerCore(service.cfg.scoring, name="scorer-0")
    scorer.apply(deployment, {service.a: fitted(1.0), service.b: fitted(-1.0)})
    out = scorer.process(Batch(0, [Event(x["record_id"], x["key"], 0.0, x["features"], 0, i,
                                         0.0) for i, x in enumerate(records)]))
    stream = [orjson.loads(line) for line in out.predictions]
    assert [(p["key"], p["arm"], p["model_version"]) for p in got] == [
        (p["key"], p["arm"], p["model_version"]) for p in stream]
    for g, e in zip(got, stream, strict=True):  # batch scoring rounds like BLAS, not more
        assert g["score"] == pytest.approx(e["score"], rel=1e-9, abs=1e-12)
    arms = {p["arm"] for p in got}
    assert arms == {"live", "candidate"}  # 50 keys at 30%: both arms serve
    router = Router(deployment.arms)
    assert all(p["arm"] == deployment.arms[router.arm_of(p["key"])].name for p in got)
    # One record: the same answer as in the batch.
    one = service.client.post("/v1/predict", json={"record": records[7]}, headers=WEB).json()
    assert one["predictions"] == [got[7]] and one["deployment"] == r.json()["deployment"]


def test_serving_deploy_in_the_stream_swaps_the_version_and_a_failed_load_keeps_serving(
        service: Service, tmp_path: Path) -> None:
    def versions() -> set[str]:
        r = service.client.post("/v1/predict", json={"records": _records(20)}, headers=WEB)
        return {p["model_version"] for p in r.json()["predictions"]}

    assert versions() == {service.cfg.scoring.model.version}  # the stream's own start
    service.apply(op="deploy", version=service.a)
    assert versions() == {service.a}
    service.apply(op="deploy", version=service.b)
    assert versions() == {service.b}
    # The artifact of a version changes under the registry: the load fails, b serves on.
    (tmp_path / "sk-a.pkl").write_bytes(b"tampered")
    service.stream.lifecycle.deployment = service.stream.lifecycle.deployment._replace(
        previous=None)  # so the stream's own check lets it through: the service must refuse
    service.registry.log_command(status="applied", raw=b"{}", channel="test",
                                 pipeline=service.cfg.name, command_id="forced", op="deploy",
                                 deployment={"mode": "live", "previous": None, "arms": [
                                     {"name": "live", "version": service.a, "role": "live",
                                      "weight": 1.0}]})
    assert service.core.tick() is False
    assert versions() == {service.b}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and "does not match" in ready.json()["detail"]


def test_serving_keys_decide_who_may_do_what_and_every_request_is_logged(
        service: Service) -> None:
    body = {"record": _records(1)[0]}
    assert service.client.post("/v1/predict", json=body).status_code == 401
    r = service.client.post("/v1/predict", json=body, headers={"X-API-Key": "guess"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert service.client.post("/v1/predict", json=body, headers=ANA).status_code == 403
    assert service.client.get("/v1/models", headers=WEB).status_code == 403
    assert service.client.post("/v1/admin/rollback", json={}, headers=WEB).status_code == 403
    for _ in range(3):
        assert service.client.post("/v1/predict", json=body, headers=WEB).status_code == 200
    assert service.client.post("/v1/predict", json=body, headers=OPS).status_code == 200
    models = service.client.get("/v1/models", headers=ANA)
    assert models.status_code == 200
    assert [v["id"] for v in models.json()["versions"]] == [service.a, service.b]
    assert service.client.get(f"/v1/models/{service.b}", headers=ANA).json()[
        "version"]["id"] == service.b
    assert service.client.get("/v1/models/sk-zz", headers=ANA).status_code == 404
    service.core.flush_access()
    entries = service.registry.access_entries(pipeline=service.cfg.name)
    by = {(e.action, e.actor): e for e in entries}
    assert by["serve.predict", "web"].details["requests"] == 3
    assert by["serve.predict", "ops"].details["records"] == 1
    assert ("models.list", "ana") in by
    shows = [(e.target, e.details["found"], e.details["via"]) for e in entries
             if e.action == "models.show"]
    assert shows == [(service.b, True, "serve"), ("test/sk-zz", False, "serve")]
    denied = {(e.actor, e.details["denied"]): e.details["requests"] for e in entries
              if e.action == "serve.denied"}
    assert denied == {("(anonymous)", "predict"): 1, ("(unknown key)", "predict"): 1,
                      ("ana", "predict"): 1, ("web", "read"): 1, ("web", "deploy"): 1}
    assert service.registry.verify_access().finding is None  # the tamper-evident chain holds


def test_serving_bad_bodies_are_422_naming_the_field_and_oversized_ones_413(
        service: Service) -> None:
    post = service.client.post
    cases = [({"records": [{"key": "k", "features": {"a": "x"}}]},
              ["body", "records", 0, "features", "a"]),
             ({"record": {"features": {"a": 1.0}}}, ["body", "record", "key"]),
             ({"records": [{"key": "k", "features": {"a": 1.0}, "colour": "red"}]},
              ["body", "records", 0, "colour"]),
             ({"records": _records(51)}, ["body", "records"]),
             ({"record": {"key": "k", "features": {"a": 1e300}}},
              ["body", "record", "features", "a"])]
    for body, loc in cases:
        r = post("/v1/predict", json=body, headers=WEB)
        assert r.status_code == 422, (body, r.text)
        assert any(d["loc"][:len(loc)] == loc for d in r.json()["detail"]), r.json()
    r = post("/v1/predict", content=b"{not json", headers={**WEB, "content-type":
                                                          "application/json"})
    assert r.status_code == 422
    big = {"records": [{"key": "k" * 500, "features": {"a": 1.0}}] * 10}
    assert post("/v1/predict", json=big, headers=WEB).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"records": ['
        for _ in range(40):
            yield orjson.dumps({"key": "k" * 200, "features": {"a": 1.0}}) + b","
        yield b'{"key": "k", "features": {}}]}'
    assert post("/v1/predict", content=chunks(), headers={
        **WEB, "content-type": "application/json"}).status_code == 413
    fb = post("/v1/feedback", json={"labels": [{"record_id": "r1", "key": "k",
                                                "label": [1]}]}, headers=WEB)
    assert fb.status_code == 422 and fb.json()["detail"][0]["loc"][:3] == ["body", "labels", 0]


def test_serving_fast_path_answers_valid_predicts_as_the_route_does_and_nothing_else(
        service: Service) -> None:
    """A valid predict is answered before FastAPI (it never sees it), with the bytes the
    route would give; every other request reaches FastAPI with its body intact."""
    api = service.client.app
    fast = api.app  # BodyLimit(FastPredict(FastAPI))
    reached: list[str] = []
    fastapi_app = fast.app

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await fastapi_app(scope, receive, send)
    fast.app = spy
    route = TestClient(fastapi_app)  # the route alone, for the expected answers
    bodies = [{"record": _records(1)[0]}, {"records": _records(20)}]
    for body in bodies:
        for headers in (WEB, {"Authorization": f"bearer  {KEYS['web'][1]} "}):
            got = service.client.post("/v1/predict", json=body, headers=headers)
            assert got.status_code == 200, got.text
            assert got.headers["x-riffle-replica"] == service.core.replica
            assert got.content == route.post("/v1/predict", json=body, headers=WEB).content
    assert reached == []
    # Not for the fast path: each answered by FastAPI, as before.
    cases = [({"json": bodies[0], "headers": ANA}, 403),  # a role that may not predict
             ({"json": bodies[0], "headers": {"Authorization": f"Basic {KEYS['web'][1]}"}},
              401),  # not a bearer token
             ({"json": {"record": {"key": "k", "features": {"a": "x"}}}, "headers": WEB}, 422),
             ({"content": orjson.dumps(bodies[0]), "headers": {**WEB, "content-type":
                                                              "text/plain"}}, 422),
             ({"json": {"records": _records(51)}, "headers": WEB}, 422)]
    for kwargs, status in cases:
        assert service.client.post("/v1/predict", **kwargs).status_code == status, kwargs
    assert reached == ["/v1/predict"] * len(cases)
    assert service.client.get("/healthz").status_code == 200 and reached[-1] == "/healthz"


def test_serving_feedback_goes_to_the_embedded_feedback_stream(service: Service) -> None:
    labels = [{"record_id": "r1", "key": "user-1", "label": True},
              {"record_id": "r2", "key": "user-2", "label": False, "event_time": 5.0}]
    r = service.client.post("/v1/feedback", json={"labels": labels}, headers=WEB)
    assert r.status_code == 200 and r.json()["accepted"] == 2
    path = service.cfg.out_dir / "feedback.jsonl"
    assert r.json()["stream"] == f"file:{path}"
    assert [orjson.loads(line) for line in path.read_bytes().splitlines()] == labels


def test_serving_admin_routes_go_through_the_control_stream(service: Service) -> None:
    service.stream.start()
    try:
        r = service.client.post("/v1/admin/deploy", json={"version": "sk-a", "reason": "t"},
                                headers=OPS)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        sent = [orjson.loads(line) for line in
                (service.cfg.out_dir / "control.jsonl").read_bytes().splitlines()]
        assert [(c["op"], c["version"], c["actor"]) for c in sent] == [
            ("deploy", service.a, "ops")]
        r = service.client.post("/v1/admin/rollback", json={}, headers=OPS)
        assert r.status_code == 200 and r.json()["status"] == "applied"
        r = service.client.post("/v1/admin/promote", json={}, headers=OPS)
        assert r.status_code == 409 and "0 candidates" in r.json()["error"]
        r = service.client.post("/v1/admin/deploy", json={"version": "sk-nope"}, headers=OPS)
        assert r.status_code == 422 and "unknown model version" in r.json()["detail"]
        r = service.client.post("/v1/admin/retire", json={"version": "sk-b"}, headers=OPS)
        assert r.status_code == 200, r.text
    finally:
        service.stream.stop()
    log = service.registry.commands(service.cfg.name)
    assert [(c.op, c.status, c.actor) for c in log] == [
        ("deploy", "applied", "ops"), ("rollback", "applied", "ops"),
        ("promote", "rejected", "ops"), ("deploy", "rejected", "ops"),
        ("retire", "applied", "ops")]


def test_serving_keys_come_from_the_environment_or_a_secrets_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RIFFLE_SERVE_KEYS", raising=False)
    monkeypatch.delenv("RIFFLE_SERVE_KEYS_FILE", raising=False)
    with pytest.raises(ConfigError, match="no API keys"):
        load_keys(None)
    path = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"def").hexdigest()  # the file may hold hashes, not keys
    path.write_text("principals:\n  - {name: ci, role: admin, key: abc}\n"
                    f"  - {{name: app, role: scorer, key_sha256: {digest}}}\n")
    monkeypatch.setenv("RIFFLE_SERVE_KEYS", "web:scorer:xyz")
    ring = load_keys(path)
    assert [ring.principal(k) for k in ("abc", "def", "xyz", "nope")] == [
        ("ci", "admin"), ("app", "scorer"), ("web", "scorer"), None]
    monkeypatch.setenv("RIFFLE_SERVE_KEYS", "web:scorer:abc")
    with pytest.raises(ConfigError, match="'web' and 'ci' have the same API key"):
        load_keys(path)
    assert ring.principal("abc") is not None and ring.principal("abc").may("forget")
    monkeypatch.setenv("RIFFLE_SERVE_KEYS", "web:boss:xyz")
    with pytest.raises(ConfigError, match="role must be one of"):
        load_keys(None)
    with pytest.raises(ConfigError, match="expected name:role:key"):
        KeyRing.parse("just-a-key")


def test_serving_cli_without_api_keys_is_one_line_and_exit_code_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pipelines.cli import cli

    monkeypatch.delenv("RIFFLE_SERVE_KEYS", raising=False)
    monkeypatch.delenv("RIFFLE_SERVE_KEYS_FILE", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("name: c\nsource: {kind: synthetic}\n")
    result = CliRunner().invoke(cli, ["serve", str(config)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "riffle: error: no API keys: set RIFFLE_SERVE_KEYS (name:role:key,...) or a keys file "
        "(serving.keys_file or RIFFLE_SERVE_KEYS_FILE)"]


def test_serving_river_checkpoint_each_key_scored_by_its_scorers_model_with_reasons(
        make_config: Any) -> None:
    from pipelines.audit.reasons import reasons_for
    from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id, dumps_state
    from pipelines.ingest import scorer_of
    from pipelines.protocol import Feedback

    cfg = serving_config(make_config, keys_file=None)
    cfg = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={
        "n_actors": 2, "explain": cfg.scoring.explain.model_copy(update={"top_k": 2})})})
    # Two scorers learn their own keys (as the stream routes them), then a checkpoint.
    scorers = [ScorerCore(cfg.scoring, name=f"scorer-{i}") for i in range(2)]
    for i, x in enumerate(_records(400)):
        label = (x["features"]["a"] > 0) == (scorer_of(x["key"], 2) == 0)  # opposite rules
        scorers[scorer_of(x["key"], 2)].process(Batch(0, [
            Event(x["record_id"], x["key"], 0.0, x["features"], 0, 2 * i, 0.0),
            Feedback(x["record_id"], x["key"], label, 0.0, 0, 2 * i + 1, 0.0)]))
    store = CheckpointStore(cfg.checkpoint_store_url())
    ckpt = checkpoint_id(1)
    parts = {s.name: store.write_part(ckpt, s.name, dumps_state(s.snapshot())) for s in scorers}
    manifest = store.commit(Manifest(id=ckpt, seq=1, created_at=0.0, pipeline=cfg.name,
                                     config_hash="c", positions={"t[0]": 800}, parts=parts))
    registry = Registry(cfg.registry_url())
    registry.register_checkpoint(store.url, manifest, model_class="river.LR", params={},
                                 n_learned=400, actor="ci")
    core = ServingCore(cfg, keys=KeyRing.parse(KEYS_ENV), registry=registry)
    try:
        core.holder.refresh()
        client = TestClient(make_api(core))
        records = _records(30, start=1000)
        got = client.post("/v1/predict", json={"records": records}, headers=WEB).json()
    finally:
        core.close()
    for x, p in zip(records, got["predictions"], strict=True):
        model = scorers[scorer_of(x["key"], 2)].model
        assert (p["model_version"], p["checkpoint"]) == ("v0", f"{cfg.name}/{ckpt}")
        expected = model.predict_proba_one(x["features"])
        assert p["score"] == pytest.approx({str(k).lower(): v for k, v in expected.items()})
        assert p["reasons"] == [list(r) for r in reasons_for(model, 2)(
            x["features"], max(expected, key=expected.get))]
    assert {scorer_of(x["key"], 2) for x in records} == {0, 1}


def test_serving_ingress_sets_serves_environment_and_haproxy_takes_fixed_replicas(
        make_config: Any) -> None:
    from pipelines.serving.service import haproxy_installed, serve_env

    def env(**serving: Any) -> dict[str, str]:
        return serve_env(serving_config(make_config, keys_file=None, **serving))

    assert env(ingress="proxy") == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    assert env(ingress="proxy", throughput_optimized=False) == {}
    # auto (the default): HAProxy for fixed replicas (ray[serve] ships it on Linux), the
    # proxy where Serve autoscales
    assert haproxy_installed()
    assert env()["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env(autoscaling_config={
        "min_replicas": 1, "max_replicas": 2})
    fast = env(ingress="haproxy", num_replicas=2)
    assert fast["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert 1 <= int(fast["RAY_SERVE_HAPROXY_NBTHREAD"]) <= 4
    assert env(ingress="haproxy", haproxy_threads=3)["RAY_SERVE_HAPROXY_NBTHREAD"] == "3"
    with pytest.raises(ValueError, match="fixed num_replicas"):
        serving_config(make_config, keys_file=None, ingress="haproxy",
                       autoscaling_config={"min_replicas": 1, "max_replicas": 2})
