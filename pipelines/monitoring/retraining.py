"""The retraining policy: when to train a candidate, and on which window.

Runtime-free; the Supervisor's :class:`actors.retrainer.Retrainer` asks it at every
poll with what the scorers report (:class:`Observation`) and runs the job it asks for.
A trigger fires once; while a job runs, and for ``cooldown_s`` after it ends, nothing
fires. A drift alarm with ``window.after_alarm`` waits until ``window.n_labels``
labels have arrived after the alarm, so the candidate learns the new concept only.

>>> from pipelines.monitoring.config import RetrainingConfig
>>> cfg = RetrainingConfig.model_validate({"enabled": True, "window": {"n_labels": 1000}})
>>> policy = RetrainPolicy(cfg, now=0.0)
>>> alarm = {"kind": "concept", "version": "p/v1", "at": 5.0, "error_before": 0.05,
...          "error_after": 0.3, "detector": "adwin", "scorer": "scorer-0"}
>>> policy.observe(Observation(now=5.0, labels=4000, alarms=[alarm])) is None  # waits
True
>>> trigger = policy.observe(Observation(now=9.0, labels=5000))
>>> trigger.kind, trigger.since, trigger.numbers["labels_since_alarm"]
('drift', 5.0, 1000)
>>> policy.busy, policy.observe(Observation(now=9.5, labels=9000, alarms=[alarm])) is None
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.monitoring.config import RetrainingConfig

__all__ = ["Observation", "RetrainPolicy", "Trigger", "gate"]

TriggerKind = Literal["drift", "quality", "registration", "schedule", "labels"]


@dataclass(frozen=True)
class Observation:
    """What the scorers say at one poll, summed over them."""

    now: float
    labels: int
    """Labels the live version's arm has received so far (over every scorer)."""
    alarms: list[dict[str, Any]] = field(default_factory=list)
    """Concept-drift alarms new since the last poll."""
    quality: float | None = None
    """The live version's recent accuracy (minus MAE, for a regressor)."""
    registered: float | None = None
    """The live version's accuracy (minus MAE) when it was registered."""


@dataclass(frozen=True)
class Trigger:
    """Why a retrain job starts: the trigger, the numbers that fired it, and the window
    (the labels after ``since``, a wall-clock time, when set)."""

    kind: TriggerKind
    reason: str
    numbers: dict[str, Any]
    since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "numbers": self.numbers,
                "since": self.since}


class RetrainPolicy:
    """The triggers of ``config``, one job at a time."""

    def __init__(self, config: RetrainingConfig, *, now: float, labels: int = 0) -> None:
        self.config = config
        self.busy = False
        self._last_end = -float("inf")
        self._last_start = now
        self._labels_at_start = labels
        self._alarm: dict[str, Any] | None = None
        """A drift alarm waiting for its window's labels."""
        self._alarm_labels = 0

    def observe(self, obs: Observation) -> Trigger | None:
        """The trigger that fires now, if any (the caller then runs the job and calls
        :meth:`finished`)."""
        cfg, t = self.config, self.config.triggers
        if not cfg.enabled or self.busy:
            return None
        concept = [a for a in obs.alarms if a.get("kind") == "concept"]
        if t.drift and concept and self._alarm is None:
            self._alarm, self._alarm_labels = concept[0], obs.labels
        if obs.now - self._last_end < cfg.cooldown_s:
            return None
        trigger = self._drift(obs) or self._quality(obs) or self._schedule(obs)
        if trigger is not None:
            self.busy = True
            self._last_start, self._labels_at_start = obs.now, obs.labels
            if trigger.kind == "drift":
                self._alarm = None
        return trigger

    def _drift(self, obs: Observation) -> Trigger | None:
        alarm = self._alarm
        if alarm is None:
            return None
        window = self.config.window
        since = obs.labels - self._alarm_labels
        if window.after_alarm and since < window.n_labels:
            return None
        numbers = {k: alarm.get(k) for k in ("detector", "version", "arm", "scorer",
                                              "error_before", "error_after", "at_label",
                                              "id", "recorded_on")}
        numbers["labels_since_alarm"] = since
        return Trigger("drift", f"{alarm.get('detector')} drift alarm on "
                       f"{alarm.get('version')}: error {alarm.get('error_before', 0):.3f} -> "
                       f"{alarm.get('error_after', 0):.3f}", numbers,
                       alarm.get("at") if window.after_alarm else None)

    def _quality(self, obs: Observation) -> Trigger | None:
        t = self.config.triggers
        if obs.quality is None:
            return None
        if t.min_quality is not None and obs.quality < t.min_quality:
            return Trigger("quality", f"quality {obs.quality:.4f} below {t.min_quality}",
                           {"quality": obs.quality, "threshold": t.min_quality})
        if (t.below_registration is not None and obs.registered is not None
                and obs.quality < obs.registered - t.below_registration):
            return Trigger("registration",
                           f"quality {obs.quality:.4f} is more than {t.below_registration} "
                           f"below the version's {obs.registered:.4f} at registration",
                           {"quality": obs.quality, "registered": obs.registered,
                            "margin": t.below_registration})
        return None

    def _schedule(self, obs: Observation) -> Trigger | None:
        t = self.config.triggers
        if t.every_s is not None and obs.now - self._last_start >= t.every_s:
            return Trigger("schedule", f"every {t.every_s:g} s",
                           {"every_s": t.every_s, "since_last_s": obs.now - self._last_start})
        new = obs.labels - self._labels_at_start
        if t.new_labels is not None and new >= t.new_labels:
            return Trigger("labels", f"{new:,} new labels (>= {t.new_labels:,})",
                           {"new_labels": new, "threshold": t.new_labels})
        return None

    def finished(self, now: float) -> None:
        """The job ended (registered, gated out or failed): the cooldown starts."""
        self.busy = False
        self._last_end = now


def gate(config: RetrainingConfig, candidate: float, live: float | None) -> dict[str, Any]:
    """The quality gate on the held-out slice: ``candidate``'s and ``live``'s figure
    (accuracy, or minus MAE), and whether the candidate passes.

    >>> cfg = RetrainingConfig(gate={"min_metric": 0.8, "min_gain": 0.01})
    >>> gate(cfg, 0.9, 0.85)["passed"], gate(cfg, 0.9, 0.895)["passed"]
    (True, False)
    >>> gate(cfg, 0.7, None)["passed"]
    False
    """
    g = config.gate
    reasons = []
    if g.min_metric is not None and candidate < g.min_metric:
        reasons.append(f"{candidate:.4f} < min_metric {g.min_metric}")
    if live is not None and candidate - live < g.min_gain:
        reasons.append(f"gain over live {candidate - live:.4f} < min_gain {g.min_gain}")
    return {"candidate": candidate, "live": live, "min_metric": g.min_metric,
            "min_gain": g.min_gain, "passed": not reasons, "why": "; ".join(reasons) or None}
