"""Reproducing a registered version: rebuilt from what it was made of, and proved equal.

**A River version** ``<pipeline>/ckpt-N`` is checkpoint N; each scorer's model is the live
arm's model in its part. Its version ``L`` (the deployment's live arm) learned, since
the parent checkpoint P (the registry's ``parent_id``), exactly the training-log rows
labelled ``L`` that this scorer learned after P's barrier and before N's: ``seq`` from
P's ``counts["examples"]`` up to N's, committed after P and by N (the rule of
:mod:`pipelines.audit.lineage`; a version that left the deployment and came back counts
from its last stay). So each scorer's model is rebuilt by the replay of
:class:`~pipelines.audit.explain.Explainer`: ``L``'s model in P's part (P's manifest is
checked against the registry first), or ``L``'s artifact when ``L`` was deployed after
P, then those rows in ``seq`` order, each on the features the trail kept for its
record. When P is pruned the replay starts from the newest retained checkpoint before
it, else from the config's fresh model (the answer says which), provided the training
log holds every example in between.

The rebuilt model is compared with the artifact's (checkpoint N's part, whose manifest's
hash the registry holds and whose hash the manifest holds) by
:func:`~pipelines.audit.compare.compare_models`: every parameter and piece of state,
numbers to 1e-12; whether the pickles are the same bytes is reported beside it.

**A scikit-learn version** is retrained through ``riffle train``'s own functions
(:func:`pipelines.training.read_matrix`, :func:`~pipelines.training.build_estimator`,
:func:`~pipelines.training.fit`): the history its data manifest names, the features,
label column and scaling its ``created`` event recorded, its recorded parameters (the
seed is ``random_state`` among them), fitted on the first ``n_learned`` rows. It is
compared with the artifact structurally, as above (the fitted coefficients, scaler
statistics, every fitted attribute), and by its predictions (class probabilities or
values) on the training rows, to 1e-12. A history that changed since is caught: a
different number of rows is refused, different values give a different model. A version
that ``riffle forget`` retrained (``erased_subjects``) is fitted on the history without
those subjects' rows, as it was.

Ray-free: reading the history for a scikit-learn version uses Ray Data through
:mod:`pipelines.training`, which starts it only then.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.audit.compare import TOLERANCE, Comparison, compare_models, model_sha256
from pipelines.audit.explain import Explainer, Scored
from pipelines.checkpoint import loads_state
from pipelines.config import PipelineConfig, TrainingConfig
from pipelines.errors import AuditError, RiffleError

__all__ = ["TOLERANCE", "Reproducer"]


class Reproducer:
    """Reproductions of ``config``'s registered versions (``registry``: an open
    :class:`~pipelines.registry.Registry`)."""

    def __init__(self, config: PipelineConfig, *, registry: Any) -> None:
        self.config = config
        self.registry = registry

    def resolve(self, version: str) -> str:
        """``version`` as registered: a local id (``ckpt-000003``, ``sk-...``) names this
        pipeline's; an unknown one is an :class:`AuditError`."""
        for ref in ((version,) if "/" in version else (f"{self.config.name}/{version}",
                                                        version)):
            try:
                return str(self.registry.get(ref).id)
            except RiffleError:
                continue
        raise AuditError(f"unknown model version {version}: not registered for pipeline "
                         f"{self.config.name}")

    def reproduce(self, version: str) -> dict[str, Any]:
        """The reproduction of ``version`` as plain JSON data (see the module)."""
        v = self.registry.get(self.resolve(version))
        if v.kind == "sklearn":
            return self._sklearn(v)
        return self._river(v)

    # -- River ------------------------------------------------------------------------
    def _river(self, v: Any) -> dict[str, Any]:
        store, manifest = self.registry.open_checkpoint(v.id)  # verified: its sha256
        parent = self._parent(v)
        scorers = sorted(n for n in manifest.parts if n.startswith("scorer-"))
        if not scorers:
            raise AuditError(f"{v.id}: checkpoint {manifest.id} has no scorer parts")
        out: dict[str, Any] = {}
        with Explainer(self.config, store_url=store.url, registry=self.registry) as ex:
            kept = {m.id for m in ex.store.manifests()}
            for name in scorers:
                try:
                    state = loads_state(store.read_part(manifest, name))
                except (OSError, RiffleError) as e:
                    raise AuditError(f"{v.id}: cannot read {name}'s part of checkpoint "
                                     f"{manifest.id}: {e}") from None
                live = state["arms"][0]
                n = int(state["counts"].get("examples", 0))
                row = Scored(record_id=f"{v.id} ({name})", key="", scorer=name,
                             model_version=live.version, arm=live.name, role="live",
                             checkpoint=parent, examples=n, features={}, output={},
                             committed_in=manifest.id, commit_seq=manifest.seq)
                try:
                    rebuilt = ex.rebuild(row)
                except AuditError as e:
                    raise AuditError(f"{v.id}: {name} cannot be rebuilt: "
                                     f"{str(e).split(': ', 1)[-1]}") from None
                start = rebuilt.base
                if parent is not None and parent not in kept:
                    start = f"{rebuilt.base} (the parent checkpoint {parent} is pruned)"
                result = compare_models(rebuilt.model, live.model)
                out[name] = {"model_version": live.version, "rebuilt_from": start,
                             "replayed": rebuilt.replayed, "examples": n,
                             "notes": rebuilt.notes,
                             "part_sha256": manifest.parts[name].sha256,
                             **_hashes(result, live.model, rebuilt.model)}
        return self._answer(v, out, parent=f"{v.pipeline}/{parent}" if parent else None,
                            method="replay of the training log from the parent checkpoint; "
                                   "models compared parameter by parameter")

    def _parent(self, v: Any) -> str | None:
        """The parent's checkpoint id in this store (its manifest verified against the
        registry when it is still there)."""
        if v.parent_id is None:
            return None
        try:
            self.registry.open_checkpoint(v.parent_id)
        except RiffleError as e:
            if "does not match" in str(e):  # there, but not what was registered
                raise AuditError(f"{v.id}: its parent {v.parent_id}: {e}") from None
        return str(v.parent_id).split("/", 1)[1]

    # -- scikit-learn -----------------------------------------------------------------
    def _sklearn(self, v: Any) -> dict[str, Any]:
        from pipelines.audit.subjects import subject_hash
        from pipelines.batch_models import loads_model
        from pipelines.training import build_estimator, fit, read_matrix

        details: dict[str, Any] = next(
            (e.details for e in self.registry.events(v.id) if e.kind == "created"), {})
        if len(v.data.sources) != 1 or not details.get("features"):
            raise AuditError(f"{v.id}: its data manifest does not name one history file "
                             "and its features: it was not trained by riffle train")
        [(where, (lo, hi))] = v.data.sources.items()
        steps = details.get("steps") or []
        spec = TrainingConfig(estimator=v.model_class, params=v.params,
                              scale=any(s.endswith(".StandardScaler") for s in steps[:-1]),
                              label_column=details.get("label_column", "label"),
                              features=list(details["features"]))
        estimator = build_estimator(spec)
        erased = set(details.get("erased_subjects") or [])  # retrained by riffle forget
        X, y, features, _ = read_matrix(
            spec.model_copy(update={"key_column": self.config.training.key_column}), where,
            num_cpus=self.config.runtime.num_cpus,
            drop=(lambda k: subject_hash(str(k)) in erased) if erased else None)
        if len(y) != hi - lo:
            raise AuditError(f"{v.id}: {where} holds {len(y):,} rows; the version was "
                             f"trained from {hi - lo:,} (the history changed)")
        n = v.data.n_learned
        rebuilt, _ = fit(estimator, spec, X[:n], y[:n], features, where=where)
        artifact = loads_model(self.registry.load_artifact(v.id))  # verified: its sha256
        result = compare_models(rebuilt, artifact)
        predicted = _predictions(rebuilt, X[:n]) - _predictions(artifact, X[:n])
        worst = float(np.abs(predicted).max(initial=0.0))
        if worst > TOLERANCE and result.first_difference is None:
            result = Comparison(False, max(result.max_error, worst), result.n_values,
                                f"predictions on the training rows: off by {worst:.3g}",
                                result.same_bytes)
        entry = {"model_version": v.id, "rebuilt_from": f"{where} rows [0, {n:,}), "
                 f"random_state {v.params.get('random_state')!r}", "replayed": n,
                 "examples": n, "notes": [], "part_sha256": v.artifact_sha256,
                 "predictions_max_error": worst, **_hashes(result, artifact, rebuilt)}
        return self._answer(v, {"model": entry}, parent=v.parent_id,
                            method="retrained through riffle train's code with the recorded "
                                   "parameters; fitted attributes and predictions on the "
                                   "training rows compared")

    # -- the answer -------------------------------------------------------------------
    def _answer(self, v: Any, parts: dict[str, Any], *, parent: str | None, method: str
                ) -> dict[str, Any]:
        first = next((f"{name}: {p['first_difference']}" for name, p in parts.items()
                      if not p["equal"]), None)
        return {"version": v.id, "kind": v.kind, "model_class": v.model_class,
                "parent": parent, "artifact_sha256": v.artifact_sha256,
                "reproduced": first is None, "first_difference": first,
                "tolerance": TOLERANCE, "method": method, "scorers": parts}


def _hashes(result: Comparison, artifact: Any, rebuilt: Any) -> dict[str, Any]:
    return {"equal": result.equal, "first_difference": result.first_difference,
            "max_error": result.max_error, "n_values": result.n_values,
            "same_bytes": result.same_bytes, "model_sha256": model_sha256(artifact),
            "rebuilt_sha256": model_sha256(rebuilt)}


def _predictions(model: Any, X: np.ndarray) -> np.ndarray:
    est = model.estimator
    out = est.predict_proba(X) if model.task != "regression" else est.predict(X)
    return np.asarray(out, dtype=np.float64)
