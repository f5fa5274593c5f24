"""A retrain job's core: a candidate trained on a window, evaluated, gated, registered.

Runtime-free: the job (:func:`actors.retrainer.retrain_job`) reads the window with Ray
Data and hands it here as plain rows, oldest first: each labeled example the live arm
learned, with its features and what the live version said when it scored it (from the
committed training log and audit trail). The newest ``holdout_fraction`` is held out;
the candidate learns the rest (a fresh River model, example by example in order, or
``training``'s scikit-learn estimator, as ``riffle train`` fits it) and is measured on
the held-out slice beside the live version's own predictions on the same records. Past
the gate, it is registered with its provenance (trigger, numbers, window, data
manifest, gate result) in the ``created`` event; a candidate that fails the gate is not
registered, and the job says why.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from pipelines.checkpoint import dumps_state
from pipelines.config import ModelSpec, PipelineConfig
from pipelines.monitoring.retraining import gate

__all__ = ["Example", "TrainedCandidate", "register_candidate", "train_candidate",
           "wait_for_window", "window_of"]


@dataclass(frozen=True)
class Example:
    """One labeled example of the window."""

    record_id: str
    topic: str
    partition: int
    offset: int
    features: dict[str, Any]
    label: Any
    served: Any
    """What the live version predicted for it (None if the trail lacks it)."""
    learned_at: float


def window_of(learned: Any, scored: Any, *, n_labels: int, since: float | None = None,
              max_age_s: float | None = None, now: float | None = None) -> list[Example]:
    """The window, oldest first: the newest ``n_labels`` examples the live arm learned
    (after ``since``, at most ``max_age_s`` old at ``now``), each with its features and the
    live prediction from the trail; an example the trail lacks is left out.

    ``learned``: the committed training log's rows (record_id, topic, partition, offset,
    label, arm, learned_at), ``scored``: the committed trail's (record_id, role,
    features, output), as pandas frames (what Ray Data reads).
    """
    learned = learned[learned["arm"] == "live"]
    if since is not None:
        learned = learned[learned["learned_at"] >= since]
    if max_age_s is not None:
        learned = learned[learned["learned_at"] >= (time.time() if now is None else now)
                          - max_age_s]
    learned = learned.drop_duplicates("record_id").sort_values("learned_at").tail(n_labels)
    scored = scored[(scored["role"] == "live") & scored["record_id"].isin(
        set(learned["record_id"]))]
    seen = {r: (f, o) for r, f, o in zip(scored["record_id"], scored["features"],
                                         scored["output"], strict=True)}
    out = []
    for row in learned.itertuples(index=False):
        got = seen.get(row.record_id)
        if got is None:
            continue
        features, output = got
        out.append(Example(row.record_id, row.topic, int(row.partition), int(row.offset),
                           orjson.loads(features), orjson.loads(row.label),
                           orjson.loads(output).get("prediction"), float(row.learned_at)))
    return out


def wait_for_window(read: Callable[[], list[Example]], *, n_labels: int,
                    since: float | None, every_s: float, budget_s: float,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> list[Example]:
    """The window as ``read`` returns it, read again every ``every_s`` while it holds
    fewer than ``n_labels`` examples, for at most ``budget_s``. The policy starts a job
    once ``n_labels`` labels *arrived* after an alarm (``since``); the window holds the
    committed ones only, so the job waits for the checkpoints that commit the rest.
    Without ``since`` (a window of whatever is there) it reads once."""
    deadline = clock() + budget_s
    examples = read()
    while since is not None and len(examples) < n_labels and clock() + every_s < deadline:
        sleep(every_s)
        examples = read()
    return examples


@dataclass
class TrainedCandidate:
    model: Any
    kind: str
    model_class: str
    params: dict[str, Any]
    metrics: dict[str, float]
    gate: dict[str, Any]
    n_train: int
    n_holdout: int


def _score(task: str, label: Any, prediction: Any) -> float:
    if task == "regression":
        return -abs(float(label) - float(prediction))
    return float(label == prediction)


def train_candidate(config: PipelineConfig, examples: list[Example], task: str
                    ) -> TrainedCandidate:
    """Train on the window's older part, measure on its newest, gate against live."""
    window = config.retraining.window
    n_holdout = max(1, math.floor(len(examples) * window.holdout_fraction))
    train, holdout = examples[:-n_holdout], examples[-n_holdout:]
    if not train:
        raise ValueError(f"a window of {len(examples)} examples leaves nothing to train on")
    est = config.retraining.estimator
    model: Any
    if est.kind == "sklearn":
        model, kind, model_class, params = _fit_sklearn(config, train)
    else:
        from pipelines.models import build_model
        from pipelines.registry import river_model_fields

        spec = config.scoring.model if est.model is None else ModelSpec.model_validate(
            {**est.model, "version": config.scoring.model.version})
        model = build_model(spec)
        for ex in train:
            model.learn_one(ex.features, ex.label)
        kind = "river"
        fields = river_model_fields(spec)
        model_class, params = fields["model_class"], fields["params"]
    classifier = task != "regression"
    cand = live = 0.0
    n_live = 0
    for ex in holdout:
        if classifier:
            proba = model.predict_proba_one(ex.features)
            prediction = max(proba, key=proba.get) if proba else None
        else:
            prediction = model.predict_one(ex.features)
        cand += _score(task, ex.label, prediction)
        if ex.served is not None:
            live += _score(task, ex.label, ex.served)
            n_live += 1
    name = "mae" if task == "regression" else "accuracy"
    cand_m = cand / len(holdout)
    live_m = live / n_live if n_live else None
    metrics = {name: abs(cand_m) if task == "regression" else cand_m}
    decision = gate(config.retraining, cand_m, live_m)
    decision["metric"] = name
    return TrainedCandidate(model, kind, model_class, params, metrics, decision,
                            len(train), len(holdout))


