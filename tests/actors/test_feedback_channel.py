"""The embedded feedback channel in a real run: labels the service writes to
``<out_dir>/feedback.jsonl`` (before their records and while the run goes) are learned by
the records' scorers, bad lines are dead letters with their reasons, and every input is
accounted for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson

from actors.driver import run_pipeline
from pipelines.audit.query import AuditQuery
from pipelines.config import PipelineConfig
from pipelines.serving.feedback import FileFeedback
from tests.helpers import read_jsonl

N = 4000


def _events(path: Path) -> None:
    """Loan-like rows without labels: they come only through the channel."""
    with path.open("wb") as f:
        for i in range(N):
            f.write(orjson.dumps({"record_id": f"r{i}", "key": f"k{i % 300}",
                                  "a": float(i % 7) - 3.0, "b": float(i % 5) - 2.0}) + b"\n")


def _label(i: int) -> dict[str, object]:
    return {"record_id": f"r{i}", "key": f"k{i % 300}", "label": (i % 7) > 3}


def _scored_so_far(path: Path) -> set[int]:
    """The record numbers in a predictions file the sink is still writing: only whole
    lines (the last one may be half written)."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    return {int(orjson.loads(line)["record_id"][1:]) for line in whole.splitlines() if line}


def test_feedback_channel_labels_from_the_service_are_learned_bad_ones_dead_lettered(
        tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    _events(data)
    out = tmp_path / "out"
    cfg = PipelineConfig.model_validate({
        "name": "fc",
        "source": {"kind": "file", "path": str(data), "partitions": 2, "rate_per_s": 1000},
        "ingest": {"n_actors": 2, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(out)},
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"},
        "checkpoint": {"interval_s": None, "every_events": 1000},
    })
    channel = FileFeedback(out / "feedback.jsonl")  # what POST /v1/feedback appends to
    early = list(range(0, 600))
    channel.write([_label(i) for i in early])  # labels before their records
    with channel.path.open("ab") as f:  # a line that is not JSON, a label with no label
        f.write(b"{not json\n" + orjson.dumps({"record_id": "r700", "key": "k100"}) + b"\n")

    late: list[int] = []

    def label_as_scored() -> None:
        """The web application's side: labels for records once the stream scored them."""
        wanted = set(range(1000, 1200))
        deadline = time.monotonic() + 60
        while wanted and time.monotonic() < deadline:
            seen = _scored_so_far(out / "predictions.jsonl")
            ready = sorted(wanted & seen)
            if ready:
                channel.write([_label(i) for i in ready])
                late.extend(ready)
                wanted -= set(ready)
            time.sleep(0.05)

    labeller = threading.Thread(target=label_as_scored, daemon=True)
    labeller.start()
    summary = run_pipeline(cfg)
    labeller.join(timeout=5)

    assert sorted(late) == list(range(1000, 1200)), "the run ended before the labeller"
    assert summary["scored"] == N
    assert summary["learned"] == len(early) + len(late)
    with AuditQuery(cfg.checkpoint_store_url()) as q:
        learned = {r["record_id"] for r in q.rows("SELECT record_id FROM training")}
    assert learned == {f"r{i}" for i in early + late}
    dead = read_jsonl(out / "dead_letters.jsonl")
    assert sorted(d["error_class"] for d in dead) == ["DecodeError", "InvalidRecord"]
    assert {d["topic"] for d in dead} == {"feedback-channel"}
    assert "label" in next(d["error"] for d in dead if d["error_class"] == "InvalidRecord")
    predictions = read_jsonl(out / "predictions.jsonl")
    assert sorted(int(p["record_id"][1:]) for p in predictions) == list(range(N))
