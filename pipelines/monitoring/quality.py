"""Serving quality per model version and arm, on labels as they arrive: does a version
serve as well as it did when it was registered?

Runtime-free. Each scorer keeps a :class:`QualityTracker`, fed once per batch with the
records whose label arrived in it (only labeled records count: a label still on its
way is never guessed). Per arm it keeps metrics over two sliding windows with River's
``utils.Rolling`` and ``utils.TimeRolling``: the last ``window_events`` labels and the
labels that arrived in the last ``window_s`` seconds; accuracy and log loss for
classifiers (both windows), ROC AUC for binary ones and macro F1 for multiclass ones
(River's ``RollingROCAUC`` and ``MacroF1``, count window), MAE and RMSE for regression
(both windows). It also
keeps how long labels took to arrive (a mergeable sketch) and, for the served
predictions, the fairness counts (:mod:`pipelines.monitoring.fairness`).

The supervisor merges the scorers' figures (:func:`merge_quality`): windowed metrics
weighted by each scorer's labels in the window (so the count window is the last
``window_events`` labels *per scorer*; ROC AUC and macro F1 merged this way are an
approximation), label delay merged exactly at the sketch's 1% accuracy, and beside each
arm the metrics its version was registered with and the gap (window minus registered).

>>> from types import SimpleNamespace as NS
>>> from pipelines.arms import Arm
>>> from pipelines.config import QualityConfig
>>> from pipelines.protocol import ArmSpec
>>> tracker = QualityTracker(QualityConfig(window_events=2), "binary")
>>> arm = Arm(ArmSpec("live", "v1", "live", 1.0), None, "binary")
>>> arm.counts["scored"] = 4
>>> def labeled(p, label, t):  # what the scorer hands over: (held record, label, arrival)
...     event = NS(features={}, read_at=t - 0.5)
...     return NS(event=event, arm=arm, y_pred={True: p, False: 1 - p},
...               prediction=p > 0.5, shadows=None), label, t
>>> tracker.observe([labeled(0.9, True, 10.0), labeled(0.8, False, 10.0)])
>>> tracker.observe([labeled(0.3, False, 11.0)])
>>> q = merge_quality([tracker.stats()], {"v1": {"accuracy": 1.0}}, pipeline="p")
>>> live = q["arms"][0]
>>> live["labeled"], live["window"]["n"], live["window"]["accuracy"], live["label_ratio"]
(3, 2, 0.5, 0.75)
>>> live["window_time"]["n"], live["gap"]["accuracy"], round(q["label_delay_s"]["p50"], 2)
(3, -0.5, 0.5)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from river import utils

from pipelines.config import QualityConfig
from pipelines.models import Task
from pipelines.monitoring.fairness import Groups, fairness_figures
from pipelines.sinks import LatencySketch

__all__ = ["Gauge", "QualityTracker", "References", "merge_quality", "quality_gauges",
           "reference_of"]

_EPS = 1e-15  # River's clamping of probabilities in its log loss
MAX_ARMS = 16
"""Arms kept per scorer (the current ones and the most recent earlier ones)."""


class _Sums:
    """Weighted sums of two per-label figures, what ``Rolling`` and ``TimeRolling`` roll:
    one rolled entry per label (or batch) carries both figures."""

    __slots__ = ("a", "b", "n")

    def __init__(self) -> None:
        self.n = self.a = self.b = 0.0

    def update(self, a: float, b: float, w: float = 1.0) -> None:
        self.n += w
        self.a += a * w
        self.b += b * w

    def revert(self, a: float, b: float, w: float = 1.0) -> None:
        self.n -= w
        self.a -= a * w
        self.b -= b * w


class _Windows:
    """One arm's metrics over the last ``n`` labels and over the last ``period``.

    Accuracy, log loss, MAE and MSE are means of a per-label figure (with River's
    clamping): sums under ``utils.Rolling`` for the count window, and under
    ``utils.TimeRolling`` fed once per batch with the batch's means and weight (its
    expiry slices its lists, so one entry per label would copy the window every label).
    ROC AUC is River's exact ``RollingROCAUC`` and macro F1 its ``MacroF1`` under
    ``Rolling``, in the count window only: River's threshold ``ROCAUC`` reverted label
    by label cost ~33 us a label, more than the model.
    """

    __slots__ = ("auc", "by_count", "by_time", "f1", "n_batch", "names", "sums", "task")

    def __init__(self, task: str, n: int, period: dt.timedelta) -> None:
        # river.metrics imports scipy.stats (~0.4 s): only a scorer's windows need it,
        # not the audit commands that import this module through pipelines.scoring
        from river import metrics as rm

        self.task = task
        self.names = ("mae", "mse") if task == "regression" else ("accuracy", "log_loss")
        self.by_count = utils.Rolling(_Sums, window_size=n)
        self.by_time = utils.TimeRolling(_Sums, period=period)
        self.auc = rm.RollingROCAUC(window_size=n) if task == "binary" else None
        self.f1 = utils.Rolling(rm.MacroF1, window_size=n) if task == "multiclass" else None
        self.sums = [0.0, 0.0]
        self.n_batch = 0

    def update(self, label: Any, y_pred: Any, prediction: Any) -> None:
        if self.task == "regression":
            err = label - y_pred
            a, b = abs(err), err * err
        else:
            a = 1.0 if label == prediction else 0.0
            p = (y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred) \
                if self.task == "binary" else y_pred.get(label, 0.0)
            if self.auc is not None:
                self.auc.update(label, p)
            if self.task == "binary" and not label:
                p = 1.0 - p
            b = -math.log(_EPS if p < _EPS else (1 - _EPS if p > 1 - _EPS else p))
            if self.f1 is not None:
                self.f1.update(label, prediction)
        self.by_count.update(a, b)
        sums = self.sums
        sums[0] += a
        sums[1] += b
        self.n_batch += 1

    def flush(self, t: dt.datetime) -> None:
        """The batch is done: its labels enter the time window at ``t``."""
        n = self.n_batch
        if n:
            self.by_time.update(self.sums[0] / n, self.sums[1] / n, w=n, t=t)
            self.sums = [0.0, 0.0]
            self.n_batch = 0

    def get(self) -> tuple[dict[str, float], dict[str, float]]:
        """(by count, by time): ``n`` labels in the window, and each metric."""
        by_count: dict[str, float] = {"n": len(self.by_count.window)}
        by_time: dict[str, float] = {"n": round(self.by_time.obj.n)}
        for out, roll in ((by_count, self.by_count.obj), (by_time, self.by_time.obj)):
            if out["n"]:
                first, second = self.names
                out[first] = roll.a / roll.n
                out[second] = roll.b / roll.n
                if second == "mse":
                    out["rmse"] = math.sqrt(max(out.pop("mse"), 0.0))
        if by_count["n"]:
            if self.auc is not None:
                by_count["roc_auc"] = float(self.auc.get())
            if self.f1 is not None:
                by_count["macro_f1"] = float(self.f1.obj.get())
        return by_count, by_time


class _ArmQuality:
    __slots__ = ("arm", "labeled", "windows")

    def __init__(self, arm: Any, config: QualityConfig, task: str) -> None:
        self.arm = arm
        self.labeled = 0
        self.windows = _Windows(task, config.window_events,
                                dt.timedelta(seconds=config.window_s))

    def stats(self) -> dict[str, Any]:
        arm = self.arm
        by_count, by_time = self.windows.get()
        return {"arm": arm.name, "version": arm.version, "role": arm.role,
                "scored": arm.counts["scored"], "labeled": self.labeled,
                "window": by_count, "window_time": by_time}


class QualityTracker:
    """One scorer's serving quality per arm, label delay and fairness counts."""

    def __init__(self, config: QualityConfig, task: Task) -> None:
        self._config = config
        self._task = task
        self._arms: dict[Any, _ArmQuality] = {}
        self._delay = LatencySketch()
        """Seconds from a record's arrival to its label's (0 for a label that came first)."""
        self._groups = Groups(config.groups, config.positive_label)

    def observe(self, labeled: Sequence[tuple[Any, Any, float]]) -> None:
        """One batch's labeled records: (the scored record held for its label, the label,
        when the label arrived); the served arm's and the shadows' predictions count."""
        arms, touched = self._arms, []
        delays = []
        groups = self._groups if self._groups else None
        for held, label, arrived in labeled:
            for arm, y_pred, prediction in ((held.arm, held.y_pred, held.prediction),
                                            *(held.shadows or ())):
                if y_pred is None or y_pred == {}:  # no prediction to hold against it
                    continue
                q = arms.get(arm)
                if q is None:
                    q = arms[arm] = self._new(arm)
                windows = q.windows
                if not windows.n_batch:
                    touched.append(windows)
                q.labeled += 1
                windows.update(label, y_pred, prediction)
            event = held.event
            delays.append(max(arrived - event.read_at, 0.0))
            if groups is not None:
                groups.observe(event.features, held.prediction, label)
        t = dt.datetime.fromtimestamp(max(a for _, _, a in labeled))
        for windows in touched:
            windows.flush(t)
        self._delay.add_many(delays)

    def fresh(self) -> QualityTracker:
        """A tracker of the same config with nothing seen (after a restore)."""
        return QualityTracker(self._config, self._task)

    def _new(self, arm: Any) -> _ArmQuality:
        if len(self._arms) >= MAX_ARMS:  # the earliest arm seen goes
            del self._arms[next(iter(self._arms))]
        return _ArmQuality(arm, self._config, self._task)

    def stats(self, checkpoint: str | None = None) -> dict[str, Any]:
        """What the scorer reports (plain data and one picklable sketch). ``checkpoint``:
        the committed checkpoint the live model continues from."""
        cfg = self._config
        return {"window_events": cfg.window_events, "window_s": cfg.window_s,
                "arms": [q.stats() for q in self._arms.values()], "delay": self._delay,
                "fairness": self._groups.counts(), "continues_from": checkpoint}


