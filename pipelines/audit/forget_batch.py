"""Forgetting a subject in a pipeline's batch-trained (scikit-learn) versions.

A scikit-learn version (``riffle train``) learned once, from the first ``n_learned`` rows
of the history file its data manifest names; it learns nothing online, so it holds the
subject exactly when those rows do. For each version not retired yet, the history is read
again (:func:`pipelines.training.read_history`, as ``riffle train`` reads it) and its key
column (``training.key_column``) searched for the subject:

- **the subject is in its training rows**: the version is retrained through ``riffle
  train``'s own path (:func:`pipelines.training.train`) on the same history without the
  rows of the subject (and of the subjects erased before from it), with the version's
  recorded estimator, parameters (its seed is ``random_state``), scaling, label and
  features, and ``training``'s split of the config. The new version is registered with
  the old one as its parent and the erased subjects' hashes (``erased_subjects``, which
  ``riffle audit reproduce`` drops again); the old one is retired (reason ``erasure``,
  ``tainted``) and its pickle deleted from the store;
- **its history is gone or changed** (missing, unreadable, or not the row count it was
  trained from): it cannot be retrained, nor shown free of the subject, so it is retired
  and its pickle deleted, and the certificate says why;
- **no key column** in its history: the subject cannot be found by key there; the version
  is listed as unchecked and left as it is.

The history file is the operator's (riffle reads it, never writes it): it is listed among
the stores riffle does not own. A retired version still deployed as an arm keeps serving
from the checkpoint that holds it until another version is deployed in its place (the
certificate names the arm and the retrained version to deploy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.audit.subjects import subject_hash
from pipelines.config import PipelineConfig, TrainingConfig
from pipelines.errors import SourceError
from pipelines.storage import resolve

__all__ = ["BatchPlan", "find_batch_versions", "forget_batch_versions"]


@dataclass(frozen=True)
class BatchPlan:
    """What forgetting a subject does to one scikit-learn version."""

    version: Any
    where: str | None
    action: str
    """``retrain``, ``retire`` (its data is gone) or ``unchecked``."""
    why: str
    rows: int = 0
    """The subject's rows among the version's training rows."""


def find_batch_versions(config: PipelineConfig, registry: Any, key: str) -> list[BatchPlan]:
    """The scikit-learn versions of ``config``'s pipeline that forgetting ``key`` touches
    (nothing is changed yet)."""
    versions = [v for v in registry.versions(config.name)
                if v.kind == "sklearn" and v.status != "retired"]
    if not versions:
        return []
    from pipelines.training import history_format, key_rows, read_history

    plans = []
    for v in versions:
        details = _created(registry, v.id)
        if len(v.data.sources) != 1 or not details.get("features"):
            plans.append(BatchPlan(v, None, "unchecked", "its data manifest names no "
                                   "history file: it was not trained by riffle train"))
            continue
        [(where, (lo, hi))] = v.data.sources.items()
        try:
            frame = read_history(where, history_format(where),
                                 num_cpus=config.runtime.num_cpus)
        except SourceError as e:
            plans.append(BatchPlan(v, where, "retire", f"its training data is gone ({e})"))
            continue
        if len(frame) < hi - lo:
            plans.append(BatchPlan(v, where, "retire", f"its training data changed: {where} "
                                   f"holds {len(frame):,} rows, it was trained from "
                                   f"{hi - lo:,}"))
            continue
        erased = set(details.get("erased_subjects") or [])
        if erased:  # a version retrained before: its rows are the file's without those
            frame = frame[~key_rows(frame, _spec(config, v, details), where,
                                    _hashed_in(erased))]
        if len(frame) != hi - lo:
            plans.append(BatchPlan(v, where, "retire", f"its training data changed: {where} "
                                   f"holds {len(frame):,} rows, it was trained from "
                                   f"{hi - lo:,}"))
            continue
        try:
            mask = key_rows(frame, _spec(config, v, details), where, lambda k: str(k) == key)
        except SourceError as e:
            plans.append(BatchPlan(v, where, "unchecked", str(e)))
            continue
        hits = int(mask[: v.data.n_learned].sum())
        if hits:
            plans.append(BatchPlan(v, where, "retrain", "its training rows hold the subject",
                                   hits))
    return plans


def forget_batch_versions(config: PipelineConfig, registry: Any, plans: list[BatchPlan],
                          hashed: str, *, actor: str, deployed: dict[str, list[str]]
                          ) -> list[dict[str, Any]]:
    """Carry out ``plans`` for the subject ``hashed``; the certificate's entries.
    ``deployed``: the arms (by version) of the pipeline's newest checkpoint."""
    if not plans:
        return []
    from pipelines.training import train

    out = []
    for plan in plans:
        v = plan.version
        entry: dict[str, Any] = {"version": v.id, "action": plan.action, "why": plan.why,
                                 "history": plan.where, "sha256_before": v.artifact_sha256}
        if plan.action == "unchecked":
            out.append(entry)
            continue
        if plan.action == "retrain":
            details = _created(registry, v.id)
            erased = sorted({*(details.get("erased_subjects") or []), hashed})
            new = train(config, str(plan.where), registry_url=registry.url, actor=actor,
                        spec=_spec(config, v, details),
                        drop=_hashed_in(set(erased)), parent_id=v.id,
                        erased_subjects=erased, retrained_from=v.id)
            entry.update(rows_removed=plan.rows, retrained_version=new.id,
                         sha256_after=new.artifact_sha256)
        registry.record(v.id, "retired", actor=actor, reason="erasure",
                        tainted=plan.action == "retrain", why=plan.why, subject=hashed,
                        replaced_by=entry.get("retrained_version"))
        entry["artifact_deleted"] = _delete(v.artifact_uri)
        if v.id in deployed:
            entry["still_deployed_as"] = deployed[v.id]
        out.append(entry)
    return out


def _hashed_in(hashes: set[str]) -> Callable[[Any], bool]:
    """Whether a key (of a history's key column) is one of the subjects ``hashes``."""
    return lambda key: subject_hash(str(key)) in hashes


def _created(registry: Any, version: str) -> dict[str, Any]:
    return next((e.details for e in registry.events(version) if e.kind == "created"), {})


def _spec(config: PipelineConfig, v: Any, details: dict[str, Any]) -> TrainingConfig:
    """The version's own training spec (estimator, parameters, scaling, label, features)
    on the config's split and columns."""
    steps = details.get("steps") or []
    return config.training.model_copy(update={
        "estimator": v.model_class, "params": v.params,
        "scale": any(s.endswith(".StandardScaler") for s in steps[:-1]),
        "label_column": details.get("label_column", config.training.label_column),
        "features": list(details["features"])})


def _delete(uri: str) -> bool:
    """Delete an artifact; whether it was there."""
    filesystem, path = resolve(uri)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        return False
    return True
