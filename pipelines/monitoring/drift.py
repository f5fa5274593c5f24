"""Drift detection: River's detectors on each arm's error stream, and each feature's
population-stability index against a reference window.

Runtime-free. A scorer keeps one :class:`DriftWatch`; the scoring loop hands it, once
per batch, the gains of the labels each arm received (:meth:`DriftWatch.absorb`: 1.0
for a right class, 0.0 for a wrong one, minus the absolute error of a regressor) and a
sample of the events it scored (:meth:`DriftWatch.sample`). The error stream (``1 -
gain``, or ``-gain``) feeds the arm's detector; an alarm is kept, with the numbers
behind it, until the Supervisor gathers it (:meth:`DriftWatch.stats`). Only a rise of
the error is an alarm: ADWIN's cut is kept when the newer window's mean is above the
older one's; PageHinkley looks upward; DDM and EDDM only ever look for more errors.

>>> from pipelines.monitoring.config import DriftDetectionConfig
>>> watch = DriftWatch(DriftDetectionConfig(grace_labels=0), task="binary")
>>> watch.absorb("p/v1", "live", [1.0] * 3000)            # right every time
>>> watch.absorb("p/v1", "live", [0.0, 1.0, 1.0] * 1000)  # then wrong a third of the time
>>> alarm = watch.stats()["alarms"][0]
>>> alarm["kind"], alarm["detector"], alarm["version"], 3000 < alarm["at_label"] < 3300
('concept', 'adwin', 'p/v1', True)
>>> round(alarm["error_before"], 2), alarm["error_after"] > alarm["error_before"]
(0.0, True)
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

from pipelines.monitoring.config import DetectorKind, DriftDetectionConfig, FeatureDriftConfig

__all__ = ["DriftWatch", "ErrorStream", "WindowThreshold", "make_detector", "psi"]

MAX_ALARMS = 100
"""Alarms a scorer keeps (the newest): the Supervisor gathers them every second."""


class WindowThreshold:
    """The trivial baseline: a fixed window's error rate above the first full window's
    by more than ``threshold`` (tumbling windows of ``size``; after an alarm the next
    window is the new reference). River's detector interface (``update``,
    ``drift_detected``).

    >>> d = WindowThreshold(size=100, threshold=0.1)
    >>> hits = []
    >>> for i, x in enumerate([0.0] * 300 + [1.0] * 100):
    ...     d.update(x)
    ...     if d.drift_detected:
    ...         hits.append(i)
    >>> hits
    [399]
    """

    def __init__(self, size: int = 1000, threshold: float = 0.1) -> None:
        self.size = size
        self.threshold = threshold
        self.reference: float | None = None
        self._n = 0
        self._sum = 0.0
        self.drift_detected = False

    def update(self, x: float) -> None:
        self.drift_detected = False
        self._n += 1
        self._sum += x
        if self._n < self.size:
            return
        mean = self._sum / self._n
        self._n, self._sum = 0, 0.0
        if self.reference is None:
            self.reference = mean
        elif mean > self.reference + self.threshold:
            self.drift_detected = True
            self.reference = None
        else:
            self.reference = min(self.reference, mean)


def make_detector(kind: DetectorKind, params: dict[str, Any]) -> Any:
    """A fresh detector of ``kind`` (River's, by name: ``from river.drift import *``
    fails in River 0.26) with ``params``."""
    if kind == "window":
        return WindowThreshold(**params)
    if kind == "adwin":
        from river.drift import ADWIN

        return ADWIN(**params)
    if kind == "page_hinkley":
        from river.drift import PageHinkley

        return PageHinkley(**{"mode": "up", **params})
    if kind == "kswin":
        from river.drift import KSWIN

        return KSWIN(**params)
    if kind == "ddm":
        from river.drift.binary import DDM

        return DDM(**params)
    from river.drift.binary import EDDM

    return EDDM(**params)


class ErrorStream:
    """One arm's error stream and its detector; the detector starts after ``grace``
    labels (a new model is still learning)."""

    __slots__ = ("_sum_since", "alarms", "binary", "detector", "grace", "kind", "n",
                 "n_since", "params", "recent")

    def __init__(self, kind: DetectorKind, params: dict[str, Any], *, binary: bool,
                 grace: int = 0) -> None:
        self.kind, self.params, self.binary, self.grace = kind, params, binary, grace
        self.detector = make_detector(kind, params)
        self.n = 0
        """Labels seen."""
        self.n_since = 0
        self._sum_since = 0.0
        """Errors since the detector started or last alarmed (the level before a rise)."""
        self.recent: list[float] = [0.0, 0.0]
        """An exponential average of the error (weight 1/500) and its weight so far."""
        self.alarms = 0

    def update_many(self, errors: Iterable[float]) -> list[dict[str, Any]]:
        """Feed ``errors`` in order; the alarms they raised, each with its numbers."""
        out: list[dict[str, Any]] = []
        det, grace, binary = self.detector, self.grace, self.binary
        adwin = self.kind == "adwin"
        recent = self.recent
        for e in errors:
            self.n += 1
            recent[0] += (e - recent[0]) * (1 / 500 if recent[1] >= 500 else 1 / (recent[1] + 1))
            recent[1] += 1
            if self.n <= grace:
                continue
            before = det.estimation if adwin else 0.0
            det.update(bool(e) if binary else e)
            self.n_since += 1
            self._sum_since += e
            if not det.drift_detected:
                continue
            level = self._sum_since / self.n_since
            after = det.estimation if adwin else recent[0]
            if adwin:  # ADWIN cuts at any change: only a rise is drift
                if after <= before:
                    continue
                level = before
            self.alarms += 1
            out.append({"at_label": self.n, "error_before": level, "error_after": after,
                        "width": int(det.width) if adwin else None})
            self.n_since, self._sum_since = 0, 0.0
        return out


def psi(reference: list[float], current: list[float], n_bins: int = 10) -> float:
    """The population-stability index of ``current`` against ``reference``, over bins at
    the reference's quantiles: ``sum((c - r) * ln(c / r))`` of the bins' shares (an
    empty bin counts as half an observation).

    >>> import random
    >>> rng = random.Random(0)
    >>> ref = [rng.gauss(0, 1) for _ in range(5000)]
    >>> psi(ref, [rng.gauss(0, 1) for _ in range(5000)]) < 0.02
    True
    >>> psi(ref, [rng.gauss(1, 1) for _ in range(5000)]) > 0.25
    True
    """
    edges = _edges(reference, n_bins)
    return _psi_counts(_counts(reference, edges), _counts(current, edges))


def _edges(reference: list[float], n_bins: int) -> list[float]:
    ordered = sorted(reference)
    n = len(ordered)
    return sorted({ordered[min(n - 1, (n * i) // n_bins)] for i in range(1, n_bins)})


def _counts(values: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect_right(edges, v)] += 1
    return counts


def _psi_counts(ref: list[int], cur: list[int]) -> float:
    n_ref, n_cur = sum(ref), sum(cur)
    total = 0.0
    for r, c in zip(ref, cur, strict=True):
        pr = max(r, 0.5) / n_ref
        pc = max(c, 0.5) / n_cur
        total += (pc - pr) * math.log(pc / pr)
    return total


class _FeatureWindow:
    """One version's reference window and current window of sampled features."""

    def __init__(self, cfg: FeatureDriftConfig) -> None:
        self.cfg = cfg
        self.reference: dict[str, list[float]] = {}
        self.n_reference = 0
        self.edges: dict[str, list[float]] = {}
        self.ref_counts: dict[str, list[int]] = {}
        self.current: dict[str, list[float]] = {}
        self.n_current = 0
        self.last: dict[str, float] = {}
        """The last window's PSI per feature."""

    def add(self, features: dict[str, Any]) -> list[dict[str, Any]]:
        cfg = self.cfg
        filling = self.n_reference < cfg.reference_size
        target = self.reference if filling else self.current
        for name, value in features.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                target.setdefault(name, []).append(float(value))
        if filling:
            self.n_reference += 1
            if self.n_reference == cfg.reference_size:
                self.edges = {f: _edges(v, cfg.n_bins) for f, v in self.reference.items()}
                self.ref_counts = {f: _counts(v, self.edges[f])
                                   for f, v in self.reference.items()}
            return []
        self.n_current += 1
        if self.n_current < cfg.window_size:
            return []
        alarms = []
        for name, values in self.current.items():
            if name not in self.edges:
                continue
            value = _psi_counts(self.ref_counts[name], _counts(values, self.edges[name]))
            self.last[name] = round(value, 6)
            if value > cfg.threshold:
                alarms.append({"feature": name, "psi": value})
        self.current, self.n_current = {}, 0
        return alarms