def reference_of(arm: dict[str, Any], continues_from: str | None, pipeline: str) -> str:
    """The registry version whose registered metrics an arm is held against: the live
    arm's model continues from the last committed checkpoint (a version of its own);
    any other arm's is the version it serves."""
    if arm["role"] == "live" and continues_from:
        return f"{pipeline}/{continues_from}"
    return str(arm["version"])


class References:
    """The registered metrics of the versions the arms are held against, looked up once
    each (``lookup``: a version id to its metrics, None if not registered). A version of
    the pipeline's own (a checkpoint, a trained model) that is not found yet is asked for
    again later: a checkpoint is registered just after the scorers continue from it.

    >>> refs = References(lambda v: {"accuracy": 0.9} if v == "p/ckpt-1" else None, "p")
    >>> stats = {"arms": [{"arm": "live", "version": "v0", "role": "live"}],
    ...          "continues_from": "ckpt-1"}
    >>> refs.resolve([stats])
    {'p/ckpt-1': {'accuracy': 0.9}}
    """

    def __init__(self, lookup: Callable[[str], dict[str, Any] | None] | None,
                 pipeline: str) -> None:
        self._lookup = lookup
        self._pipeline = pipeline
        self._known: dict[str, dict[str, Any] | None] = {}

    def resolve(self, parts: Sequence[dict[str, Any] | None]) -> dict[str, dict[str, Any] | None]:
        """The references of the arms in ``parts`` (the scorers' quality stats); blocks
        on the registry for the ones not known yet."""
        wanted = {reference_of(a, p.get("continues_from"), self._pipeline)
                  for p in parts if p for a in p["arms"]}
        for version in wanted - self._known.keys():
            found = None
            if self._lookup is not None:
                try:
                    found = self._lookup(version)
                except Exception:  # the registry is away: no reference this time
                    continue
            if found is not None or not version.startswith(f"{self._pipeline}/"):
                self._known[version] = found
        return {v: self._known.get(v) for v in wanted}


