"""The service's audit routes over a real run's stores (FastAPI's test client on the
service's core; the run on the session's Ray): a record's audit trail, its explanation
rebuilt exactly, and a data subject forgotten, each allowed by role and in the access log
under the principal who asked."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from actors.driver import run_pipeline
from pipelines.config import PipelineConfig
from pipelines.registry import Registry
from pipelines.serving.auth import KeyRing
from pipelines.serving.routes import make_api
from pipelines.serving.service import ServingCore
from tests.helpers import read_jsonl
from tests.serving_helpers import KEYS, KEYS_ENV

WEB = {"X-API-Key": KEYS["web"][1]}
ANA = {"X-API-Key": KEYS["ana"][1]}
OPS = {"X-API-Key": KEYS["ops"][1]}


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "sa",
        "source": {"kind": "synthetic", "partitions": 2, "n_events": 3000, "seed": 11,
                   "n_keys": 400, "label_delay_events": 5},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(root / "out")},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        "checkpoint": {"interval_s": None, "every_events": 1000, "keep": 10},
    })


def test_serving_audit_explain_and_forget_routes_answer_from_the_runs_stores(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run_pipeline(cfg)
    served = read_jsonl(cfg.out_dir / "predictions.jsonl")
    target = served[len(served) // 2]
    rid, key = target["record_id"], target["key"]
    others = [p["record_id"] for p in served if p["key"] != key]
    core = ServingCore(cfg, keys=KeyRing.parse(KEYS_ENV))
    try:
        client = TestClient(make_api(core))

        # The audit trail: the version and scorer that served it, and its label's fate.
        assert client.get(f"/v1/audit/records/{rid}", headers=WEB).status_code == 403
        doc = client.get(f"/v1/audit/records/{rid}", headers=ANA).json()
        (row,) = doc["served"]
        assert (row["model_version"], row["scorer"], row["prediction"]) == (
            target["model_version"], target["scorer"], target["prediction"])
        assert doc["learned_by"], "its label came 5 events later and was learned"
        assert client.get("/v1/audit/records/no-such-record", headers=ANA).status_code == 404

        # The explanation: the model rebuilt as it was scores the record as audited.
        assert client.post("/v1/explain", json={"record_id": rid},
                           headers=WEB).status_code == 403
        why = client.post("/v1/explain", json={"record_id": rid}, headers=ANA).json()
        assert why["exact"] is True and why["max_error"] <= why["tolerance"]
        assert why["model_version"] == target["model_version"]
        assert why["audited_score"] == target["score"]

        # Forget (the pipeline stopped: on its stores here): admin only.
        assert client.post("/v1/forget", json={"key": key}, headers=ANA).status_code == 403
        cert = client.post("/v1/forget", json={"key": key, "reason": "customer asked"},
                           headers=OPS).json()
        assert cert["actor"] == "ops" and cert["reason"] == "customer asked"
        assert cert["removed"]["audit_trail"] >= 1 and cert["n_records"] >= 1
        assert client.get(f"/v1/audit/records/{rid}", headers=ANA).status_code == 404
        assert client.get(f"/v1/audit/records/{others[0]}",
                          headers=ANA).status_code == 200  # nobody else's is touched
        assert client.post("/v1/forget", json={"key": "nobody-ever"},
                           headers=OPS).status_code == 404
    finally:
        core.close()

    with Registry(cfg.registry_url()) as reg:
        entries = reg.access_entries(pipeline="sa")
        assert reg.verify_access().ok
    asked = [(e.action, e.actor) for e in entries]
    assert ("audit.record", "ana") in asked and ("explain", "ana") in asked
    assert ("forget", "ops") in asked
    forgets = [e for e in entries if e.action == "forget"]
    assert len(forgets) == 1 and key not in str(forgets[0].details)  # only its hash
