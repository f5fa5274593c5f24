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

from pipelines.arms import Arm, Router, new_metrics
from pipelines.config import ScoringConfig
from pipelines.labels import LabelBuffer
from pipelines.models import Task, build_model, task_of
from pipelines.protocol import ArmSpec, Batch, DeadLetter, Deployment, Event, Feedback, SinkBatch

__all__ = ["ScorerCore", "live_model_of", "merge_metrics", "task_of_model"]

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class _Scored(NamedTuple):
    features: dict[str, Any]
    y_pred: Any
    """What the metrics compare with the label: the class probabilities (classifiers),
    else the predicted value."""
    prediction: Any
    arm: Arm
    """The arm that served the prediction."""
    shadows: tuple[tuple[Arm, Any, Any], ...] | None = None
    """Shadow arms' (arm, y_pred, prediction) for the same record."""


def live_model_of(state: dict[str, Any]) -> Any:
    """The live model in a scorer's checkpoint part (what deploying a River version loads)."""
    return state["arms"][0].model


class ScorerCore:
    """One scorer's models (the arms of its deployment), pending labels and metrics."""

    def __init__(self, config: ScoringConfig, *, name: str, metrics_window: int | None = None,
                 clock: Any = time.monotonic) -> None:
        self.name = name
        model = build_model(config.model)
        self.task = task_of(model)
        self.checkpoint: str | None = None
        """The last committed checkpoint this model continues from (None before the first)."""
        self.deployment = Deployment.single(config.model.version)
        self.arms = [Arm(self.deployment.arms[0], model, self.task)]
        self.previous: Arm | None = None
        self.labels: LabelBuffer[_Scored] = LabelBuffer(
            max_pending=config.max_pending_labels, ttl_s=config.label_ttl_s, clock=clock)
        self._window = metrics_window or config.metrics_window
        self._windows: list[list[float]] = []  # [labeled count, correct count or abs error sum]
        self._metrics = new_metrics(self.task)
        """Of the served predictions (whichever arm served each)."""
        self._n_metric = 0
        self.counts = {"scored": 0, "learned": 0, "feedback": 0, "model_errors": 0}
        self._configure()

    @property
    def model(self) -> Any:
        """The live model."""
        return self.arms[0].model

    def _configure(self) -> None:
        arms = self.arms
        self._router = Router(self.deployment.arms) if len(arms) > 1 and any(
            a.role in ("canary", "ab") for a in arms) else None
        self._shadows = [a for a in arms if a.role == "shadow"]
        self._learners = [a for a in arms[1:] if a.learns]
        self._batched = any(a.batched for a in arms)
        self._compare = len(arms) > 1
        if self.previous is not None and self.previous.learns:
            self._learners.append(self.previous)

    # -- the data path -----------------------------------------------------------------
    def process(self, batch: Batch) -> SinkBatch:
        """Score the events and learn from the feedback of ``batch``, in order."""
        lines: list[bytes] = []
        keys: list[str] = []
        versions: list[str] = []
        read_at: list[float] = []
        shadow_lines: list[bytes] = []
        dead: list[DeadLetter] = []
        classifier = self.task != "regression"
        arms, router, shadows = self.arms, self._router, self._shadows
        labels, counts = self.labels, self.counts
        name, checkpoint = self.name, self.checkpoint
        live = arms[0]
        labels.expire()  # what timed out before this batch arrived cannot be learned from it
        pre = self._prescore(batch, classifier) if self._batched else None
        for i, item in enumerate(batch.items):
            if type(item) is Event:
                arm = arms[router.arm_of(item.key)] if router is not None else live
                try:
                    if pre is not None and (i, arm) in pre:
                        score, prediction = pre[i, arm]
                    else:
                        score, prediction = arm.score(item.features, classifier)
                except Exception as e:  # a record the model cannot take is data, not a crash
                    counts["model_errors"] += 1
                    arm.counts["errors"] += 1
                    dead.append(_dead_event(item, f"model error: {type(e).__name__}: {e}", name))
                    continue
                counts["scored"] += 1
                lines.append(orjson.dumps({
                    "record_id": item.record_id, "key": item.key, "score": score,
                    "prediction": prediction, "model_version": arm.version, "arm": arm.name,
                    "checkpoint": checkpoint, "scorer": name,
                    "event_time": item.event_time, "scored_at": time.time(),
                    "partition": item.partition, "offset": item.offset,
                }, option=_JSON))
                keys.append(item.key)
                versions.append(arm.version)
                read_at.append(item.read_at)
                dark = self._shadow_scores(item, i, pre, shadows, classifier,
                                           shadow_lines) if shadows else None
                scored = _Scored(item.features, score, prediction, arm, dark)
                early = labels.add(item.record_id, scored)
                if early is not None:  # its label came first
                    self._learn(item, (scored, early[0]), dead)
            else:
                assert type(item) is Feedback
                counts["feedback"] += 1
                held = labels.match(item.record_id, item.label)
                if held is not None:
                    self._learn(item, (held, item.label), dead)
        return SinkBatch(lines, keys, versions, read_at, dead, shadow_lines)

    def _prescore(self, batch: Batch, classifier: bool
                  ) -> dict[tuple[int, Arm], tuple[Any, Any]]:
        """Scores of the batch's events for the frozen (batch-scoring) arms, by item index;
        a batch a model refuses as a whole is scored one by one (bad rows dead-lettered)."""
        router, arms = self._router, self.arms
        wanted: dict[Arm, list[int]] = {}
        for i, item in enumerate(batch.items):
            if type(item) is not Event:
                continue
            served = arms[router.arm_of(item.key)] if router is not None else arms[0]
            for arm in (served, *self._shadows):
                if arm.batched:
                    wanted.setdefault(arm, []).append(i)
        out: dict[tuple[int, Arm], tuple[Any, Any]] = {}
        for arm, index in wanted.items():
            rows = [batch.items[i].features for i in index]  # type: ignore[union-attr]
            try:
                scored = arm.score_many(rows, classifier)
            except Exception:
                continue
            out.update(zip(((i, arm) for i in index), scored, strict=True))
        return out

    def _shadow_scores(self, item: Event, i: int,
                       pre: dict[tuple[int, Arm], tuple[Any, Any]] | None,
                       shadows: list[Arm], classifier: bool,
                       out: list[bytes]) -> tuple[tuple[Arm, Any, Any], ...]:
        dark = []
        for arm in shadows:
            try:
                if pre is not None and (i, arm) in pre:
                    score, prediction = pre[i, arm]
                else:
                    score, prediction = arm.score(item.features, classifier)
            except Exception:  # a shadow's failure never touches the live path
                arm.counts["errors"] += 1
                continue
            dark.append((arm, score, prediction))
            out.append(orjson.dumps({
                "record_id": item.record_id, "key": item.key, "score": score,
                "prediction": prediction, "model_version": arm.version, "arm": arm.name,
                "scorer": self.name, "event_time": item.event_time, "scored_at": time.time(),
                "partition": item.partition, "offset": item.offset}, option=_JSON))
        return tuple(dark)

    def _learn(self, item: Event | Feedback, held_label: tuple[_Scored, Any],
               dead: list[DeadLetter]) -> None:
        held, label = held_label
        y_pred, prediction = held.y_pred, held.prediction
        # As River's progressive validation: no metric update for an empty prediction.
        if y_pred is not None and y_pred != {}:
            self._update_metrics(label, y_pred, prediction)
        # Per-arm quality only matters beside another arm (one arm's is the pipeline's).
        gain = held.arm.observe(label, y_pred, prediction) if self._compare else None
        if held.shadows:
            for arm, s_pred, s_prediction in held.shadows:
                s_gain = arm.observe(label, s_pred, s_prediction)
                if gain is not None and s_gain is not None:
                    arm.compare(s_gain, gain)
        features = held.features
        for arm in self._learners:  # candidates and the warm previous version learn too
            try:
                arm.model.learn_one(features, label)
            except Exception:
                arm.counts["errors"] += 1
        try:
            self.arms[0].model.learn_one(features, label)
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

    # -- the control path --------------------------------------------------------------
    def apply(self, deployment: Deployment, models: dict[str, Any]) -> dict[str, Any]:
        """Serve ``deployment`` from the next event on (call it between batches).

        Arms whose version this scorer already holds (as an arm or as the warm previous
        version) keep their model and go on learning; ``models`` has the others, loaded.
        Returns how many events this scorer had scored before the change.
        """
        held = {a.version: a for a in self.arms}
        if self.previous is not None:
            held.setdefault(self.previous.version, self.previous)

        def arm_for(spec: ArmSpec) -> Arm:
            arm = held.pop(spec.version, None)
            if arm is None:
                if spec.version not in models:
                    raise KeyError(f"{self.name}: no model for version {spec.version}")
                model = models[spec.version]
                arm = Arm(spec, model, self._task_of(spec.version, model))
            arm.respec(spec)
            return arm

        arms = [arm_for(spec) for spec in deployment.arms]
        previous = None
        if deployment.previous is not None:
            previous = arm_for(ArmSpec("previous", deployment.previous, "previous", 0.0))
        for arm in arms:
            arm.reset_comparison()
        self.arms, self.previous, self.deployment = arms, previous, deployment
        self._configure()
        return {"name": self.name, "scored": self.counts["scored"]}

    def _task_of(self, version: str, model: Any) -> Task:
        task = task_of_model(model)
        if (task == "regression") != (self.task == "regression"):
            raise ValueError(f"{self.name}: version {version} is a {task} model; this "
                             f"pipeline's is {self.task}")
        return task

    # -- checkpoints -------------------------------------------------------------------
    _STATE = ("arms", "previous", "deployment", "labels", "_windows", "_metrics",
              "_n_metric", "counts")

    def snapshot(self) -> dict[str, Any]:
        """Everything learned so far: the arms' models, the pending labels, metrics, counts."""
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot` (of a scorer of the same name and config)."""
        for name in self._STATE:
            setattr(self, name, state[name])
        self._configure()

    def _arm_stats(self) -> list[dict[str, Any]]:
        if self._compare:
            return [a.stats() for a in self.arms]
        return [_single_arm_stats(self.arms[0], self)]

    # -- what the supervisor asks ------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, metrics and windows of this scorer (plain data, cheap to send)."""
        return {
            **self.counts, **self.labels.counts,
            "labels_pending": self.labels.n_pending, "labels_held_early": self.labels.n_early,
            "task": self.task, "n_metric": self._n_metric,
            "metrics": {k: m.get() for k, m in self._metrics.items()},
            "windows": [list(w) for w in self._windows],
            "deployment": self.deployment.mode,
            "arms": self._arm_stats(),
            "previous": self.previous.version if self.previous is not None else None,
        }


def _single_arm_stats(arm: Arm, core: ScorerCore) -> dict[str, Any]:
    """A lone live arm's figures are the pipeline's own (it is not observed twice)."""
    out = arm.stats()
    out["labeled"] = core._n_metric
    out["metrics"] = {k: m.get() for k, m in core._metrics.items()}
    return out


def task_of_model(model: Any) -> Task:
    """What a served model predicts: a River model's task, or a batch model's own."""
    task = getattr(model, "task", None)
    return task if isinstance(task, str) else task_of(model)  # type: ignore[return-value]


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