def _fit_sklearn(config: PipelineConfig, train: list[Example]
                 ) -> tuple[Any, str, str, dict[str, Any]]:
    import numpy as np

    from pipelines.training import build_estimator, fit

    spec = config.training
    features = spec.features or sorted(train[0].features)
    X = np.array([[float(ex.features[f]) for f in features] for ex in train])
    y = np.array([ex.label for ex in train])
    model, _ = fit(build_estimator(spec), spec, X, y, features, where="the retrain window")
    return model, "sklearn", model.model_class, model.params


def data_manifest(examples: list[Example], n_train: int) -> dict[str, Any]:
    """Per source partition, the range of positions the window spans."""
    sources: dict[str, list[int]] = {}
    for ex in examples:
        name = f"{ex.topic}[{ex.partition}]"
        lo_hi = sources.setdefault(name, [ex.offset, ex.offset + 1])
        lo_hi[0] = min(lo_hi[0], ex.offset)
        lo_hi[1] = max(lo_hi[1], ex.offset + 1)
    return {"sources": {k: tuple(v) for k, v in sorted(sources.items())},
            "n_learned": n_train}


def register_candidate(config: PipelineConfig, registry: Any, store_url: str,
                       candidate: TrainedCandidate, examples: list[Example], *,
                       parent: str | None, provenance: dict[str, Any], actor: str) -> Any:
    """Write the candidate's artifact to the checkpoint store and register it (its
    ``created`` event holds ``provenance`` and a one-line ``reason``)."""
    from pipelines.registry.provenance import sha256_hex
    from pipelines.training import _write_artifact

    local = f"rt-{uuid.uuid4().hex[:12]}"
    version_id = f"{config.name}/{local}"
    blob = dumps_state(candidate.model)
    uri = _write_artifact(store_url, f"models/{local}.pkl", blob)
    trigger = provenance["trigger"]
    g = candidate.gate
    reason = (f"retrained: {trigger['reason']}; {candidate.n_train:,} labels, held out "
              f"{candidate.n_holdout:,}: {g['metric']} {g['candidate']:.4f} vs live "
              + (f"{g['live']:.4f}" if g["live"] is not None else "-"))
    return registry.register(
        pipeline=config.name, kind=candidate.kind, version_id=version_id,
        model_class=candidate.model_class, params=candidate.params, artifact_uri=uri,
        artifact_sha256=sha256_hex(blob), parent_id=parent,
        config_hash=config.config_hash(),
        data=data_manifest(examples, candidate.n_train), metrics=candidate.metrics,
        actor=actor, logged_as="train", reason=reason, provenance=provenance)
