"""Progressive-validation metrics, cheap per label and exact to merge: the one home of
metric updates (scorer, arms) and of their merge (summary, checkpoints, registry).

The figures are River's own (``metrics.Accuracy``, ``LogLoss``, ``CrossEntropy``,
``MAE``, ``RMSE``, same clamping of probabilities), kept as plain sums instead of one
River object per metric: a label costs a few arithmetic operations, and the sums of
several scorers add up to the pipeline's exactly.

>>> m = Progressive("binary")
>>> for label, proba in [(True, 0.9), (False, 0.1), (False, 0.2), (True, 0.65)]:
...     _ = m.update(label, {True: proba, False: 1 - proba}, proba > 0.5)
>>> {k: round(v, 6) for k, v in m.get().items()}
{'accuracy': 1.0, 'log_loss': 0.216162}
>>> r = Progressive("regression"); _ = r.update(3.0, 2.0, 2.0); _ = r.update(1.0, 2.0, 2.0)
>>> r.get()
{'mae': 1.0, 'rmse': 1.0}
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.models import Task

__all__ = ["Progressive", "merge_metrics", "merge_parts"]

_EPS = 1e-15


class Progressive:
    """Running sums of one model's (or one pipeline's) predictions against their labels."""

    __slots__ = ("n", "sum_a", "sum_b", "task")

    def __init__(self, task: Task) -> None:
        self.task = task
        self.n = 0
        self.sum_a = 0.0
        """Correct predictions (classifiers), or absolute errors (regression)."""
        self.sum_b = 0.0
        """Log losses (classifiers), or squared errors (regression)."""

    def update(self, label: Any, y_pred: Any, prediction: Any) -> float:
        """Count one labeled prediction; returns its gain: 1.0 if correct, else 0.0 (or
        minus the absolute error, for regression), what the promotion test compares."""
        self.n += 1
        if self.task == "regression":
            err = label - y_pred
            self.sum_a += abs(err)
            self.sum_b += err * err
            return -abs(err)
        if self.task == "binary":
            p = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
            p = _EPS if p < _EPS else (1 - _EPS if p > 1 - _EPS else p)
            self.sum_b -= math.log(p) if label else math.log(1 - p)
        else:
            p = y_pred.get(label)
            if p is not None:
                self.sum_b -= math.log(_EPS if p < _EPS else (1 - _EPS if p > 1 - _EPS else p))
        if label == prediction:
            self.sum_a += 1.0
            return 1.0
        return 0.0

    def get(self) -> dict[str, float]:
        """The metrics so far (empty before the first label)."""
        if not self.n:
            return {}
        n = self.n
        if self.task == "regression":
            return {"mae": self.sum_a / n, "rmse": math.sqrt(self.sum_b / n)}
        return {"accuracy": self.sum_a / n, "log_loss": self.sum_b / n}

    def state(self) -> dict[str, Any]:
        """Plain data (what scorers report): the task and the sums."""
        return {"task": self.task, "n": self.n, "a": self.sum_a, "b": self.sum_b}


def merge_parts(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Pipeline-wide metrics from each scorer's (labels, :meth:`Progressive.get`): means
    weighted by labels (exact for accuracy, log loss and MAE; RMSE through its square).

    >>> merge_parts([(1, {"accuracy": 1.0, "log_loss": 0.1}), (3, {"accuracy": 0.0,
    ...                                                           "log_loss": 0.5}), (0, {})])
    {'accuracy': 0.25, 'log_loss': 0.4}
    """
    total = sum(n for n, _ in parts)
    if not total:
        return {}
    out: dict[str, float] = {}
    for n, metrics in parts:
        for k, v in metrics.items():
            out[k] = out.get(k, 0.0) + n * (v * v if k == "rmse" else v)
    return {k: math.sqrt(v / total) if k == "rmse" else v / total for k, v in out.items()}


def merge_metrics(parts: list[dict[str, Any]]) -> dict[str, float]:
    """Pipeline-wide metrics from each scorer's :meth:`Progressive.state`; exact.

    >>> a, b = Progressive("binary"), Progressive("binary")
    >>> _ = a.update(True, 0.9, True); _ = b.update(True, 0.2, False)
    >>> _ = b.update(False, 0.2, False)
    >>> round(merge_metrics([a.state(), b.state()])["accuracy"], 4)
    0.6667
    """
    parts = [p for p in parts if p and p["n"]]
    if not parts:
        return {}
    total = Progressive(parts[0]["task"])
    for p in parts:
        total.n += p["n"]
        total.sum_a += p["a"]
        total.sum_b += p["b"]
    return total.get()
