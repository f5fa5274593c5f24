"""The models a service replica serves, following what the stream serves.

The stream's Supervisor records every command it applies in the registry's control log,
with the deployment that followed it (``details.deployment``). A :class:`ModelHolder`
reads the last one (every ``serving.poll_interval_s``), loads the versions it names
from the registry (hash-verified, as the scorers do) and swaps in a new
:class:`Served`: one immutable object, so a request scored by it sees one deployment
from its first record to its last, and a swap never fails a request in flight (the old
object serves until the new one is complete; a version that fails to load leaves the
old one serving, and the failure is kept for ``/readyz``).

A key gets the same arm as in the stream (the same :class:`~pipelines.arms.Router`),
and within a River version the same model: a River version is a checkpoint with one
model per scorer, and the key's scorer (:func:`~pipelines.ingest.scorer_of`) holds it.
A version the registry does not have (the stream's own starting model, ``v0``) is
served as the pipeline's latest committed checkpoint — the state that model had then
— or, before the first checkpoint, as the fresh model of the config. The service never
learns: the stream's scorers do, from the feedback the service forwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pipelines.arms import Router
from pipelines.audit.reasons import Reasons, reasons_for
from pipelines.checkpoint import loads_state
from pipelines.config import PipelineConfig
from pipelines.errors import RiffleError
from pipelines.ingest import scorer_of
from pipelines.lifecycle import deployment_from_json
from pipelines.models import build_model, task_of
from pipelines.protocol import ArmSpec, Deployment

__all__ = ["ModelHolder", "Served", "ServedArm", "current_deployment"]


@dataclass(frozen=True)
class ServedArm:
    spec: ArmSpec
    models: tuple[Any, ...]
    """One per scorer of the checkpoint (a River version), or one (a frozen model)."""
    checkpoint: str | None
    reasons: tuple[Reasons | None, ...]
    batched: bool
    """A frozen (scikit-learn) model: a request's rows are scored in one call."""


