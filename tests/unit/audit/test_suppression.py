"""Suppressed subjects at ingest: their events and labels become "erased subject" dead
letters that hold the subject's hash, never the record; others pass untouched."""

from __future__ import annotations

from pipelines.audit.subjects import subject_hash
from pipelines.audit.suppression import Suppression
from pipelines.config import PipelineConfig
from pipelines.ingest import IngestCore
from pipelines.protocol import SourceMessage

SALT = bytes(range(32))


def test_ingest_suppressed_key_is_dead_lettered_without_its_data() -> None:
    cfg = PipelineConfig.model_validate({"name": "t", "source": {"kind": "synthetic"}})
    core = IngestCore(cfg, task="binary",
                      suppressed=Suppression([subject_hash("gone", salt=SALT)], SALT))
    msgs = [SourceMessage("loans", 0, i, kind, {"record_id": f"r{i // 2}", "key": key,
                                                **({"features": {"x": 1.0}} if kind == "event"
                                                   else {"label": True})}, None, None, 0.0)
            for i, (kind, key) in enumerate([("event", "gone"), ("feedback", "gone"),
                                             ("event", "kept"), ("feedback", "kept")])]
    routed, dead = core.route(msgs)
    assert [(i.record_id, i.key) for i in routed[0]] == [("r1", "kept"), ("r1", "kept")]
    assert [d.error for d in dead] == ["erased subject"] * 2
    assert all(b"gone" not in d.raw and d.record_id is None for d in dead)
    assert core.counts["erased"] == 2 and not core.seen.add("r1") and core.seen.add("r0")
