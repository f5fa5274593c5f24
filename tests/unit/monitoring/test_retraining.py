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
