"""Lineage over small hand-built trails: which version scored a record, and exactly which
records each version learned, through hot swaps, the warm previous version, a rollback
and a version that leaves the deployment and comes back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipelines.audit.lineage import Lineage
from pipelines.audit.trail import AuditStore, trail_table, training_table
from pipelines.errors import AuditError
from pipelines.protocol import Event
from pipelines.registry import Registry

P = "p"


def _deployment(live: str, previous: str | None = None) -> dict[str, Any]:
    return {"mode": "live", "arms": [{"name": "live", "version": live, "role": "live",
                                      "weight": 1.0}], "previous": previous}


class Trail:
    """A pipeline's audit data written by hand: rows, then commits (segments, index and a
    registered checkpoint version), and control commands."""

    def __init__(self, root: Path, registry: Registry) -> None:
        self.store_url = str(root / "checkpoints")
        self.store = AuditStore(self.store_url)
        self.registry = registry
        self.trail: dict[str, list[tuple[Any, ...]]] = {}
        self.training: dict[str, list[tuple[Any, ...]]] = {}
        self.seq: dict[str, int] = {}
        self.clock = 1000.0
        self.offset = 0
        self.parent: str | None = None

    def tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def score(self, rid: str, key: str, version: str, *, scorer: str = "s0",
              arm: str = "live", role: str = "live") -> Event:
        e = Event(rid, key, self.clock, {"x": float(len(rid))}, 0, self.offset, 0.0, "t")
        self.offset += 1
        output = orjson.dumps({"score": {"false": 0.4, "true": 0.6}, "prediction": True})
        self.trail.setdefault(scorer, []).append(
            (e, output, version, arm, role, self.tick(), self.seq.get(scorer, 0)))
        return e

    def learn(self, e: Event, *learners: tuple[str, str], scorer: str = "s0") -> None:
        """``learners``: (version, arm) pairs, in the order the scorer learns (candidates
        and previous first, live last)."""
        for version, arm in learners:
            seq = self.seq.get(scorer, 0)
            self.training.setdefault(scorer, []).append(
                (e, True, version, arm, seq, self.tick()))
            self.seq[scorer] = seq + 1

    def example(self, rid: str, *learners: tuple[str, str], scorer: str = "s0") -> str:
        version, arm = learners[-1]
        self.learn(self.score(rid, f"k-{rid}", version, scorer=scorer, arm=arm), *learners,
                   scorer=scorer)
        return rid

    def commit(self, seq: int, deployment: dict[str, Any]) -> str:
        ckpt = f"ckpt-{seq:06d}"
        segments = []
        for scorer, rows in self.trail.items():
            segments.append(self.store.write_segment(
                "trail", trail_table(rows, scorer, None), scorer=scorer, generation=0))
        for scorer, rows in self.training.items():
            segments.append(self.store.write_segment(
                "training", training_table(rows, scorer), scorer=scorer, generation=0))
        self.trail, self.training = {}, {}
        self.store.commit_index(ckpt, seq, segments)
        vid = f"{P}/{ckpt}"
        self.registry.register(
            pipeline=P, kind="river", version_id=vid, model_class="LogisticRegression",
            params={}, artifact_uri=f"{self.store_url}/{ckpt}/MANIFEST.json",
            artifact_sha256="0" * 64, parent_id=self.parent, code=None, actor="ci",
            checkpoint=ckpt, deployment=deployment)
        self.parent = vid
        return vid

    def command(self, op: str, version: str | None, deployment: dict[str, Any],
                actor: str = "ann") -> None:
        at = dt.datetime.fromtimestamp(self.tick(), dt.UTC)
        cid = f"c{int(self.clock)}"
        self.registry.log_command(status="applied", raw=f'{{"op": "{op}"}}', channel="cli",
                                  pipeline=P, command_id=cid, op=op, version_id=version,
                                  actor=actor, received_at=at, deployment=deployment)
        if version is not None and op == "deploy":
            self.registry.record(version, "deployed", actor=actor, command=cid,
                                 reason="better")


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[Trail]:
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as registry:
        yield Trail(tmp_path, registry)


def _lineage(t: Trail) -> Lineage:
    return Lineage(t.registry, pipeline=P, store_url=t.store_url)


def _records(lineage: Lineage, version: str) -> set[str]:
    doc = lineage.model(version, records=True)
    ids = doc["training"]["records"]
    assert doc["training"]["n_examples"] == len(ids)  # each example once
    return set(ids)


LIVE0 = ("v0", "live")


def test_model_of_checkpoints_without_swap_counts_every_label_committed_by_it(
        trail: Trail) -> None:
    first = {trail.example(f"a{i}", LIVE0) for i in range(3)}
    v1 = trail.commit(1, _deployment("v0"))
    second = {trail.example(f"b{i}", LIVE0, scorer="s1") for i in range(2)}
    v2 = trail.commit(2, _deployment("v0"))
    with _lineage(trail) as lineage:
        assert _records(lineage, v1) == first
        assert _records(lineage, v2) == first | second
        doc = lineage.model(v2)
    assert doc["parents"] == [v1]
    assert doc["training"]["n_keys"] == 5
    assert doc["training"]["sources"] == {"t[0]": [0, 5]}
    assert doc["training"]["first"]["record_id"] == "a0"
    assert doc["training"]["last"]["record_id"] == "b1"


def test_model_after_hot_swap_and_rollback_follows_the_live_models_own_examples(
        trail: Trail) -> None:
    base = {trail.example(f"a{i}", LIVE0) for i in range(3)}
    v1 = trail.commit(1, _deployment("v0"))
    swapped = _deployment(v1, previous="v0")
    trail.command("deploy", v1, swapped)
    # v1 serves and learns; v0 keeps learning, warm, as arm "previous".
    while_swapped = {trail.example(f"b{i}", ("v0", "previous"), (v1, "live"))
                     for i in range(4)}
    v2 = trail.commit(2, swapped)
    trail.command("rollback", None, _deployment("v0"))
    after = {trail.example(f"c{i}", LIVE0) for i in range(2)}
    v3 = trail.commit(3, _deployment("v0"))
    with _lineage(trail) as lineage:
        # v2 is v1's model (base) plus what v1 learned live; not what v0 learned meanwhile.
        assert _records(lineage, v2) == base | while_swapped
        assert [t["model_version"] for t in lineage.model(v2)["lineage"]] == [v1, "v0"]
        # Rolled back, v0 serves with all it learned, as previous too: the same records
        # here, but from v0's own rows (v1's are not v3's).
        assert _records(lineage, v3) == base | while_swapped | after
        rows = lineage.examples(v3)
        assert {r["model_version"] for r in rows} == {"v0"}
        assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
        assert len(lineage.examples(v2)) == len(base | while_swapped)


def test_model_of_a_version_that_came_back_counts_only_its_last_stay(trail: Trail) -> None:
    base = {trail.example(f"a{i}", LIVE0) for i in range(3)}
    v1 = trail.commit(1, _deployment("v0"))
    swapped = _deployment(v1, previous="v0")
    trail.command("deploy", v1, swapped)
    first_stay = {trail.example(f"b{i}", ("v0", "previous"), (v1, "live")) for i in range(3)}
    trail.command("rollback", None, _deployment("v0"))
    gap = {trail.example(f"c{i}", LIVE0) for i in range(2)}
    trail.command("deploy", v1, swapped)  # loaded again from its artifact: v1's state anew
    second_stay = {trail.example(f"d{i}", ("v0", "previous"), (v1, "live")) for i in range(2)}
    v2 = trail.commit(2, swapped)
    with _lineage(trail) as lineage:
        assert _records(lineage, v2) == base | second_stay
        assert lineage.model(v2)["lineage"][0]["last_stay_only"] is True
        assert first_stay.isdisjoint(_records(lineage, v2)) and gap
        # The starting model learned everything, live and warm.
        assert _records(lineage, "v0") == base | first_stay | gap | second_stay


def test_record_names_the_version_that_scored_it_who_put_it_there_and_where_it_was_learned(
        trail: Trail) -> None:
    trail.example("a0", LIVE0)
    v1 = trail.commit(1, _deployment("v0"))
    trail.command("deploy", v1, _deployment(v1, previous="v0"), actor="bob")
    e = trail.score("b0", "k-b0", v1)
    trail.score("b0", "k-b0", "p/sk-9", arm="candidate", role="shadow")
    v2 = trail.commit(2, _deployment(v1, previous="v0"))
    trail.learn(e, ("v0", "previous"), (v1, "live"))
    v3 = trail.commit(3, _deployment(v1, previous="v0"))
    with _lineage(trail) as lineage:
        doc = lineage.record("b0")
        old = lineage.record("a0")
    [served] = doc["served"]
    assert served["model_version"] == v1 and served["features"] == {"x": 2.0}
    assert served["placed_by"]["how"] == "deploy by bob"
    assert [ev["event"] for ev in served["placed_by"]["events"]] == ["deployed"]
    assert [s["model_version"] for s in doc["shadow"]] == ["p/sk-9"]
    assert {(r["arm"], r["committed_into"]) for r in doc["learned"]} == {
        ("previous", v3), ("live", v3)}
    assert doc["in_versions"] == [v3] and doc["first_version"] == v3  # not v2: learned later
    assert old["served"][0]["placed_by"]["how"].startswith("the pipeline's starting model")
    assert old["in_versions"] == [v1, v2, v3]  # v2 continues v1, which learned a0


def test_key_lists_every_record_of_the_subject_and_the_versions_trained_on_it(
        trail: Trail) -> None:
    e1 = trail.score("r1", "alice", "v0")
    trail.score("r2", "bob", "v0")
    trail.learn(e1, LIVE0)
    v1 = trail.commit(1, _deployment("v0"))
    trail.score("r3", "alice", "v0")  # its label never comes
    trail.commit(2, _deployment("v0"))
    with _lineage(trail) as lineage:
        doc = lineage.key("alice")
    assert [r["record_id"] for r in doc["records"]] == ["r1", "r3"]
    assert doc["records"][0]["label"] is True and doc["records"][1]["label"] is None
    assert doc["records"][0]["served"]["prediction"] is True
    assert doc["versions"] == [v1, f"{P}/ckpt-000002"]
    assert doc["n_learned"] == 1


def test_unknown_record_key_and_version_are_one_line_errors(trail: Trail) -> None:
    trail.example("a0", LIVE0)
    trail.commit(1, _deployment("v0"))
    with _lineage(trail) as lineage:
        for ask, what in ((lambda: lineage.record("nope"), "unknown record nope"),
                          (lambda: lineage.key("nobody"), "unknown key"),
                          (lambda: lineage.model("p/ckpt-000042"),
                           "unknown model version p/ckpt-000042")):
            with pytest.raises(AuditError, match=what):
                ask()


def test_uncommitted_segments_are_not_lineage(trail: Trail) -> None:
    trail.example("a0", LIVE0)
    v1 = trail.commit(1, _deployment("v0"))
    e = trail.score("late", "k", "v0")
    trail.learn(e, LIVE0)
    trail.store.write_segment("training", training_table(trail.training.pop("s0"), "s0"),
                              scorer="s0", generation=0)  # written, never committed
    with _lineage(trail) as lineage:
        assert _records(lineage, v1) == {"a0"}
        with pytest.raises(AuditError):
            lineage.record("late")
