"""Exact unlearning for :class:`~pipelines.audit.forget.Forgetter`: the models rebuilt
from the newest retained checkpoint before the subject's first record, by replaying the
training log without the subject's rows (the rule is in :mod:`pipelines.audit.forget`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from pipelines.audit.query import AuditQuery
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id, dumps_state, loads_state
from pipelines.config import PipelineConfig
from pipelines.errors import AuditError

if TYPE_CHECKING:
    from pyarrow import fs

__all__ = ["GAPS", "Replaying"]

GAPS = "erasure/gaps.json"
"""Per scorer, the training log's ``seq`` numbers erased so far (numbers only): a later
replay checks that the log it reads is whole but for them."""


class Replaying:
    """The model half of a :class:`~pipelines.audit.forget.Forgetter` (a mixin)."""

    config: PipelineConfig
    store: CheckpointStore
    store_url: str
    registry: Any
    _fs: fs.FileSystem
    _root: str
    if TYPE_CHECKING:
        def _write_json(self, rel: str, doc: Any) -> None: ...

    # -- models ------------------------------------------------------------------------
    def _rebuild(self, key: str, record_ids: set[str], manifests: list[Manifest], first: int,
                 first_learned: int | None, cert: dict[str, Any], now: float) -> Manifest:
        latest = manifests[-1]
        base = next((m for m in reversed(manifests) if m.seq < first), None)
        scorers = sorted(n for n in latest.parts if n.startswith("scorer-"))
        if base is not None and sorted(n for n in base.parts if n.startswith("scorer-")) \
                != scorers:
            raise AuditError(f"cannot rebuild: checkpoint {base.id} has other scorers than "
                             f"{latest.id} (the pipeline was rescaled in between)")
        gaps = self._gaps()
        seq = self.store.next_seq()
        ckpt = checkpoint_id(seq)
        parts = {}
        report: dict[str, Any] = {}
        replayed = skipped = 0
        with AuditQuery(self.store_url) as q:
            for name in scorers:
                state, n, erased = self._replay(q, name, base, latest, key, gaps)
                replayed += n
                skipped += len(erased)
                gaps.setdefault(name, []).extend(erased)
                dropped = state["labels"].forget(record_ids,
                                                 where=lambda e: e.event.key == key)
                cert["removed"]["pending_labels"] += dropped
                blob = dumps_state(state)
                parts[name] = self.store.write_part(ckpt, name, blob)
                report[name] = {"before": latest.parts[name].sha256,
                                "after": parts[name].sha256, "replayed": n,
                                "skipped": len(erased)}
        for name in latest.parts:
            if name in parts:
                continue
            state = loads_state(self.store.read_part(latest, name))
            if isinstance(state, dict) and "seen" in state:  # an ingest actor's part
                kept = [r for r in state["seen"] if r not in record_ids]
                cert["removed"]["dedupe_memory"] += len(state["seen"]) - len(kept)
                state = {**state, "seen": kept}
            parts[name] = self.store.write_part(ckpt, name, dumps_state(state))
        head = self.registry.access_head() if self.registry is not None else None
        manifest = self.store.commit(latest.model_copy(update={
            "id": ckpt, "seq": seq, "created_at": now, "parts": parts, "segments": [],
            "access_log": {"size": head[0], "root": head[1]} if head else latest.access_log}))
        self._write_json(GAPS, gaps)
        tainted = [m.id for m in manifests
                   if first_learned is not None and m.seq >= first_learned]
        cert["models"] = {
            "rebuilt_checkpoint": ckpt, "from": base.id if base else "the run's start (config)",
            "replaced": latest.id, "replayed": replayed, "skipped": skipped, "parts": report,
            "tainted": tainted, "metrics_and_counts": "kept as they were"}
        return manifest

    def _replay(self, q: AuditQuery, name: str, base: Manifest | None, latest: Manifest,
                key: str, gaps: dict[str, list[int]]) -> tuple[dict[str, Any], int, list[int]]:
        """``name``'s state at ``latest`` with models replayed from ``base`` without the
        subject: (state, examples replayed, the subject's seq numbers skipped)."""
        if base is not None:
            start = loads_state(self.store.read_part(base, name))
        else:
            from pipelines.scoring import ScorerCore  # River: only when a fresh model is needed

            start = ScorerCore(self.config.scoring, name=name).snapshot()
        models = {a.version: a.model for a in start["arms"]}
        if start["previous"] is not None:
            models.setdefault(start["previous"].version, start["previous"].model)
        state = loads_state(self.store.read_part(latest, name))
        lo, hi = start["counts"].get("examples", 0), state["counts"].get("examples", 0)
        rows = q.rows(
            "SELECT t.seq, t.record_id, t.model_version, t.label, t.key, f.features "
            "FROM training t "
            "LEFT JOIN (SELECT record_id, any_value(features) AS features FROM trail "
            "GROUP BY record_id) f USING (record_id) "
            "WHERE t.scorer = ? AND t.seq >= ? AND t.seq < ? ORDER BY t.seq", [name, lo, hi])
        earlier = sum(lo <= s < hi for s in gaps.get(name, []))
        if len(rows) + earlier != hi - lo:
            raise AuditError(f"cannot rebuild {name}: its training log holds {len(rows)} of "
                             f"the {hi - lo - earlier} examples learned between "
                             f"{base.id if base else 'the start'} and {latest.id}")
        erased = []
        loads = orjson.loads
        since = base.id if base else "the start"
        # Every River version a scorer holds learns every example, one row each in a run
        # of seqs: an example without a row of a held version means it left the
        # deployment; a scorer that takes it back reloads it from its artifact.
        learning = {v for v, m in models.items() if getattr(m, "learns", True)}
        left: set[str] = set()
        for example in _examples(rows):
            present = {r["model_version"] for r in example}
            back = present & left
            if back:
                raise AuditError(f"cannot rebuild {name}: version {min(back)} left the "
                                 f"deployment after {since} and came back (reloaded from "
                                 "its artifact then): a rebuild across that is not built")
            left |= learning - present
            learning &= present
            for r in example:
                if r["key"] == key:
                    erased.append(r["seq"])
                    continue
                model = models.get(r["model_version"])
                if model is None:
                    raise AuditError(f"cannot rebuild {name}: version {r['model_version']} "
                                     f"was deployed after {since}, which does not hold it")
                if r["features"] is None:
                    raise AuditError(f"cannot rebuild {name}: example seq {r['seq']} has no "
                                     "features in the audit trail")
                model.learn_one(loads(r["features"]), loads(r["label"]))
        for arm in (*state["arms"], state["previous"]):
            if arm is None or not getattr(arm.model, "learns", True):
                continue  # a batch-trained model learns nothing: the newest one's stays
            if arm.version not in models or arm.version in left:
                raise AuditError(f"cannot rebuild {name}: version {arm.version} was deployed "
                                 f"after {since}")
            arm.model = models[arm.version]
        return state, len(rows) - len(erased), erased

    def _gaps(self) -> dict[str, list[int]]:
        try:
            with self._fs.open_input_stream(f"{self._root}/{GAPS}") as f:
                raw: dict[str, list[int]] = orjson.loads(f.read())
                return raw
        except FileNotFoundError:
            return {}


def _examples(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The training-log rows (in ``seq`` order) by example: each run of one record's rows."""
    i = 0
    while i < len(rows):
        j = i + 1
        while j < len(rows) and rows[j]["record_id"] == rows[i]["record_id"]:
            j += 1
        yield rows[i:j]
        i = j