@dataclass(frozen=True)
class Served:
    """One deployment, loaded: what a request is scored by, start to end."""

    serial: int
    deployment: Deployment
    arms: tuple[ServedArm, ...]
    """The arms that serve keys (a shadow arm serves none: the stream scores it)."""
    router: Router | None
    command_id: str | None
    loaded_at: float
    task: str

    def score(self, rows: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Each ``(record_id, key, features)`` scored by its key's arm and model."""
        arms, router = self.arms, self.router
        classifier = self.task != "regression"
        out: list[dict[str, Any]] = []
        batched: dict[int, list[int]] = {}
        for record_id, key, features in rows:
            a = router.arm_of(key) if router is not None else 0
            arm = arms[a]
            models = arm.models
            m = scorer_of(key, len(models)) if len(models) > 1 else 0
            result: dict[str, Any] = {
                "record_id": record_id, "key": key, "model_version": arm.spec.version,
                "arm": arm.spec.name, "checkpoint": arm.checkpoint}
            out.append(result)
            if arm.batched:
                batched.setdefault(a, []).append(len(out) - 1)
                continue
            try:
                if classifier:
                    score = models[m].predict_proba_one(features)
                    prediction = max(score, key=score.get) if score else None
                else:
                    score = prediction = models[m].predict_one(features)
            except Exception as e:  # a record the model cannot take: its error, not a 500
                result.update(score=None, prediction=None,
                              error=f"model error: {type(e).__name__}: {e}")
                continue
            result["score"], result["prediction"] = score, prediction
            why = arm.reasons[m]
            if why is not None:
                result["reasons"] = why(features, prediction)
        for a, index in batched.items():
            self._score_many(arms[a], [rows[i][2] for i in index], [out[i] for i in index],
                             classifier)
        return out

    @staticmethod
    def _score_many(arm: ServedArm, features: list[dict[str, Any]],
                    results: list[dict[str, Any]], classifier: bool) -> None:
        import pandas as pd

        model = arm.models[0]
        try:
            frame = pd.DataFrame.from_records(features)
            pairs: list[tuple[Any, Any]]
            if classifier:
                scores = [{_plain(k): float(v) for k, v in s.items()} for s in
                          model.predict_proba_many(frame).to_dict("records")]
                pairs = [(s, _likeliest(s)) for s in scores]
            else:
                pairs = [(float(v), float(v)) for v in model.predict_many(frame).tolist()]
        except Exception:
            if len(features) == 1:
                results[0].update(score=None, prediction=None,
                                  error="model error: the model refused this record")
                return
            for f, r in zip(features, results, strict=True):  # one by one: name the bad rows
                Served._score_many(arm, [f], [r], classifier)
            return
        for r, (score, prediction) in zip(results, pairs, strict=True):
            r["score"], r["prediction"] = score, prediction


def _likeliest(score: dict[Any, float]) -> Any:
    return max(score.items(), key=lambda kv: kv[1])[0] if score else None


def _plain(value: Any) -> Any:
    """A numpy scalar (scikit-learn's class labels) as the Python value."""
    return value.item() if hasattr(value, "item") else value


def current_deployment(registry: Any, pipeline: str, default: Deployment
                       ) -> tuple[Deployment, str | None]:
    """The deployment the stream applied last (and the command that made it)."""
    for limit in (50, None):
        records = registry.commands(pipeline, limit=limit)
        for record in reversed(records):
            if record.status == "applied" and "deployment" in record.details:
                return deployment_from_json(record.details["deployment"]), record.command_id
        if limit is None or len(records) < limit:
            break
    return default, None


class ModelHolder:
    """Follows the registry; :attr:`served` is what requests are scored by."""

    def __init__(self, config: PipelineConfig, registry: Any, *,
                 clock: Any = time.time) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock
        self.task = task_of(build_model(config.scoring.model))
        self.served: Served | None = None
        self.error: str | None = None
        """Why the last refresh failed (None: it did not)."""
        self._seen: tuple[Any, ...] | None = None
        self._cache: dict[tuple[str, str | None], ServedArm] = {}
        self._serial = 0

    def refresh(self) -> bool:
        """Load the stream's current deployment if it changed; True if a new one serves.
        A failure is kept in :attr:`error`; what served before goes on serving."""
        try:
            changed = self._refresh()
        except (RiffleError, OSError, ValueError) as e:
            self.error = str(e)
            return False
        self.error = None
        return changed

    def _refresh(self) -> bool:
        cfg = self.config
        deployment, command_id = current_deployment(
            self.registry, cfg.name, Deployment.single(cfg.scoring.model.version))
        serving = [a for a in deployment.arms if a.weight > 0]
        registered = {a.version: self._registered(a.version) for a in serving}
        latest = self._latest_checkpoint() if not all(registered.values()) else None
        seen = (deployment, command_id, latest)
        if seen == self._seen:
            return False
        arms = []
        for spec in serving:
            source = spec.version if registered[spec.version] else latest
            arms.append(self._arm(spec, source, registered[spec.version]))
        self._serial += 1
        self.served = Served(
            self._serial, deployment, tuple(arms),
            # The serving arms alone: the stream's Router skips weight 0 the same way, so
            # a key's point lands in the same arm, and the index is into ``arms``.
            Router([a.spec for a in arms]) if len(arms) > 1 else None, command_id,
            self.clock(),
            self.task)
        self._cache = {(a.spec.version, a.checkpoint): a for a in arms}
        self._seen = seen
        return True

    def _registered(self, version: str) -> bool:
        try:
            self.registry.get(version)
        except RiffleError:
            return False
        return True

    def _latest_checkpoint(self) -> str | None:
        versions = [v for v in self.registry.versions(self.config.name) if v.kind == "river"]
        return versions[-1].id if versions else None

    def _arm(self, spec: ArmSpec, source: str | None, registered: bool) -> ServedArm:
        cached = self._cache.get((spec.version, source))
        if cached is not None:
            return ServedArm(spec, cached.models, cached.checkpoint, cached.reasons,
                             cached.batched)
        top_k = self.config.scoring.explain.top_k
        if source is None:  # nothing committed yet: the stream's own fresh model
            models: tuple[Any, ...] = (build_model(self.config.scoring.model),)
            checkpoint = None
        elif self.registry.get(source).kind != "river":
            models, checkpoint = (loads_state(self.registry.load_artifact(source)),), None
        else:
            models = self._checkpoint_models(source, None if registered else spec.version)
            checkpoint = source
        batched = not getattr(models[0], "learns", True) and hasattr(
            models[0], "predict_proba_many")
        reasons = tuple(reasons_for(m, top_k) if top_k and not batched else None
                        for m in models)
        return ServedArm(spec, models, checkpoint, reasons, batched)

    def _checkpoint_models(self, version: str, arm_version: str | None) -> tuple[Any, ...]:
        """Each scorer's model in checkpoint ``version``: its live model, or (for the
        stream's own unregistered model) the arm of ``arm_version`` when it has one."""
        store, manifest = self.registry.open_checkpoint(version)
        scorers = sorted((p for p in manifest.parts if p.startswith("scorer-")),
                         key=lambda p: int(p.rsplit("-", 1)[1]))
        models = []
        for name in scorers:
            state = loads_state(store.read_part(manifest, name))
            arms = state["arms"]
            chosen = next((a for a in arms if a.version == arm_version), arms[0])
            models.append(chosen.model)
        if not models:
            raise RiffleError(f"{version}: checkpoint {manifest.id} has no scorer parts")
        return tuple(models)
