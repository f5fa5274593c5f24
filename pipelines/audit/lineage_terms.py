"""A version's exact training data, for :class:`~pipelines.audit.lineage.Lineage` (a
mixin): the links of its lineage (:class:`Term`), the training-log rows they select and
their summary, by the rule stated in :mod:`pipelines.audit.lineage`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from pipelines.audit.query import AuditQuery
from pipelines.checkpoint import MANIFEST

__all__ = ["Term", "TrainingData"]

_EXAMPLE = ("record_id", "key", "topic", "partition", "offset", "label", "model_version", "arm",
            "scorer", "seq", "learned_at", "committed_in", "commit_seq")

@dataclass(frozen=True)
class Term:
    """One link of a version's lineage: the rows of ``store``'s training log labelled
    ``version`` and committed by checkpoint ``upto`` (``returned``: the version left the
    deployment and came back, so only its last stay counts)."""

    store: str
    version: str
    upto: int | None
    """None: every commit so far (a version that is no checkpoint)."""
    returned: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "model_version": self.version,
                "committed_by": None if self.upto is None else f"ckpt-{self.upto:06d}",
                "last_stay_only": self.returned}


class TrainingData:
    """The training-data half of :class:`~pipelines.audit.lineage.Lineage`."""

    registry: Any
    pipeline: str
    store: str
    _terms: dict[str, list[Term]]
    _cuts: dict[tuple[str, str, int], dict[str, int]]
    if TYPE_CHECKING:
        def _version(self, version: str) -> Any: ...
        def _created_details(self, version: str) -> dict[str, Any]: ...
        def _returning(self) -> set[str]: ...
        def _has_audit(self, store: str) -> bool: ...
        def _query(self, store: str) -> AuditQuery: ...

    # -- a version's training data -----------------------------------------------------
    def terms(self, version: str) -> list[Term]:
        """The links of ``version``'s lineage (see the module's rule), nearest first."""
        if version in self._terms:
            return self._terms[version]
        self._terms[version] = []  # a cycle (never expected) ends here
        v = self._version(version)
        out: list[Term] = []
        if v is None:
            out = [Term(self.store, version, None)]
        elif v.kind == "river":
            details = self._created_details(version)
            deployment, ckpt = details.get("deployment"), details.get("checkpoint")
            if deployment and ckpt:
                live = deployment["arms"][0]["version"]
                out = [Term(_store_of(v.artifact_uri, ckpt), live, _seq(ckpt),
                            live in self._returning())]
                if self._version(live) is not None:
                    out += self.terms(live)
        self._terms[version] = out
        return out

    def examples(self, version: str, *, features: bool = False) -> list[dict[str, Any]]:
        """Every training-log row of ``version``'s training data, by store, scorer and
        ``seq`` (the order each scorer learned them in); ``features``: with the features
        the record was scored on (from the trail)."""
        out = []
        for store, where, params in self._predicates(self.terms(version)):
            cols = ", ".join(f't."{c}"' for c in _EXAMPLE)
            sql = (f"SELECT {cols}, ? AS store FROM training t WHERE {where} "
                   "ORDER BY t.scorer, t.seq")
            if features:
                sql = (f"WITH e AS ({sql}), f AS (SELECT record_id, any_value(features) AS "
                       "features FROM trail WHERE record_id IN (SELECT record_id FROM e) "
                       "GROUP BY record_id) SELECT e.*, f.features FROM e LEFT JOIN f "
                       "USING (record_id) ORDER BY e.scorer, e.seq")
            out += _decoded(self._query(store).rows(sql, [store, *params]))
        return out

    def _training(self, terms: list[Term], *, records: bool) -> dict[str, Any]:
        n = 0
        sources: dict[str, list[int]] = {}
        keys: set[str] = set()
        n_keys = 0
        ends: list[dict[str, Any]] = []
        ids: list[str] = []
        preds = self._predicates(terms)
        for store, where, params in preds:
            q = self._query(store)
            agg = q.rows(f"SELECT count(*) AS n, count(DISTINCT key) AS keys FROM training t "
                         f"WHERE {where}", params)[0]
            n += agg["n"]
            n_keys += agg["keys"]
            if len(preds) > 1:  # the same subject in two stores is one subject
                keys.update(r["key"] for r in q.rows(
                    f"SELECT DISTINCT key FROM training t WHERE {where}", params))
            for r in q.rows(f"SELECT topic, partition, min(\"offset\") AS lo, "
                            f"max(\"offset\") AS hi FROM training t WHERE {where} "
                            "GROUP BY ALL", params):
                name = f"{r['topic']}[{r['partition']}]"
                lo, hi = sources.get(name, [r["lo"], r["hi"] + 1])
                sources[name] = [min(lo, r["lo"]), max(hi, r["hi"] + 1)]
            for order in ("ASC", "DESC"):
                ends += _decoded(q.rows(
                    f"SELECT record_id, key, topic, partition, \"offset\", label, "
                    f"model_version, arm, scorer, learned_at, committed_in FROM training t "
                    f"WHERE {where} ORDER BY learned_at {order}, seq {order} LIMIT 1", params))
            if records:
                ids += [r["record_id"] for r in q.rows(
                    f"SELECT record_id FROM training t WHERE {where} ORDER BY record_id",
                    params)]
        ends.sort(key=lambda r: r["learned_at"])
        out = {"n_examples": n, "n_keys": len(keys) if len(preds) > 1 else n_keys,
               "sources": dict(sorted(sources.items())),
               "first": ends[0] if ends else None, "last": ends[-1] if ends else None}
        if records:
            out["records"] = sorted(ids)
        return out

    def _predicates(self, terms: list[Term]) -> list[tuple[str, str, list[Any]]]:
        """Per store, a WHERE clause (over ``training t``) selecting the terms' rows."""
        by_store: dict[str, tuple[list[str], list[Any]]] = {}
        for t in terms:
            if not self._has_audit(t.store):
                continue
            clauses, params = by_store.setdefault(t.store, ([], []))
            clause = "(t.model_version = ? AND t.commit_seq <= ?"
            params += [t.version, _upto(t)]
            cuts = self._cut(t) if t.returned else {}
            if cuts:
                clause += " AND t.seq > CASE t.scorer " + " ".join(
                    "WHEN ? THEN ?" for _ in cuts) + " ELSE -1 END"
                for scorer, cut in cuts.items():
                    params += [scorer, cut]
            clauses.append(clause + ")")
        return [(store, " OR ".join(c), p) for store, (c, p) in by_store.items()]

    def _cut(self, t: Term) -> dict[str, int]:
        """Per scorer, the ``seq`` of the last example it learned without ``t.version``
        before that version's last stay began (its rows up to there do not count)."""
        key = (t.store, t.version, _upto(t))
        if key not in self._cuts:
            rows = self._query(t.store).rows(
                "WITH g AS (SELECT scorer, record_id, min(seq) AS s, "
                "bool_or(model_version = ?) AS has FROM training WHERE commit_seq <= ? "
                "GROUP BY scorer, record_id), "
                "last AS (SELECT scorer, max(s) AS m FROM g WHERE has GROUP BY scorer) "
                "SELECT g.scorer, max(g.s) AS cut FROM g JOIN last USING (scorer) "
                "WHERE NOT g.has AND g.s < last.m GROUP BY g.scorer", [t.version, _upto(t)])
            self._cuts[key] = {r["scorer"]: r["cut"] for r in rows}
        return self._cuts[key]

    def _versions_including(self, rows: Iterable[dict[str, Any]]) -> set[str]:
        """The registered versions whose training data holds any of these training-log
        rows (each with its ``store``)."""
        rows = list(rows)
        if not rows:
            return set()
        out = set()
        for v in self.registry.versions(self.pipeline):
            if v.kind != "river":
                continue
            for t in self.terms(v.id):
                cuts = self._cut(t) if t.returned else {}
                if any(r["store"] == t.store and r["model_version"] == t.version
                       and r["commit_seq"] <= _upto(t) and r["seq"] > cuts.get(r["scorer"], -1)
                       for r in rows):
                    out.add(v.id)
                    break
        return out


def _store_of(artifact_uri: str, checkpoint: str) -> str:
    """The checkpoint store a River version's artifact (its manifest) is in."""
    return artifact_uri.removesuffix(f"/{checkpoint}/{MANIFEST}").rstrip("/")


def _upto(t: Term) -> int:
    return 2**62 if t.upto is None else t.upto


def _seq(checkpoint: str) -> int:
    return int(checkpoint.rsplit("-", 1)[1])


def _decoded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their JSON text columns (features, score, prediction, label) as values."""
    for row in rows:
        for col in ("features", "score", "prediction", "label"):
            if isinstance(row.get(col), str):
                row[col] = orjson.loads(row[col])
    return rows
