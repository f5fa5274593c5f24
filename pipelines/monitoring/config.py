"""The configs of drift detection (``scoring.drift``) and of the retraining policy
(``retraining``): frozen, strict pydantic models, as in :mod:`pipelines.config`.

>>> DriftDetectionConfig().detector, DriftDetectionConfig().detector_params
('adwin', {'delta': 1e-05})
>>> RetrainingConfig(enabled=True).triggers.drift
True
>>> DriftDetectionConfig(detector="ddm", params={"warm_start": 30}).detector
'ddm'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DetectorKind", "DriftDetectionConfig", "FeatureDriftConfig", "GateConfig",
           "RetrainEstimator", "RetrainTriggers", "RetrainWindow", "RetrainingConfig"]

DetectorKind = Literal["adwin", "page_hinkley", "kswin", "ddm", "eddm", "window"]
"""River's detectors (``drift.ADWIN``, ``drift.PageHinkley``, ``drift.KSWIN``,
``drift.binary.DDM``, ``drift.binary.EDDM``) and ``window``, the trivial baseline: a
fixed window's error rate above the first window's by ``threshold``."""

_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # delta 1e-5 rather than River's 0.002: at 0.002 ADWIN alarms on noise every few
    # hundred thousand labels (scripts/bench_drift.py measures both).
    "adwin": {"delta": 1e-5},
    "page_hinkley": {"threshold": 50.0, "delta": 0.005},
    "kswin": {"alpha": 1e-5, "window_size": 1000, "stat_size": 300, "seed": 0},
    # River's warm start of 30 labels alarms on the first noise: 1,000 here.
    "ddm": {"warm_start": 1000},
    "eddm": {"warm_start": 1000},
    "window": {"size": 1000, "threshold": 0.1},
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FeatureDriftConfig(_Frozen):
    """Feature drift: each numeric feature's population-stability index (PSI) between
    a reference window (the first ``reference_size`` sampled events a version scores)
    and each later window of ``window_size`` sampled events."""

    enabled: bool = True
    sample_every: Annotated[int, Field(ge=1)] = 10
    """One scored event in this many is sampled (the cost stays off the hot path)."""
    reference_size: Annotated[int, Field(ge=100)] = 2_000
    window_size: Annotated[int, Field(ge=100)] = 2_000
    n_bins: Annotated[int, Field(ge=2, le=100)] = 10
    """Bins by the reference window's quantiles."""
    threshold: Annotated[float, Field(gt=0)] = 0.25
    """A PSI above this is an alarm (0.1: a moderate shift, 0.25: a large one, by the
    usual rule of thumb)."""


class DriftDetectionConfig(_Frozen):
    """Concept drift: a detector on each arm's error stream (0/1 errors of a classifier,
    absolute errors of a regressor), in every scorer; the Supervisor merges the alarms.
    Only a rise of the error is an alarm (a model that improves is not drifting)."""

    enabled: bool = True
    detector: DetectorKind = "adwin"
    params: dict[str, Any] = {}
    """The detector's constructor arguments (River's names); default per detector:
    ADWIN ``delta=1e-5``; PageHinkley ``threshold=50, delta=0.005``; KSWIN
    ``alpha=1e-5``; DDM and EDDM ``warm_start=1000``; the window baseline
    ``size=1000, threshold=0.1``."""
    grace_labels: Annotated[int, Field(ge=0)] = 1_000
    """Labels of a new version before its detector starts (it is still learning)."""
    features: FeatureDriftConfig = FeatureDriftConfig()
    poll_interval_s: Annotated[float, Field(gt=0)] = 1.0
    """How often the Supervisor gathers the scorers' alarms."""

    @property
    def detector_params(self) -> dict[str, Any]:
        return {**_DEFAULT_PARAMS[self.detector], **self.params}


class RetrainTriggers(_Frozen):
    """What starts a retrain job (any one of them)."""

    drift: bool = True
    """A concept-drift alarm on the live version."""
    min_quality: float | None = None
    """The live version's recent accuracy (minus its MAE, for a regressor) below this;
    recent: an exponential average over about 500 labels, over the scorers."""
    below_registration: Annotated[float, Field(ge=0)] | None = None
    """The recent accuracy this much below the version's accuracy at registration."""
    every_s: Annotated[float, Field(gt=0)] | None = None
    """A schedule: every this many seconds."""
    new_labels: Annotated[int, Field(ge=1)] | None = None
    """A volume: once this many labels have arrived since the last retrain (or start)."""


class RetrainWindow(_Frozen):
    """How far back a candidate learns: the newest ``n_labels`` labeled examples (at most
    ``max_age_s`` old). After a drift alarm, only labels that arrived after it count, and
    the job waits until ``n_labels`` of them are committed (for at most half its
    ``timeout_s`` or 20 checkpoint intervals; then it learns what is there)."""

    n_labels: Annotated[int, Field(ge=100)] = 10_000
    max_age_s: Annotated[float, Field(gt=0)] | None = None
    after_alarm: bool = True
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """The newest share of the window, held out to evaluate the candidate."""


class RetrainEstimator(_Frozen):
    """``river``: a fresh River model (``model``, default ``scoring.model``) learns the
    window in order; ``sklearn``: ``training``'s scikit-learn estimator is fitted on it,
    as ``riffle train`` does."""

    kind: Literal["river", "sklearn"] = "river"
    model: Any = None
    """A River model spec (``steps: [...]``) for ``river``; None: ``scoring.model``."""


class GateConfig(_Frozen):
    """A candidate is launched only if, on the held-out slice, its accuracy (minus MAE,
    for a regressor) is at least ``min_metric`` and beats what the live version said on
    the same records by at least ``min_gain``."""

    min_metric: float | None = None
    min_gain: float = 0.0


class RetrainingConfig(_Frozen):
    """The retraining policy: triggers, window, estimator and gate. A job runs on Ray
    beside the pipeline (its own ``num_cpus``), reads the window from the committed
    training log and audit trail with Ray Data, and registers its candidate with its
    provenance; a candidate past the gate is launched in shadow, and the promotion
    policy (``launch.promotion``, set ``mode: auto``) decides."""

    enabled: bool = False
    triggers: RetrainTriggers = RetrainTriggers()
    window: RetrainWindow = RetrainWindow()
    estimator: RetrainEstimator = RetrainEstimator()
    gate: GateConfig = GateConfig()
    num_cpus: Annotated[float, Field(ge=0)] = 1.0
    """The job's CPUs (Ray schedules it when they are free; the pipeline never waits)."""
    cooldown_s: Annotated[float, Field(ge=0)] = 30.0
    """No new job for this long after one ends."""
    timeout_s: Annotated[float, Field(gt=0)] = 600.0

    @model_validator(mode="after")
    def _some_trigger(self) -> RetrainingConfig:
        t = self.triggers
        if self.enabled and not (t.drift or t.min_quality is not None
                                 or t.below_registration is not None
                                 or t.every_s is not None or t.new_labels is not None):
            raise ValueError("retraining is enabled but no trigger is set")
        return self
