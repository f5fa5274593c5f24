"""The arms of a deployment: which model version serves which key, and how each fares.

Runtime-free. A scorer serves a :class:`~pipelines.protocol.Deployment`: the live arm
alone, or live beside candidates (shadow, canary, A/B). Keys are dealt to arms by a
stable hash of ``key`` (a point in [0, 1) independent of the hash that routes keys to
scorers), so a key always lands in the same arm, on every scorer and after restarts.

>>> from pipelines.protocol import ArmSpec
>>> router = Router([ArmSpec("live", "v1", "live", 0.9),
...                  ArmSpec("candidate", "v2", "canary", 0.1)])
>>> router.arm_of("applicant-42") == router.arm_of("applicant-42")
True
>>> shares = [0, 0]
>>> for i in range(20_000):
...     shares[router.arm_of(f"k{i}")] += 1
>>> round(shares[1] / 20_000, 2)
0.1
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from pipelines.metrics import Progressive
from pipelines.models import Task
from pipelines.protocol import ArmSpec

__all__ = ["Arm", "Router", "gain_of", "key_point"]

_SALT = b"riffle-arms"


def key_point(key: str) -> float:
    """Where ``key`` falls in [0, 1): uniform over keys, the same in every process."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=_SALT).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Router:
    """Deals keys to the arms that serve (weight > 0) in proportion to their weights."""

    def __init__(self, arms: Sequence[ArmSpec]) -> None:
        serving = [(i, a.weight) for i, a in enumerate(arms) if a.weight > 0]
        total = sum(w for _, w in serving)
        self._index = [i for i, _ in serving]
        self._bounds = [c / total for c in accumulate(w for _, w in serving)][:-1]

    def arm_of(self, key: str) -> int:
        return self._index[bisect_right(self._bounds, key_point(key))]


def gain_of(task: Task, label: Any, y_pred: Any, prediction: Any) -> float:
    """What the promotion test compares: correctness, or minus the absolute error."""
    if task == "regression":
        return -abs(label - y_pred)
    return float(label == prediction)


class Arm:
    """One model version in a scorer, with its own quality, latency and volume."""

    def __init__(self, spec: ArmSpec, model: Any, task: Task) -> None:
        self.name, self.version, self.role, self.weight = spec
        self.model = model
        self.task = task
        self.learns: bool = getattr(model, "learns", True)
        """River models learn online; a batch-trained (scikit-learn) model is frozen."""
        self.batched = not self.learns and hasattr(model, "predict_proba_many")
        """A frozen model scores a batch's events in one call (the scores of one by one, to
        BLAS rounding; scikit-learn's per-call overhead is ~0.5 ms, per row in a batch
        ~10 us)."""
        self.metrics = Progressive(task)
        self.counts = {"scored": 0, "labeled": 0, "errors": 0}
        self.latency = [0, 0.0, 0.0]
        """Model calls: count, total and longest seconds."""
        self.reset_comparison()

    def reset_comparison(self) -> None:
        """Start the promotion evaluation afresh (a new deployment began)."""
        self.gain = [0, 0.0, 0.0]
        """Gains on the records it scored: count, sum, sum of squares."""
        self.paired = [0, 0.0, 0.0]
        """A shadow's gain minus live's, on the records both scored."""

    def respec(self, spec: ArmSpec) -> None:
        self.name, _, self.role, self.weight = spec

    def score(self, features: dict[str, Any], classifier: bool) -> tuple[Any, Any]:
        """(score, prediction): class probabilities and the likeliest class, or the value."""
        started = time.perf_counter()
        if classifier:
            score = self.model.predict_proba_one(features)
            prediction = max(score, key=score.get) if score else None
        else:
            score = prediction = self.model.predict_one(features)
        spent = time.perf_counter() - started
        lat = self.latency
        lat[0] += 1
        lat[1] += spent
        if spent > lat[2]:
            lat[2] = spent
        self.counts["scored"] += 1
        return score, prediction

    def score_many(self, rows: list[dict[str, Any]], classifier: bool
                   ) -> list[tuple[Any, Any]]:
        """:meth:`score` of many rows in one model call (raises if any row is bad)."""
        import pandas as pd

        started = time.perf_counter()
        frame = pd.DataFrame.from_records(rows)
        if classifier:
            scores = self.model.predict_proba_many(frame).to_dict("records")
            out = [(s, max(s, key=s.get) if s else None) for s in scores]
        else:
            out = [(v, v) for v in self.model.predict_many(frame).tolist()]
        spent = time.perf_counter() - started
        lat = self.latency
        lat[0] += len(rows)
        lat[1] += spent
        per_row = spent / max(len(rows), 1)
        if per_row > lat[2]:
            lat[2] = per_row
        self.counts["scored"] += len(rows)
        return out

    def observe(self, label: Any, y_pred: Any, prediction: Any) -> float | None:
        """The label of a record this arm scored: its metrics and gain (None if it had
        no prediction to compare, as River's progressive validation skips those)."""
        if y_pred is None or y_pred == {}:
            return None
        self.counts["labeled"] += 1
        g = self.metrics.update(label, y_pred, prediction)
        _add(self.gain, g)
        return g

    def compare(self, gain: float, live_gain: float) -> None:
        _add(self.paired, gain - live_gain)

    def stats(self) -> dict[str, Any]:
        n, total, longest = self.latency
        return {"name": self.name, "version": self.version, "role": self.role,
                "weight": self.weight, "learns": self.learns, **self.counts,
                "metrics": self.metrics.get(),
                "gain": list(self.gain), "paired": list(self.paired),
                "latency_us": {"mean": 1e6 * total / n if n else None, "max": 1e6 * longest}}


def _add(acc: list[Any], value: float) -> None:
    acc[0] += 1
    acc[1] += value
    acc[2] += value * value
