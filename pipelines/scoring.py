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

import time
from typing import Any, NamedTuple

import orjson

from pipelines.arms import Arm, Router
from pipelines.audit.reasons import Reasons, ScoredWithReasons, reasons_for, scored_with_reasons
from pipelines.audit.trail import AuditRows
from pipelines.config import ScoringConfig
from pipelines.labels import LabelBuffer
from pipelines.metrics import Progressive
from pipelines.metrics import merge_metrics as _merge
from pipelines.models import Task, build_model, task_of
from pipelines.monitoring.drift import DriftWatch
from pipelines.monitoring.quality import QualityTracker
from pipelines.protocol import ArmSpec, Batch, DeadLetter, Deployment, Event, Feedback, SinkBatch

__all__ = ["ScorerCore", "live_model_of", "merge_metrics", "task_of_model"]

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class _Scored(NamedTuple):
    event: Event
    """The scored event (its features are what the arms learn from)."""
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
                 clock: Any = time.monotonic, audit: bool = False) -> None:
        self.name = name
        self.audit: AuditRows | None = AuditRows() if audit else None
        """The audit trail's and training log's rows since the shell last took them."""
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
        self._window_now: list[float] = [self._window, 0.0]  # full: the first label opens one
        self._metrics = Progressive(self.task)
        """Of the served predictions (whichever arm served each)."""
        self.quality = QualityTracker(config.quality, self.task) if config.quality.enabled \
            else None
        """Serving quality per arm on the labels as they arrive (not checkpointed: its
        windows start afresh after a restore)."""
        self._labeled: list[tuple[_Scored, Any, float]] = []
        """This batch's labeled records, for the quality tracker (one call per batch)."""
        self._top_k = config.explain.top_k
        self._reasons: dict[Arm, Reasons | None] = {}
        self._explained: ScoredWithReasons | None = None
        """The live arm's score and reasons in one pass, where its model has that."""

        self.drift = DriftWatch(config.drift, task=self.task, scorer=name)
        """Drift detectors: each arm's error stream, the live version's features."""
        self._gains: dict[Arm, list[float]] = {}
        """The gains each arm got in this batch (fed to :attr:`drift` after it)."""
        self.counts = {"scored": 0, "learned": 0, "feedback": 0, "model_errors": 0,
                       "examples": 0}
        """``examples``: labeled examples learned by any arm (the training log's ``seq``)."""
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
        top_k = self._top_k
        self._reasons = {a: reasons_for(a.model, top_k) if top_k and not a.batched else None
                         for a in arms}
        self._explained = (scored_with_reasons(arms[0].model, top_k)
                           if top_k and not arms[0].batched else None)
        if self.previous is not None and self.previous.learns:
            self._learners.append(self.previous)

    # -- the data path -----------------------------------------------------------------
    def process(self, batch: Batch) -> SinkBatch:
        """Score the events and learn from the feedback of ``batch``, in order."""
        self.labels.expire()  # what timed out before this batch arrived cannot be learned
        if self._router is None and not self._shadows and not self._batched:
            out = self._process_live(batch)
        else:
            out = self._process_arms(batch)
        if self._labeled:
            if self.quality is not None:
                self.quality.observe(self._labeled)
            self._labeled = []
        self._watch_drift(batch)
        return out

    def _watch_drift(self, batch: Batch) -> None:
        """Once per batch: the arms' gains and a sample of the features to the detectors."""
        drift = self.drift
        for arm, gains in self._gains.items():
            drift.absorb(arm.version, arm.name, gains)
        self._gains = {}
        drift.sample(self.arms[0].version,
                     (item.features for item in batch.items if type(item) is Event))

    def _process_live(self, batch: Batch) -> SinkBatch:
        """The hot path: one live model serves every event (no other arm to consult)."""
        lines: list[bytes] = []
        keys: list[str] = []
        read_at: list[float] = []
        dead: list[DeadLetter] = []
        live = self.arms[0]
        model, version, arm_name = live.model, live.version, live.name
        classifier = self.task != "regression"
        predict = model.predict_proba_one if classifier else model.predict_one
        hold, match, learn = self.labels.add, self.labels.match, self._learn
        name, checkpoint, dumps, clock = self.name, self.checkpoint, orjson.dumps, time.time
        timer, new = time.perf_counter, tuple.__new__
        observe, learners = self._observe, self._learners
        labeled = self._labeled.append if self.quality is not None else None
        learn_one = model.learn_one
        counts, role = self.counts, live.role
        reasons = self._reasons.get(live)
        explained = self._explained
        why: list[list[Any]] | None = None
        audit = self.audit
        trail = audit.trail.append if audit is not None else None
        training = audit.training.append if audit is not None else None
        n_scored = n_feedback = n_learned = 0
        spent_total = spent_max = 0.0
        gains = self._gains.setdefault(live, [])
        gained = gains.append
        for item in batch.items:
            if type(item) is Event:
                started = timer()
                try:
                    if explained is None:
                        score = predict(item.features)
                    else:  # the reasons from the same scaling (their time counts here)
                        score, why = explained(item.features)
                except Exception as e:  # a record the model cannot take is data, not a crash
                    self._model_error(item, live, e, dead)
                    continue
                spent = timer() - started
                spent_total += spent
                if spent > spent_max:
                    spent_max = spent
                prediction = (max(score, key=score.get) if score else None) if classifier else score
                n_scored += 1
                now = clock()
                record = {
                    "record_id": item.record_id, "key": item.key, "score": score,
                    "prediction": prediction, "model_version": version, "arm": arm_name,
                    "checkpoint": checkpoint, "scorer": name, "event_time": item.event_time,
                    "scored_at": now, "partition": item.partition, "offset": item.offset,
                }
                if why is not None:
                    record["reasons"] = why
                elif reasons is not None:
                    record["reasons"] = reasons(item.features, prediction)
                line = dumps(record, option=_JSON)
                lines.append(line)
                keys.append(item.key)
                read_at.append(item.read_at)
                if trail is not None:
                    trail((item, line, version, arm_name, role, now, counts["examples"]))
                scored = new(_Scored, (item, score, prediction, live, None))
                early = hold(item.record_id, scored)
                if early is not None:  # its label came first
                    learn(item, scored, early[0], dead)
            else:
                n_feedback += 1
                label = item.label  # type: ignore[union-attr]
                held = match(item.record_id, label)
                if held is None:
                    continue
                # _learn(), inlined for the one-arm case: metrics, window, then learning.
                y_pred = held.y_pred
                if y_pred is not None and y_pred != {}:
                    gained(observe(label, y_pred, held.prediction))
                    if labeled is not None:
                        labeled((held, label, item.read_at))
                event = held.event
                features = event.features
                for arm in learners:  # the warm previous version learns too
                    try:
                        arm.model.learn_one(features, label)
                    except Exception:
                        arm.counts["errors"] += 1
                    else:
                        if training is not None:
                            seq = counts["examples"]
                            training((event, label, arm.version, arm.name, seq, clock()))
                            counts["examples"] = seq + 1
                try:
                    learn_one(features, label)
                except Exception as e:
                    self._learn_error(item, label, e, dead)
                    continue
                n_learned += 1
                if training is not None:
                    seq = counts["examples"]
                    training((event, label, version, arm_name, seq, clock()))
                    counts["examples"] = seq + 1
        counts["scored"] += n_scored
        counts["feedback"] += n_feedback
        counts["learned"] += n_learned
        live.counts["scored"] += n_scored
        lat = live.latency
        lat[0] += n_scored
        lat[1] += spent_total
        if spent_max > lat[2]:
            lat[2] = spent_max
        return SinkBatch(lines, keys, [version] * len(lines), read_at, dead, [])

    def _process_arms(self, batch: Batch) -> SinkBatch:
        """Several arms: each event to the arm its key is dealt to, shadows beside it."""
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
                    self._model_error(item, arm, e, dead)
                    continue
                counts["scored"] += 1
                now = time.time()
                record = {
                    "record_id": item.record_id, "key": item.key, "score": score,
                    "prediction": prediction, "model_version": arm.version, "arm": arm.name,
                    "checkpoint": checkpoint, "scorer": name,
                    "event_time": item.event_time, "scored_at": now,
                    "partition": item.partition, "offset": item.offset,
                }
                why = self._reasons.get(arm)
                if why is not None:
                    record["reasons"] = why(item.features, prediction)
                line = orjson.dumps(record, option=_JSON)
                lines.append(line)
                if self.audit is not None:
                    self.audit.trail.append((item, line, arm.version, arm.name, arm.role, now,
                                             counts["examples"]))
                keys.append(item.key)
                versions.append(arm.version)
                read_at.append(item.read_at)
                dark = self._shadow_scores(item, i, pre, shadows, classifier,
                                           shadow_lines) if shadows else None
                scored = _Scored(item, score, prediction, arm, dark)
                early = labels.add(item.record_id, scored)
                if early is not None:  # its label came first
                    self._learn(item, scored, early[0], dead)
            else:
                assert type(item) is Feedback
                counts["feedback"] += 1
                held = labels.match(item.record_id, item.label)
                if held is not None:
                    self._learn(item, held, item.label, dead)
        return SinkBatch(lines, keys, versions, read_at, dead, shadow_lines)

    def _model_error(self, item: Event, arm: Arm, error: Exception,
                     dead: list[DeadLetter]) -> None:
        self.counts["model_errors"] += 1
        arm.counts["errors"] += 1
        dead.append(_dead_event(item, f"model error: {type(error).__name__}: {error}",
                                self.name))

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
            now = time.time()
            line = orjson.dumps({
                "record_id": item.record_id, "key": item.key, "score": score,
                "prediction": prediction, "model_version": arm.version, "arm": arm.name,
                "scorer": self.name, "event_time": item.event_time, "scored_at": now,
                "partition": item.partition, "offset": item.offset}, option=_JSON)
            out.append(line)
            if self.audit is not None:
                self.audit.trail.append((item, line, arm.version, arm.name, arm.role, now,
                                         self.counts["examples"]))
        return tuple(dark)

    def _learn(self, item: Event | Feedback, held: _Scored, label: Any,
               dead: list[DeadLetter]) -> None:
        y_pred, prediction = held.y_pred, held.prediction
        # As River's progressive validation: no metric update for an empty prediction.
        served = None
        if y_pred is not None and y_pred != {}:
            served = self._observe(label, y_pred, prediction)
            if self.quality is not None:
                self._labeled.append((held, label, item.read_at))
        # Per-arm quality only matters beside another arm (one arm's is the pipeline's).
        if self._compare:
            gain = held.arm.observe(label, y_pred, prediction)
            if gain is not None:
                self._gains.setdefault(held.arm, []).append(gain)
            if held.shadows:
                for arm, s_pred, s_prediction in held.shadows:
                    s_gain = arm.observe(label, s_pred, s_prediction)
                    if s_gain is not None:
                        self._gains.setdefault(arm, []).append(s_gain)
                    if gain is not None and s_gain is not None:
                        arm.compare(s_gain, gain)
        elif served is not None:
            self._gains.setdefault(held.arm, []).append(served)
        event = held.event
        features = event.features
        for arm in self._learners:  # candidates and the warm previous version learn too
            try:
                arm.model.learn_one(features, label)
            except Exception:
                arm.counts["errors"] += 1
            else:
                self._logged(event, label, arm)
        live = self.arms[0]
        try:
            live.model.learn_one(features, label)
        except Exception as e:
            self._learn_error(item, label, e, dead)
            return
        self.counts["learned"] += 1
        self._logged(event, label, live)

    def _logged(self, event: Event, label: Any, arm: Arm) -> None:
        """The training log's row of an example ``arm`` learned (when the log is kept)."""
        if self.audit is not None:
            seq = self.counts["examples"]
            self.audit.training.append(
                (event, label, arm.version, arm.name, seq, time.time()))
            self.counts["examples"] = seq + 1

    def _observe(self, label: Any, y_pred: Any, prediction: Any) -> float:
        """A served prediction's label: the pipeline's metrics and its window by count;
        returns its gain."""
        hit = self._metrics.update(label, y_pred, prediction)
        win = self._window_now
        if win[0] == self._window:
            win = self._window_now = [0, 0.0]
            self._windows.append(win)
        win[0] += 1
        win[1] += -hit if self.task == "regression" else hit
        return hit

    def _learn_error(self, item: Event | Feedback, label: Any, error: Exception,
                     dead: list[DeadLetter]) -> None:
        self.counts["model_errors"] += 1
        dead.append(DeadLetter(
            item.record_id, "feedback",
            orjson.dumps({"record_id": item.record_id, "key": item.key, "label": label},
                         default=repr, option=_JSON),
            f"model error while learning: {type(error).__name__}: {error}", "ModelError",
            item.topic or self.name, item.partition, item.offset))

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
        self.drift.forget({a.version for a in arms})
        self._configure()
        return {"name": self.name, "scored": self.counts["scored"]}

    def _task_of(self, version: str, model: Any) -> Task:
        task = task_of_model(model)
        if (task == "regression") != (self.task == "regression"):
            raise ValueError(f"{self.name}: version {version} is a {task} model; this "
                             f"pipeline's is {self.task}")
        return task

    # -- checkpoints -------------------------------------------------------------------
    _STATE = ("arms", "previous", "deployment", "labels", "_windows", "_metrics", "counts")

    def snapshot(self) -> dict[str, Any]:
        """Everything learned so far: the arms' models, the pending labels, metrics, counts."""
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot` (of a scorer of the same name and config)."""
        for name in self._STATE:
            setattr(self, name, state[name])
        self.counts.setdefault("examples", 0)  # a checkpoint from before the training log
        self._window_now = self._windows[-1] if self._windows else [self._window, 0.0]
        if self.quality is not None:  # its arms are the restored ones from now on
            self.quality = self.quality.fresh()
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
            "task": self.task, "n_metric": self._metrics.n,
            "metrics": self._metrics.get(), "progressive": self._metrics.state(),
            "windows": [list(w) for w in self._windows],
            "deployment": self.deployment.mode,
            "arms": self._arm_stats(),
            "previous": self.previous.version if self.previous is not None else None,
            "quality": self.quality.stats(self.checkpoint) if self.quality is not None else {},

            "drift": self.drift.stats(),
        }


def _single_arm_stats(arm: Arm, core: ScorerCore) -> dict[str, Any]:
    """A lone live arm's figures are the pipeline's own (it is not observed twice)."""
    out = arm.stats()
    out["labeled"] = core._metrics.n
    out["metrics"] = core._metrics.get()
    return out


def task_of_model(model: Any) -> Task:
    """What a served model predicts: a River model's task, or a batch model's own."""
    task = getattr(model, "task", None)
    return task if isinstance(task, str) else task_of(model)  # type: ignore[return-value]


def _dead_event(event: Event, error: str, scorer: str) -> DeadLetter:
    raw = orjson.dumps({"record_id": event.record_id, "key": event.key,
                        "features": event.features}, default=repr, option=_JSON)
    return DeadLetter(event.record_id, "event", raw, error, "ModelError", event.topic or scorer,
                      event.partition, event.offset, event.key.encode())


def merge_metrics(parts: list[dict[str, Any]]) -> dict[str, float]:
    """Pipeline-wide progressive metrics from each scorer's :meth:`ScorerCore.stats`; exact.

    >>> a = ScorerCore(ScoringConfig(), name="a"); a._metrics.update(True, {True: 0.9}, True)
    1.0
    >>> b = ScorerCore(ScoringConfig(), name="b"); b._metrics.update(True, {True: 0.2}, False)
    0.0
    >>> merge_metrics([a.stats(), b.stats()])["accuracy"]
    0.5
    """
    return _merge([p["progressive"] for p in parts if "progressive" in p])
