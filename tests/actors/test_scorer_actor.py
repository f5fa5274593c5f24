"""A real ScorerActor on Ray: feedback edge cases are counted and never crash it."""

from __future__ import annotations

import ray

from actors.scorer import ScorerActor
from pipelines.config import ScoringConfig
from pipelines.protocol import Batch, Event, Feedback, encode_batch


def _ev(rid: str, x: float) -> Event:
    return Event(rid, "k", 0.0, {"x": x}, 0, 0, 0.0)


def _fb(rid: str, label: bool) -> Feedback:
    return Feedback(rid, "k", label, 0.0, 0, 0, 0.0)


def test_scorer_actor_feedback_edge_cases_counted_and_scoring_goes_on() -> None:
    scorer = ScorerActor.options(num_cpus=0).remote(ScoringConfig(label_ttl_s=0.5),
                                                    name="scorer-edge", metrics_window=10)
    edge = Batch(0, [
        _fb("early", True),            # a label before its event
        _ev("early", 1.0),
        _ev("twice", 2.0), _fb("twice", False), _fb("twice", True),   # a duplicate label
        _fb("nobody", True),           # a label for an unknown record
        _ev("expires", 3.0),
    ])
    out = ray.get(scorer.process.remote(encode_batch(edge)))
    assert len(out.predictions) == 3 and not out.dead_letters

    import time

    time.sleep(0.6)  # let "expires" (and the unknown label) pass their 0.5 s TTL
    late = Batch(1, [_fb("expires", True), _ev("after", 4.0), _fb("after", True)])
    out = ray.get(scorer.process.remote(encode_batch(late)))
    stats = ray.get(scorer.stats.remote())

    assert len(out.predictions) == 1
    assert stats["labels_early"] == 1
    assert stats["labels_duplicate"] == 1
    assert stats["labels_expired"] == 1
    assert stats["labels_late"] == 1
    assert stats["labels_unmatched"] == 2  # the unknown record's label, and the late one
    assert stats["learned"] == 3           # early, twice (once), after
    assert stats["scored"] == 4
    ray.kill(scorer)
