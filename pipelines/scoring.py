"""The scorer's core: score events, hold them for their labels, learn when labels come.

Runtime-free: :class:`ScorerCore` knows nothing of Ray; ``actors.scorer`` wraps it.
Within a batch, items are handled in order, so with one partition and immediate
labels the scorer is River's own predict-then-learn loop (progressive validation).

>>> from pipelines.config import ScoringConfig
>>> from pipelines.protocol import Batch, Event, Feedback
>>> core = ScorerCore(ScoringConfig(), name="scorer-0")
>>> x = {"age": 30.0, "income": 2.5}
>>> out = core.process(Batch(0, [Event("r1", "k1", 0.0, x, 0, 0, 0.0),
...                               Feedback("r1", "k1", True, 0.0, 0, 1, 0.0)]))
>>> len(out.predictions), core.stats()["learned"]
(1, 1)
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import orjson
from river import metrics

from pipelines.config import ScoringConfig
from pipelines.labels import LabelBuffer
from pipelines.models import build_model, task_of
from pipelines.protocol import Batch, DeadLetter, Event, Feedback, SinkBatch

__all__ = ["ScorerCore", "merge_metrics"]

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class _Scored(NamedTuple):
    features: dict[str, Any]
    y_pred: Any
    """What the metrics compare with the label: the class probabilities (classifiers),
    else the predicted value."""
    prediction: Any


class ScorerCore:
    """One scorer's model, pending labels and progressive metrics."""

    def __init__(self, config: ScoringConfig, *, name: str, metrics_window: int | None = None,
                 clock: Any = time.monotonic) -> None:
        self.name = name
        self.model: Any = build_model(config.model)
        self.task = task_of(self.model)
        self.version = config.model.version
        self.checkpoint: str | None = None
        """The last committed checkpoint this model continues from (None before the first)."""
        self.labels: LabelBuffer[_Scored] = LabelBuffer(
            max_pending=config.max_pending_labels, ttl_s=config.label_ttl_s, clock=clock)
        self._window = metrics_window or config.metrics_window
        self._windows: list[list[float]] = []  # [labeled count, correct count or abs error sum]
        if self.task == "regression":
            self._metrics: dict[str, Any] = {"mae": metrics.MAE(), "rmse": metrics.RMSE()}
        else:
            loss = metrics.CrossEntropy() if self.task == "multiclass" else metrics.LogLoss()
            self._metrics = {"accuracy": metrics.Accuracy(), "log_loss": loss}
        self._n_metric = 0
        self.counts = {"scored": 0, "learned": 0, "feedback": 0, "model_errors": 0}

    # -- the data path -----------------------------------------------------------------
    def process(self, batch: Batch) -> SinkBatch:
        """Score the events and learn from the feedback of ``batch``, in order."""
        lines: list[bytes] = []
        keys: list[str] = []
        read_at: list[float] = []
        dead: list[DeadLetter] = []
        classifier = self.task != "regression"
        model, labels, counts = self.model, self.labels, self.counts
        version, name, checkpoint = self.version, self.name, self.checkpoint
        labels.expire()  # what timed out before this batch arrived cannot be learned from it
        for item in batch.items:
            if type(item) is Event:
                try:
                    if classifier:
                        score = model.predict_proba_one(item.features)
                        prediction = max(score, key=score.get) if score else None
                    else:
                        score = prediction = model.predict_one(item.features)
                except Exception as e:  # a record the model cannot take is data, not a crash
                    counts["model_errors"] += 1
                    dead.append(_dead_event(item, f"model error: {type(e).__name__}: {e}", name))
                    continue
                counts["scored"] += 1
                lines.append(orjson.dumps({
                    "record_id": item.record_id, "key": item.key, "score": score,
                    "prediction": prediction, "model_version": version,
                    "checkpoint": checkpoint, "scorer": name,
                    "event_time": item.event_time, "scored_at": time.time(),
                    "partition": item.partition, "offset": item.offset,
                }, option=_JSON))
                keys.append(item.key)
                read_at.append(item.read_at)
                early = labels.add(item.record_id, _Scored(item.features, score, prediction))
                if early is not None:
                    self._learn(item, item.features, score, prediction, early[0], dead)
            else:
                assert type(item) is Feedback
                counts["feedback"] += 1
                held = labels.match(item.record_id, item.label)
                if held is not None:
                    self._learn(item, held.features, held.y_pred, held.prediction, item.label,
                                dead)
        return SinkBatch(lines, keys, [version] * len(lines), read_at, dead)

    def _learn(self, item: Event | Feedback, features: dict[str, Any], y_pred: Any,
               prediction: Any, label: Any, dead: list[DeadLetter]) -> None:
        # As River's progressive validation: no metric update for an empty prediction.
        if y_pred is not None and y_pred != {}:
            self._update_metrics(label, y_pred, prediction)
        try:
            self.model.learn_one(features, label)
        except Exception as e:
            self.counts["model_errors"] += 1
            dead.append(DeadLetter(
                item.record_id, "feedback",
                orjson.dumps({"record_id": item.record_id, "key": item.key, "label": label},
                             default=repr, option=_JSON),
                f"model error while learning: {type(e).__name__}: {e}", "ModelError",
                self.name, item.partition, item.offset))
            return
        self.counts["learned"] += 1

    def _update_metrics(self, label: Any, y_pred: Any, prediction: Any) -> None:
        m = self._metrics
        if self.task == "regression":
            m["mae"].update(label, y_pred)
            m["rmse"].update(label, y_pred)
            hit = abs(label - y_pred)
        else:
            m["accuracy"].update(label, prediction)
            m["log_loss"].update(label, y_pred)
            hit = float(label == prediction)
        self._n_metric += 1
        idx = (self._n_metric - 1) // self._window
        if idx == len(self._windows):
            self._windows.append([0, 0.0])
        w = self._windows[idx]
        w[0] += 1
        w[1] += hit

    # -- checkpoints -------------------------------------------------------------------
    _STATE = ("model", "labels", "version", "_windows", "_metrics", "_n_metric", "counts")

    def snapshot(self) -> dict[str, Any]:
        """Everything learned so far: the model, the pending labels, metrics and counts."""
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot` (of a scorer of the same name and config)."""
        for name in self._STATE:
            setattr(self, name, state[name])

    # -- what the supervisor asks ------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, metrics and windows of this scorer (plain data, cheap to send)."""
        return {
            **self.counts, **self.labels.counts,
            "labels_pending": self.labels.n_pending, "labels_held_early": self.labels.n_early,
            "task": self.task, "n_metric": self._n_metric,
            "metrics": {k: m.get() for k, m in self._metrics.items()},
            "windows": [list(w) for w in self._windows],
        }


def _dead_event(event: Event, error: str, scorer: str) -> DeadLetter:
    raw = orjson.dumps({"record_id": event.record_id, "key": event.key,
                        "features": event.features}, default=repr, option=_JSON)
    return DeadLetter(event.record_id, "event", raw, error, "ModelError", scorer,
                      event.partition, event.offset, event.key.encode())


def merge_metrics(parts: list[dict[str, Any]]) -> dict[str, float]:
    """Pipeline-wide progressive metrics from each scorer's; exact for one scorer.

    >>> merge_metrics([{"n_metric": 1, "metrics": {"accuracy": 1.0}},
    ...                {"n_metric": 3, "metrics": {"accuracy": 0.0}}])
    {'accuracy': 0.25}
    """
    parts = [p for p in parts if p["n_metric"]]
    if not parts:
        return {}
    if len(parts) == 1:
        return dict(parts[0]["metrics"])
    total = sum(p["n_metric"] for p in parts)
    out = {}
    for name in parts[0]["metrics"]:
        if name == "rmse":  # a root of a mean: average the squares
            out[name] = math.sqrt(sum(p["metrics"][name] ** 2 * p["n_metric"]
                                      for p in parts) / total)
        else:
            out[name] = sum(p["metrics"][name] * p["n_metric"] for p in parts) / total
    return out
