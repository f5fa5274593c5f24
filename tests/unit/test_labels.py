"""Feedback edge cases at the scorer core: none crashes it, each is counted."""

from __future__ import annotations

from typing import Any

from pipelines.config import ScoringConfig
from pipelines.labels import LabelBuffer
from pipelines.protocol import Batch, Event, Feedback
from pipelines.scoring import ScorerCore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ev(rid: str, x: float = 1.0) -> Event:
    return Event(rid, "k", 0.0, {"x": x}, 0, 0, 0.0)


def fb(rid: str, label: Any = True) -> Feedback:
    return Feedback(rid, "k", label, 0.0, 0, 0, 0.0)


def make_core(clock: Clock, **cfg: Any) -> ScorerCore:
    return ScorerCore(ScoringConfig(**cfg), name="scorer-t", clock=clock)


def test_scorer_label_before_event_learns_when_event_arrives() -> None:
    core = make_core(Clock())
    core.process(Batch(0, [fb("r1", True)]))
    assert core.stats()["learned"] == 0
    out = core.process(Batch(1, [ev("r1")]))
    stats = core.stats()
    assert len(out.predictions) == 1
    assert stats["learned"] == 1 and stats["labels_early"] == 1
    assert stats["labels_unmatched"] == 0 and stats["labels_held_early"] == 0


def test_scorer_duplicate_label_counted_learned_once() -> None:
    core = make_core(Clock())
    core.process(Batch(0, [ev("r1"), fb("r1", True), fb("r1", False)]))
    stats = core.stats()
    assert stats["learned"] == 1
    assert stats["labels_duplicate"] == 1


def test_scorer_label_for_unknown_record_expires_as_unmatched() -> None:
    clock = Clock()
    core = make_core(clock, label_ttl_s=10.0)
    core.process(Batch(0, [fb("nobody", True)]))
    clock.now = 11.0
    core.process(Batch(1, []))
    stats = core.stats()
    assert stats["labels_unmatched"] == 1 and stats["learned"] == 0


def test_scorer_label_after_expiry_counted_late_not_learned() -> None:
    clock = Clock()
    core = make_core(clock, label_ttl_s=10.0)
    core.process(Batch(0, [ev("r1")]))
    clock.now = 20.0
    core.process(Batch(1, [fb("r1", True)]))
    stats = core.stats()
    assert stats["labels_expired"] == 1
    assert stats["labels_late"] == 1 and stats["labels_unmatched"] == 1
    assert stats["learned"] == 0


def test_scorer_pending_over_max_expires_oldest_first() -> None:
    core = make_core(Clock(), max_pending_labels=2)
    core.process(Batch(0, [ev("r1"), ev("r2"), ev("r3"), fb("r1"), fb("r3")]))
    stats = core.stats()
    assert stats["labels_expired"] == 1 and stats["learned"] == 1 and stats["labels_late"] == 1


def test_scorer_model_error_on_bad_feature_is_dead_letter_not_crash() -> None:
    core = make_core(Clock())
    core.process(Batch(0, [ev("r0", 2.0), fb("r0"), ev("r00", 3.0), fb("r00", False)]))
    out = core.process(Batch(1, [Event("r1", "k", 0.0, {"x": "text"}, 0, 0, 0.0), ev("r2")]))
    assert len(out.dead_letters) == 1 and "model error: TypeError" in out.dead_letters[0].error
    assert len(out.predictions) == 1 and core.stats()["model_errors"] == 1


def test_label_buffer_wrong_label_type_for_learn_does_not_corrupt_counts() -> None:
    buf: LabelBuffer[str] = LabelBuffer(max_pending=10, ttl_s=5.0, clock=Clock())
    assert buf.add("a", "x") is None
    assert buf.match("a", "anything") == "x"
    assert buf.n_pending == 0
