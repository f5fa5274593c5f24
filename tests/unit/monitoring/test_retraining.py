"""The retraining policy's decisions (pure) and the candidate core."""

from __future__ import annotations

import random

from pipelines.config import PipelineConfig
from pipelines.monitoring.candidate import Example, train_candidate
from pipelines.monitoring.config import RetrainingConfig
from pipelines.monitoring.retraining import Observation, RetrainPolicy

_ALARM = {"kind": "concept", "version": "p/v1", "at": 100.0, "error_before": 0.1,
          "error_after": 0.4, "detector": "adwin", "scorer": "scorer-0", "id": "a"}


def _cfg(**kw: object) -> RetrainingConfig:
    return RetrainingConfig.model_validate({"enabled": True, **kw})


def test_policy_drift_alarm_waits_for_window_then_fires_once() -> None:
    policy = RetrainPolicy(_cfg(window={"n_labels": 500}, cooldown_s=10), now=0.0)
    assert policy.observe(Observation(now=100.0, labels=1000, alarms=[_ALARM])) is None
    assert policy.observe(Observation(now=101.0, labels=1499)) is None
    trigger = policy.observe(Observation(now=102.0, labels=1500))
    assert trigger is not None and trigger.kind == "drift" and trigger.since == 100.0
    assert trigger.numbers["error_after"] == 0.4
    assert policy.observe(Observation(now=103.0, labels=9000, alarms=[_ALARM])) is None
    policy.finished(104.0)
    # An alarm during the job (another scorer's, of the same change) is not a new one;
    # within the cooldown a new alarm waits, and fires after it once its window is in.
    assert policy.observe(Observation(now=104.5, labels=8000)) is None
    assert policy.observe(Observation(now=105.0, labels=9000, alarms=[_ALARM])) is None
    assert policy.observe(Observation(now=115.0, labels=9400)) is None
    assert policy.observe(Observation(now=116.0, labels=9500)).kind == "drift"


def test_policy_without_after_alarm_fires_at_once_on_recent_window() -> None:
    policy = RetrainPolicy(_cfg(window={"after_alarm": False}), now=0.0)
    trigger = policy.observe(Observation(now=1.0, labels=10, alarms=[_ALARM]))
    assert trigger is not None and trigger.since is None


def test_policy_quality_registration_schedule_and_volume_triggers() -> None:
    q = RetrainPolicy(_cfg(triggers={"drift": False, "min_quality": 0.8}), now=0.0)
    assert q.observe(Observation(now=1.0, labels=10, quality=0.85)) is None
    assert q.observe(Observation(now=2.0, labels=10, quality=0.75)).kind == "quality"
    r = RetrainPolicy(_cfg(triggers={"drift": False, "below_registration": 0.05}), now=0.0)
    assert r.observe(Observation(now=1.0, labels=10, quality=0.86, registered=0.9)) is None
    fired = r.observe(Observation(now=1.0, labels=10, quality=0.84, registered=0.9))
    assert fired.kind == "registration" and fired.numbers["registered"] == 0.9
    s = RetrainPolicy(_cfg(triggers={"drift": False, "every_s": 60}), now=0.0)
    assert s.observe(Observation(now=59.0, labels=0)) is None
    assert s.observe(Observation(now=60.0, labels=0)).kind == "schedule"
    v = RetrainPolicy(_cfg(triggers={"drift": False, "new_labels": 1000}), now=0.0)
    assert v.observe(Observation(now=1.0, labels=999)) is None
    assert v.observe(Observation(now=2.0, labels=1000)).kind == "labels"


def test_policy_disabled_never_fires() -> None:
    policy = RetrainPolicy(RetrainingConfig(), now=0.0)
    assert policy.observe(Observation(now=1e9, labels=10**9, alarms=[_ALARM],
                                      quality=0.0)) is None


