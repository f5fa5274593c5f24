"""Point-in-time explanations: the exact model that scored a record, rebuilt, and why it
said what it said.

**Which model.** A scorer's trail row of record R names the version that scored it, the
committed checkpoint its scorer continued from (``checkpoint``) and how many examples the
scorer had learned before it (``examples``). The model is therefore the arm of that
version in the scorer's part of the checkpoint (none: the config's fresh model), then
every example the training log says that version learned since (``seq`` from the part's
``counts["examples"]`` up to R's ``examples``), in ``seq`` order, on the features the
trail kept for each record. Three details of the scorer (``pipelines.scoring``):

- a version the checkpoint does not hold was deployed after it, loaded from its artifact
  (a registered checkpoint's part for this scorer, or a batch model's pickle);
- every River version a scorer holds (its arms and the warm ``previous`` version) learns
  every example, so an example learned without the version means it left the deployment;
  when it came back it was loaded from its artifact again, and only the examples after
  its return count;
- a label that came before its event is learned just after the event is scored: its row
  comes after R's count, as the scorer saw it.

When the checkpoint was pruned, the rebuild starts from the newest retained checkpoint
before it (``checkpoint.retain``) or, failing that, from the fresh model, provided the
training log holds every example in between; otherwise it says it cannot (an
:class:`~pipelines.errors.AuditError`, one line).

**Exactness.** The rebuilt model scores R's features again and the answer is compared
with the audited score, class by class, to 1e-9. An explanation is only of that model,
so a mismatch is part of the answer (``exact: false``) and ``riffle explain`` exits 1.

**Why.** :mod:`pipelines.audit.explainers`: a linear model's contributions, a tree's
decision path, else SHAP values.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson
from pyarrow import fs

from pipelines.audit.trail import AuditStore, Commit, Kind
from pipelines.checkpoint import CheckpointStore, Manifest, loads_state
from pipelines.config import PipelineConfig
from pipelines.errors import AuditError, RiffleError
from pipelines.models import build_model
from pipelines.scoring import live_model_of, task_of_model

__all__ = ["TOLERANCE", "Explainer", "Rebuilt", "Scored", "compare_scores"]

TOLERANCE = 1e-9
"""How close the rebuilt model's score must be to the audited one, per class."""

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class Scored:
    """A record's row of the audit trail (one arm's decision)."""

    record_id: str
    key: str
    scorer: str
    model_version: str
    arm: str
    role: str
    checkpoint: str | None
    examples: int
    features: dict[str, Any]
    output: dict[str, Any]
    committed_in: str
    commit_seq: int

    @property
    def score(self) -> Any:
        return self.output.get("score")


@dataclass
class Rebuilt:
    """The model that scored a record, and how it was rebuilt."""

    model: Any
    base: str
    """What the replay started from, in words."""
    replayed: int
    """Examples learned on top of it."""
    fallback: str | None = None
    """One line when the record's own checkpoint was gone and an older start was used."""
    notes: list[str] = field(default_factory=list)


def compare_scores(audited: Any, rebuilt: Any) -> tuple[bool, float]:
    """Whether two scores agree to :data:`TOLERANCE` (class probabilities compared per
    class, keys as JSON writes them; a class one side lacks counts as 0), and the
    largest difference.

    >>> ok, err = compare_scores({"true": 0.8, "false": 0.2}, {True: 0.8 + 1e-12, False: 0.2})
    >>> ok, err < 1e-11
    (True, True)
    >>> compare_scores({"1": 0.5}, {1: 0.4, 2: 0.6})[0]
    False
    >>> compare_scores(3.0, 3.0), compare_scores(None, None)
    ((True, 0.0), (True, 0.0))
    """
    rebuilt = orjson.loads(orjson.dumps(rebuilt, option=_JSON))  # keys as the trail's
    if isinstance(audited, dict) and isinstance(rebuilt, dict):
        diffs = [abs(float(audited.get(c) or 0.0) - float(rebuilt.get(c) or 0.0))
                 for c in set(audited) | set(rebuilt)]
        err = max(diffs, default=0.0)
        return err <= TOLERANCE, err
    if audited is None or rebuilt is None:
        return audited is None and rebuilt is None, 0.0
    if isinstance(audited, int | float) and isinstance(rebuilt, int | float):
        err = abs(float(audited) - float(rebuilt))
        return err <= TOLERANCE, err
    return audited == rebuilt, 0.0 if audited == rebuilt else float("inf")


