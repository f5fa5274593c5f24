"""``riffle forget`` over the Kafka control channel (``control.kind: kafka``), on the real
broker: the request's hash travels on the ``models`` topic, the running pipeline rebuilds
and goes on, and its final models equal a run that never saw the subject (its later
events suppressed)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from actors.driver import run_pipeline
from pipelines.audit.forget_request import send_forget
from pipelines.config import PipelineConfig
from pipelines.control_kafka import KafkaControl
from pipelines.registry import Registry
from pipelines.sources.sample import sample_rows
from tests.actors.test_forget import _config, _final_models, _params, _write
from tests.faults.test_supervision import Run
from tests.kafka_helpers import wait_for

pytestmark = pytest.mark.kafka

N_EVENTS = 1500


def _kafka_control(cfg: PipelineConfig, bootstrap: str, topic: str) -> PipelineConfig:
    return PipelineConfig.model_validate({
        **cfg.model_dump(mode="json"), "control": {"kind": "kafka"},
        "kafka": {"bootstrap_servers": bootstrap, "request_timeout_ms": 10_000,
                  "topics": {"models": topic}}})


def test_forget_over_kafka_control_running_pipeline_unlearns_exactly(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    rows = sample_rows(N_EVENTS, seed=17, n_keys=300)
    early = list(dict.fromkeys(r["key"] for r in rows[:200]))
    late = {r["key"] for r in rows[2 * N_EVENTS // 3:]}
    key = next(k for k in early if k in late)  # learned before the forget, seen after it
    topic = f"t-{uuid.uuid4().hex[:10]}-models"
    cfg = _kafka_control(_config("fk", _write(tmp_path / "loans.jsonl", rows), tmp_path / "a",
                                 150.0), kafka_bootstrap, topic)
    run = Run(cfg)
    run.until(lambda: run.checkpoints() >= 2, "2 checkpoints", timeout_s=300)
    cert = send_forget(cfg, key, actor="test", reason="GDPR", suppress=True, timeout_s=90)
    assert cert is not None
    summary = run.result(180)
    assert cert["models"]["skipped"] > 0  # the subject's examples were left out
    assert summary["dead_letters"] > 0  # its later events, suppressed, were not learned
    reader = KafkaControl(cfg.kafka, client_id="test-reader")
    try:
        reader.seek(0)
        sent: list[tuple[int, bytes]] = []

        def read() -> bool:
            sent.extend(reader.read())
            return bool(sent)

        wait_for(read, 20.0, "the topic's message")
    finally:
        reader.close()
    [(_, raw)] = sent  # the one request, on the models topic
    message = orjson.loads(raw)
    assert message["op"] == "forget" and message["subject"] == cert["subject"]
    assert key.encode() not in raw  # only the subject's hash travelled on the topic
    with Registry(cfg.registry_url(), create=False) as reg:
        [entry] = reg.access_entries(action="forget")
    assert entry.target == cert["subject"]
    ref = _config("fk", _write(tmp_path / "without.jsonl",
                               [r for r in rows if r["key"] != key]), tmp_path / "b", None)
    run_pipeline(ref)
    got, want = _final_models(cfg), _final_models(ref)
    for scorer in got:
        a, b = _params(got[scorer]), _params(want[scorer])
        assert len(a) == len(b)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-12, scorer
    for name in ("predictions.jsonl", "dead_letters.jsonl"):
        path = cfg.out_dir / name
        assert not path.exists() or key.encode() not in path.read_bytes()