def merge_quality(scorers: Sequence[dict[str, Any] | None],
                  references: dict[str, dict[str, Any] | None], *, pipeline: str
                  ) -> dict[str, Any]:
    """The pipeline's quality figures from each scorer's :meth:`QualityTracker.stats`;
    ``references`` maps version ids to their registered metrics (None: not registered)."""
    parts = [s for s in scorers if s]
    if not parts:
        return {}
    arms: dict[tuple[str, str], dict[str, Any]] = {}
    for part in parts:
        for a in part["arms"]:
            key = (a["arm"], a["version"])
            out = arms.setdefault(key, {"arm": a["arm"], "version": a["version"],
                                        "role": a["role"], "scored": 0, "labeled": 0,
                                        "reference": None, "_w": {}, "_t": {}})
            out["scored"] += a["scored"]
            out["labeled"] += a["labeled"]
            ref = reference_of(a, part.get("continues_from"), pipeline)
            if out["reference"] is None or ref != a["version"]:
                out["reference"] = ref
            _accumulate(out["_w"], a["window"])
            _accumulate(out["_t"], a["window_time"])
    delay = LatencySketch()
    for part in parts:
        delay.merge(part["delay"])
    rows = []
    for out in arms.values():
        out["window"] = _weighted(out.pop("_w"))
        out["window_time"] = _weighted(out.pop("_t"))
        out["label_ratio"] = out["labeled"] / out["scored"] if out["scored"] else None
        registered = references.get(out["reference"])
        out["registered"] = registered or None
        out["gap"] = {k: out["window"][k] - v for k, v in (registered or {}).items()
                      if k in out["window"] and isinstance(v, int | float)}
        rows.append(out)
    first = parts[0]
    return {"window_events": first["window_events"], "window_s": first["window_s"],
            "arms": rows, "label_delay_s": delay.summary(),
            "fairness": fairness_figures([p["fairness"] for p in parts])}


