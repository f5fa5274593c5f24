"""Drift detection cores: the detectors on error streams, PSI, and the scorer's hook."""

from __future__ import annotations

import random

import pytest

from pipelines.config import ScoringConfig
from pipelines.monitoring.config import DriftDetectionConfig, FeatureDriftConfig
from pipelines.monitoring.drift import DriftWatch, ErrorStream, psi
from pipelines.protocol import Batch, Event, Feedback
from pipelines.scoring import ScorerCore


def _bernoulli(rng: random.Random, p: float, n: int) -> list[float]:
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


@pytest.mark.parametrize("kind", ["adwin", "page_hinkley", "ddm", "window"])
def test_error_stream_rise_detected_within_budget(kind: str) -> None:
    rng = random.Random(1)
    cfg = DriftDetectionConfig(detector=kind)  # type: ignore[arg-type]
    stream = ErrorStream(cfg.detector, cfg.detector_params, binary=kind == "ddm", grace=500)
    before = stream.update_many(_bernoulli(rng, 0.1, 20_000))
    after = stream.update_many(_bernoulli(rng, 0.3, 5_000))
    assert before == []
    assert after, f"{kind} missed a rise of the error from 0.1 to 0.3"
    assert after[0]["at_label"] - 20_000 < 2_000
    assert after[0]["error_after"] > after[0]["error_before"]


def test_error_stream_improvement_is_not_an_alarm() -> None:
    rng = random.Random(2)
    cfg = DriftDetectionConfig()
    stream = ErrorStream(cfg.detector, cfg.detector_params, binary=False, grace=0)
    stream.update_many(_bernoulli(rng, 0.4, 10_000))
    assert stream.update_many(_bernoulli(rng, 0.05, 10_000)) == []


def test_error_stream_stationary_seeds_no_false_alarm() -> None:
    """A small version of the stationary check of scripts/bench_drift.py: the default
    detector raises nothing over 3 x 200,000 labels of a constant error rate."""
    cfg = DriftDetectionConfig()
    total = 0
    for seed in range(3):
        rng = random.Random(seed)
        stream = ErrorStream(cfg.detector, cfg.detector_params, binary=False, grace=1000)
        total += len(stream.update_many(_bernoulli(rng, 0.2, 200_000)))
    assert total == 0


def test_psi_shifted_feature_alarms_and_stable_does_not() -> None:
    rng = random.Random(3)
    watch = DriftWatch(DriftDetectionConfig(features=FeatureDriftConfig(
        sample_every=1, reference_size=1000, window_size=1000)), task="binary",
        scorer="scorer-0")
    watch.sample("p/v1", [{"age": rng.gauss(40, 10), "salary": rng.gauss(5, 1)}
                          for _ in range(3000)])
    assert watch.stats()["alarms"] == []
    watch.sample("p/v1", [{"age": rng.gauss(55, 10), "salary": rng.gauss(5, 1)}
                          for _ in range(1000)])
    alarms = watch.stats()["alarms"]
    assert [a["feature"] for a in alarms] == ["age"]
    assert alarms[0]["psi"] > 0.25 and alarms[0]["kind"] == "feature"
    assert psi([float(i) for i in range(1000)], [float(i) for i in range(1000)]) < 1e-9


def test_scorer_core_wrong_predictions_raise_alarm_in_stats() -> None:
    """The scoring loop feeds the live arm's errors: labels that turn against the model
    after it learned a constant concept give an alarm, counted in the scorer's stats."""
    core = ScorerCore(ScoringConfig(drift=DriftDetectionConfig(grace_labels=100)),
                      name="scorer-0")
    seq = 0

    def batch(label: bool, n: int) -> Batch:
        nonlocal seq
        items: list[Event | Feedback] = []
        for _ in range(n):
            rid = f"r{seq}"
            items.append(Event(rid, "k", 0.0, {"x": 1.0}, 0, 2 * seq, 0.0))
            items.append(Feedback(rid, "k", label, 0.0, 0, 2 * seq + 1, 0.0))
            seq += 1
        return Batch(0, items)

    for _ in range(6):
        core.process(batch(True, 500))
    assert core.stats()["drift"]["alarms_total"]["concept"] == 0
    for _ in range(4):
        core.process(batch(False, 500))
    drift = core.stats()["drift"]
    assert drift["alarms_total"]["concept"] >= 1
    alarm = drift["alarms"][0]
    assert alarm["version"] == core.arms[0].version and alarm["arm"] == "live"
    assert alarm["at_label"] > 3000