class Explainer:
    """Explanations of the records of one pipeline's committed audit trail.

    ``registry`` (a :class:`~pipelines.registry.Registry`) is needed only to load the
    artifact of a version deployed after a record's checkpoint.
    """

    def __init__(self, config: PipelineConfig, *, store_url: str, registry: Any = None
                 ) -> None:
        self.config = config
        self.registry = registry
        self.store = CheckpointStore(store_url)
        self.audit = AuditStore(store_url)
        if not isinstance(self.audit.filesystem, fs.LocalFileSystem):
            raise AuditError(f"explain reads local stores; {store_url} is not one")
        self.commits: list[Commit] = self.audit.commits()
        self._con = duckdb.connect()
        _table(self._con, "_commits", {
            "filename": ("VARCHAR", [self.audit.path(s.path) for c in self.commits
                                     for s in c.segments]),
            "committed_in": ("VARCHAR", [c.checkpoint for c in self.commits
                                         for _ in c.segments]),
            "commit_seq": ("BIGINT", [c.seq for c in self.commits for _ in c.segments])})
        self.timings: dict[str, float] = {}

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the committed segments -----------------------------------------------
    def _files(self, kind: Kind, scorer: str | None = None, after: int | None = None,
               upto: int | None = None) -> list[str]:
        paths = [self.audit.path(s.path) for c in self.commits for s in c.segments
                 if s.kind == kind and (scorer is None or s.scorer == scorer)
                 and (after is None or c.seq > after) and (upto is None or c.seq <= upto)]
        return [p for p in paths if os.path.exists(p)]  # a segment deleted: rows missing

    def _select(self, files: list[str], columns: str, where: str, params: list[Any]
                ) -> list[dict[str, Any]]:
        if not files:
            return []
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        cur = self._con.execute(
            f"SELECT {columns}, c.committed_in, c.commit_seq "
            f"FROM read_parquet([{listed}], filename = true) s "
            f"JOIN _commits c USING (filename) WHERE {where}", params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def scored(self, record_id: str, arm: str | None = None) -> Scored:
        """The trail row of ``record_id``: the row of ``arm`` if named, else the served
        one (not a shadow's); the latest committed if the store holds several runs."""
        started = time.perf_counter()
        rows = self._select(
            self._files("trail"),
            "s.record_id, s.key, s.scorer, s.model_version, s.arm, s.role, s.checkpoint, "
            "s.examples, s.features, s.output", "s.record_id = ?", [record_id])
        self.timings["find_s"] = time.perf_counter() - started
        if not rows:
            raise AuditError(f"record {record_id} is not in the committed audit trail of "
                             f"{self.audit.url}")
        chosen = [r for r in rows if r["arm"] == arm] if arm is not None else [
            r for r in rows if r["role"] != "shadow"] or rows
        if not chosen:
            arms = ", ".join(sorted({r["arm"] for r in rows}))
            raise AuditError(f"record {record_id} was not scored by an arm {arm!r} "
                             f"(its arms: {arms})")
        row = max(chosen, key=lambda r: r["commit_seq"])
        if row["examples"] is None:
            raise AuditError(f"record {record_id}: its trail row predates the examples "
                             "count; it cannot be explained exactly")
        return Scored(row["record_id"], row["key"], row["scorer"], row["model_version"],
                      row["arm"], row["role"], row["checkpoint"], int(row["examples"]),
                      orjson.loads(row["features"]), orjson.loads(row["output"]),
                      row["committed_in"], int(row["commit_seq"]))

    def _examples(self, scorer: str, lo: int, hi: int, after: int | None, upto: int
                  ) -> list[dict[str, Any]]:
        """The scorer's training rows with ``lo <= seq < hi`` committed after checkpoint
        number ``after`` and by ``upto``, one per seq (the latest committed: a store can
        hold several runs), in seq order."""
        rows = self._select(self._files("training", scorer, after, upto),
                            "s.record_id, s.label, s.model_version, s.seq",
                            "s.seq >= ? AND s.seq < ?", [lo, hi])
        best: dict[int, dict[str, Any]] = {}
        for r in rows:
            seen = best.get(r["seq"])
            if seen is None or r["commit_seq"] > seen["commit_seq"]:
                best[r["seq"]] = r
        return [best[s] for s in sorted(best)]

    def features_of(self, scorer: str, record_ids: list[str], upto: int, near: int | None
                    ) -> dict[str, dict[str, Any]]:
        """The features the scorer's trail kept for ``record_ids`` (committed by ``upto``):
        first in the commits after ``near`` (where most are), then in the older ones."""
        out: dict[str, tuple[int, bytes]] = {}
        wanted = sorted(set(record_ids))
        _table(self._con, "_wanted", {"record_id": ("VARCHAR", wanted)})
        try:
            for after, until in ((near, upto), (None, near)) if near is not None else (
                    (None, upto),):
                missing = [r for r in wanted if r not in out]
                if not missing:
                    break
                for r in self._select(self._files("trail", scorer, after, until),
                                      "s.record_id, s.features",
                                      "s.record_id IN (SELECT record_id FROM _wanted)", []):
                    seen = out.get(r["record_id"])
                    if seen is None or r["commit_seq"] > seen[0]:
                        out[r["record_id"]] = (r["commit_seq"], r["features"])
        finally:
            self._con.execute("DROP TABLE _wanted")
        return {rid: orjson.loads(f) for rid, (_, f) in out.items()}

    # -- rebuilding the model -----------------------------------------------------------
    def rebuild(self, row: Scored) -> Rebuilt:
        """The model that scored ``row``, rebuilt from a checkpoint and the training log."""
        started = time.perf_counter()
        manifests = {m.id: m for m in self.store.manifests()}
        starts: list[Manifest | None]
        fallback = None
        if row.checkpoint is None:
            starts = [None]
        elif row.checkpoint in manifests:
            starts = [manifests[row.checkpoint]]
        else:
            wanted = _seq_of(row.checkpoint)
            older = [m for m in manifests.values() if m.seq < wanted and row.scorer in m.parts]
            starts = [*sorted(older, key=lambda m: -m.seq), None]
        for start in starts:
            state = (loads_state(self.store.read_part(start, row.scorer))
                     if start is not None else None)
            first = int(state["counts"].get("examples", 0)) if state is not None else 0
            if first > row.examples:
                continue
            rows = self._examples(row.scorer, first, row.examples,
                                  start.seq if start is not None else None, row.commit_seq)
            if len(rows) != row.examples - first:
                continue  # the log misses examples after this start: try an older one
            if start is not None and start.id != row.checkpoint:
                fallback = (f"checkpoint {row.checkpoint} was pruned: rebuilt from {start.id}, "
                            f"{row.examples - first} examples before the record")
            elif start is None and row.checkpoint is not None:
                fallback = (f"checkpoint {row.checkpoint} was pruned: rebuilt from the fresh "
                            f"model, all {row.examples} examples before the record")
            self.timings["load_s"] = time.perf_counter() - started
            out = self._replay(row, start, state, rows)
            out.fallback = fallback
            self.timings["rebuild_s"] = time.perf_counter() - started
            return out
        raise AuditError(
            f"record {row.record_id}: checkpoint {row.checkpoint} is pruned and no retained "
            f"checkpoint before it (or the training log from the start) covers the examples "
            f"up to it; keep more with checkpoint.retain")

    def _replay(self, row: Scored, start: Manifest | None, state: dict[str, Any] | None,
                rows: list[dict[str, Any]]) -> Rebuilt:
        version = row.model_version
        held = None
        if state is not None:
            arms = [*state["arms"], *([state["previous"]] if state["previous"] else [])]
            held = next((a.model for a in arms if a.version == version), None)
        # Each example is learned by every River version held, one row each in a run of
        # seqs; an example without a row of ours means the version was not held then, and
        # was loaded from its artifact again when it came back: only its last stay counts.
        stay = 0
        i = 0
        while i < len(rows):
            j = i
            while j < len(rows) and rows[j]["record_id"] == rows[i]["record_id"]:
                j += 1
            if all(r["model_version"] != version for r in rows[i:j]):
                stay = j
            i = j
        mine = [r for r in rows[stay:] if r["model_version"] == version]
        notes = []
        if stay and held is not None and getattr(held, "learns", True):
            held = None
            notes.append(f"{version} was out of the deployment for a while: rebuilt from "
                         "its artifact as loaded at its return")
        if held is not None:
            model, base = held, f"checkpoint {start.id if start else '-'} ({row.scorer})"
        elif start is None and not stay and version == self.config.scoring.model.version:
            model, base = build_model(self.config.scoring.model), "the config's fresh model"
        else:
            model, base = self._artifact(version, row.scorer), f"the artifact of {version}"
        if mine:
            features = self.features_of(row.scorer, [r["record_id"] for r in mine],
                                        row.commit_seq, start.seq - 1 if start else None)
            lost = [r["record_id"] for r in mine if r["record_id"] not in features]
            if lost:
                raise AuditError(f"record {row.record_id}: the trail has no features for "
                                 f"{len(lost)} learned examples (first {lost[0]})")
            learn = model.learn_one
            for r in mine:
                learn(features[r["record_id"]], orjson.loads(r["label"]))
        return Rebuilt(model, base, len(mine), None, notes)

    def _artifact(self, version: str, scorer: str) -> Any:
        """A deployed version's model, as a scorer loads it (pipelines.lifecycle)."""
        if self.registry is None:
            raise AuditError(f"{version} was deployed after the record's checkpoint: its "
                             "artifact is needed and no registry is open")
        v = self.registry.get(version)
        if v.kind != "river":
            return loads_state(self.registry.load_artifact(version))
        store, manifest = self.registry.open_checkpoint(version)
        if scorer not in manifest.parts:
            raise AuditError(f"{version}: checkpoint {manifest.id} has no part for {scorer}")
        try:
            return live_model_of(loads_state(store.read_part(manifest, scorer)))
        except (OSError, RiffleError) as e:
            raise AuditError(f"{version}: cannot read its checkpoint {manifest.id} "
                             f"(pruned?): {e}") from None

    # -- the answer ---------------------------------------------------------------------
    def explain(self, record_id: str, arm: str | None = None) -> dict[str, Any]:
        """The explanation of ``record_id``'s score, as plain JSON data."""
        from pipelines.audit.explainers import explain_model

        row = self.scored(record_id, arm)
        rebuilt = self.rebuild(row)
        model = rebuilt.model
        task = task_of_model(model)
        x = copy.deepcopy(row.features)
        score = (model.predict_proba_one(x) if task != "regression" else model.predict_one(x))
        exact, error = compare_scores(row.score, score)
        started = time.perf_counter()
        why = explain_model(model, row.features, task=task, background=lambda n: (
            self.background(row, n)), prediction=row.output.get("prediction"))
        self.timings["explain_s"] = time.perf_counter() - started
        return {
            "record_id": row.record_id, "key": row.key, "scorer": row.scorer,
            "model_version": row.model_version, "arm": row.arm, "role": row.role,
            "checkpoint": row.checkpoint, "examples_before": row.examples,
            "committed_in": row.committed_in,
            "rebuilt_from": rebuilt.base, "replayed": rebuilt.replayed,
            "fallback": rebuilt.fallback, "notes": rebuilt.notes,
            "features": row.features, "prediction": row.output.get("prediction"),
            "audited_score": row.score,
            "rebuilt_score": orjson.loads(orjson.dumps(score, option=_JSON)),
            "exact": exact, "max_error": error, "tolerance": TOLERANCE,
            **why,
        }

    def background(self, row: Scored, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` feature rows the scorer learned before ``row`` (the newest)."""
        rows = self._select(self._files("training", row.scorer, None, row.commit_seq),
                            "s.record_id, s.seq", "s.seq < ?", [row.examples])
        rows.sort(key=lambda r: (-r["seq"], -r["commit_seq"]))
        ids = list(dict.fromkeys(r["record_id"] for r in rows))[:n]
        found = self.features_of(row.scorer, ids, row.commit_seq, None)
        return [found[i] for i in ids if i in found]


def _seq_of(checkpoint: str) -> int:
    digits = checkpoint.rpartition("-")[2]
    return int(digits) if digits.isdigit() else 0


def _table(con: duckdb.DuckDBPyConnection, name: str,
           columns: dict[str, tuple[str, list[Any]]]) -> None:
    """A temporary table of ``columns`` (name: (SQL type, values)), built in DuckDB from
    Python lists: an Arrow table would have pyarrow import pandas (~0.3 s cold)."""
    select = ", ".join(f"unnest(?::{sql}[]) AS {col}" for col, (sql, _) in columns.items())
    con.execute(f"CREATE TEMP TABLE {name} AS SELECT {select}",
                [values for _, values in columns.values()])