def _accumulate(acc: dict[str, float], window: dict[str, float]) -> None:
    n = window.get("n", 0)
    acc["n"] = acc.get("n", 0) + n
    for k, v in window.items():
        if k != "n":
            acc[k] = acc.get(k, 0.0) + v * n


def _weighted(acc: dict[str, float]) -> dict[str, float]:
    n = acc.get("n", 0)
    out: dict[str, float] = {"n": int(n)}
    if n:
        out.update({k: v / n for k, v in acc.items() if k != "n"})
    return out


class Gauge(NamedTuple):
    """One figure for an exporter: a name (OpenTelemetry style), its unit, its labels."""

    name: str
    unit: str
    labels: dict[str, str]
    value: float


def quality_gauges(quality: dict[str, Any]) -> list[Gauge]:
    """The merged quality figures as plain gauges (bounded labels: arm, version, window,
    group column and group), for the telemetry exporters.

    >>> q = {"arms": [{"arm": "live", "version": "v0", "labeled": 5, "label_ratio": 1.0,
    ...                "window": {"n": 5, "accuracy": 0.8}, "window_time": {"n": 0},
    ...                "gap": {"accuracy": -0.1}}],
    ...      "label_delay_s": {"p50": 0.2, "p99": 0.5, "max": 0.6},
    ...      "fairness": {"age": {"groups": {"<40": {"n": 3, "positive_rate": 0.5,
    ...                   "accuracy": 1.0, "label_rate": 0.5}},
    ...                   "gap": {"positive_rate": 0.0, "accuracy": 0.0}}}}
    >>> for g in quality_gauges(q)[:3]:
    ...     print(g.name, g.labels.get("window"), g.value)
    riffle.quality.accuracy events 0.8
    riffle.quality.gap.accuracy None -0.1
    riffle.labels.labeled None 5
    """
    out: list[Gauge] = []
    add: Callable[..., None] = lambda name, unit, labels, v: out.append(  # noqa: E731
        Gauge(name, unit, labels, v)) if v is not None else None
    for a in quality.get("arms", []):
        base = {"arm": a["arm"], "model_version": a["version"]}
        for window, figures in (("events", a["window"]), ("time", a["window_time"])):
            for k, v in figures.items():
                if k != "n":
                    add(f"riffle.quality.{k}", "1", {**base, "window": window}, v)
        for k, v in a.get("gap", {}).items():
            add(f"riffle.quality.gap.{k}", "1", base, v)
        add("riffle.labels.labeled", "{label}", base, a["labeled"])
        add("riffle.labels.arrival_ratio", "1", base, a["label_ratio"])
    for q, v in quality.get("label_delay_s", {}).items():
        add("riffle.labels.delay", "s", {"quantile": q}, v)
    for column, fig in quality.get("fairness", {}).items():
        for group, g in fig["groups"].items():
            for k in ("positive_rate", "accuracy"):
                add(f"riffle.fairness.{k}", "1", {"group_column": column, "group": group},
                    g[k])
        for k, v in fig["gap"].items():
            add("riffle.fairness.gap", "1", {"group_column": column, "metric": k}, v)
    return out