class DriftWatch:
    """A scorer's drift detectors: an :class:`ErrorStream` per arm version and a feature
    window per version, and the alarms not yet gathered."""

    def __init__(self, config: DriftDetectionConfig, *, task: str, scorer: str = "") -> None:
        self.config = config
        self.task = task
        self.scorer = scorer
        self.streams: dict[str, ErrorStream] = {}
        self.features: dict[str, _FeatureWindow] = {}
        self.alarms: list[dict[str, Any]] = []
        self.counts = {"concept": 0, "feature": 0}
        self._params = config.detector_params
        self._binary = config.detector in ("ddm", "eddm")
        self._regression = task == "regression"
        self._tick = 0

    def absorb(self, version: str, arm: str, gains: list[float]) -> None:
        """The gains of the labels ``arm`` (serving ``version``) received in a batch."""
        if not gains or not self.config.enabled:
            return
        stream = self.streams.get(version)
        if stream is None:
            stream = self.streams[version] = ErrorStream(
                self.config.detector, self._params, binary=self._binary,
                grace=self.config.grace_labels)
        errors = [-g for g in gains] if self._regression else [1.0 - g for g in gains]
        for alarm in stream.update_many(errors):
            self.counts["concept"] += 1
            self._keep({"kind": "concept", "detector": self.config.detector,
                        "version": version, "arm": arm, **alarm})

    def sample(self, version: str, rows: Iterable[dict[str, Any]]) -> None:
        """The features of the events ``version`` scored in a batch (one in
        ``sample_every`` is kept)."""
        cfg = self.config.features
        if not (cfg.enabled and self.config.enabled):
            return
        window = self.features.get(version)
        if window is None:
            window = self.features[version] = _FeatureWindow(cfg)
        every, tick = cfg.sample_every, self._tick
        for row in rows:
            tick += 1
            if tick % every:
                continue
            for alarm in window.add(row):
                self.counts["feature"] += 1
                self._keep({"kind": "feature", "detector": "psi", "version": version,
                            "arm": None, "at_label": self.streams[version].n
                            if version in self.streams else 0, **alarm})
        self._tick = tick

    def _keep(self, alarm: dict[str, Any]) -> None:
        alarm["scorer"] = self.scorer
        alarm["at"] = time.time()
        alarm["id"] = f"{self.scorer}:{alarm['version']}:{alarm['kind']}:" \
                      f"{alarm.get('feature') or alarm['detector']}:{alarm['at_label']}"
        self.alarms.append(alarm)
        del self.alarms[:-MAX_ALARMS]

    def forget(self, versions: set[str]) -> None:
        """Drop the detectors of versions no longer served (a finished deployment)."""
        for held in (self.streams, self.features):
            for v in [v for v in held if v not in versions]:
                del held[v]

    def stats(self) -> dict[str, Any]:
        """Plain data: alarm counts, the newest alarms, each arm's labels and error level."""
        return {"alarms_total": dict(self.counts), "alarms": list(self.alarms),
                "streams": {v: {"labels": s.n, "error": round(s.recent[0], 6),
                                "alarms": s.alarms} for v, s in self.streams.items()},
                "psi": {v: dict(w.last) for v, w in self.features.items() if w.last}}