def test_candidate_new_concept_beats_stale_live_and_passes_gate() -> None:
    """The live model's served predictions follow the old concept; the candidate
    learns the new one from the window and beats it on the held-out slice."""
    rng = random.Random(0)
    examples = []
    for i in range(3000):
        x = rng.uniform(0, 1)
        examples.append(Example(f"r{i}", "loans", 0, i, {"x": x}, x > 0.5, x <= 0.5,
                                float(i)))
    cfg = PipelineConfig.model_validate({
        "name": "p", "source": {"kind": "synthetic"},
        "scoring": {"model": {"steps": [{"name": "tree.HoeffdingTreeClassifier"}]}},
        "retraining": {"enabled": True, "gate": {"min_gain": 0.1}}})
    cand = train_candidate(cfg, examples, "binary")
    assert cand.n_train == 2400 and cand.n_holdout == 600
    assert cand.gate["live"] == 0.0 and cand.gate["candidate"] > 0.9
    assert cand.gate["passed"] and cand.kind == "river"


def _frames() -> tuple[object, object]:
    import orjson
    import pandas as pd

    learned = pd.DataFrame([
        # record, arm, learned_at; r2 learned twice (a replay); r5 by a shadow arm only
        {"record_id": r, "topic": "t", "partition": 0, "offset": i, "label": b"true",
         "arm": arm, "learned_at": at}
        for i, (r, arm, at) in enumerate([("r1", "live", 1.0), ("r2", "live", 2.0),
                                          ("r2", "live", 2.5), ("r3", "live", 3.0),
                                          ("r4", "live", 4.0), ("r5", "shadow", 5.0),
                                          ("r6", "live", 6.0)])])
    scored = pd.DataFrame([
        {"record_id": r, "role": role, "features": orjson.dumps({"x": n}),
         "output": orjson.dumps({"prediction": role == "live"})}
        for n, (r, role) in enumerate([("r1", "live"), ("r2", "live"), ("r3", "live"),
                                       ("r3", "shadow"), ("r4", "shadow"),
                                       ("r5", "live"), ("r6", "live")])])
    return learned, scored


def test_window_of_takes_the_newest_live_labels_with_their_trail_rows_oldest_first() -> None:
    from pipelines.monitoring.candidate import window_of

    learned, scored = _frames()
    window = window_of(learned, scored, n_labels=10)
    # r4's live row is not in the trail (its shadow's is): left out; r5 a shadow's label
    assert [e.record_id for e in window] == ["r1", "r2", "r3", "r6"]
    assert [e.learned_at for e in window] == [1.0, 2.0, 3.0, 6.0]  # r2 once, the first
    assert window[2].features == {"x": 2} and window[2].served is True
    assert window[0].label is True and window[0].offset == 0
    assert [e.record_id for e in window_of(learned, scored, n_labels=2)] == ["r6"]  # r4, r6
    after = window_of(learned, scored, n_labels=10, since=2.5)  # r2's replay is after it
    assert [(e.record_id, e.learned_at) for e in after] == [("r2", 2.5), ("r3", 3.0),
                                                             ("r6", 6.0)]
    assert [e.record_id for e in window_of(learned, scored, n_labels=10, max_age_s=3.5,
                                           now=7.0)] == ["r6"]


def test_wait_for_window_reads_again_until_full_or_out_of_time() -> None:
    from pipelines.monitoring.candidate import wait_for_window

    clock = [0.0]
    sizes = iter([3, 5, 8, 12, 20])
    reads: list[int] = []

    def read() -> list[Example]:
        n = next(sizes)
        reads.append(n)
        return [Example(f"r{i}", "t", 0, i, {}, True, True, float(i)) for i in range(n)]

    def sleep(s: float) -> None:
        clock[0] += s

    def wait(**kw: object) -> list[Example]:
        return wait_for_window(read, sleep=sleep, clock=lambda: clock[0], **kw)

    assert len(wait(n_labels=10, since=1.0, every_s=1.0, budget_s=60.0)) == 12
    assert reads == [3, 5, 8, 12]
    reads.clear()
    sizes = iter([1, 2, 3, 4, 5, 6])
    clock[0] = 0.0
    assert len(wait(n_labels=10, since=1.0, every_s=2.0, budget_s=5.0)) == 3  # 3 reads in 5 s
    reads.clear()
    sizes = iter([4])
    assert len(wait(n_labels=10, since=None, every_s=1.0, budget_s=60.0)) == 4  # no alarm: once
    assert reads == [4]
