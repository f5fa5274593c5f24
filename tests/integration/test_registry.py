"""The model registry on a real SQLite file and a real PostgreSQL: every test runs on both."""

from __future__ import annotations

import datetime as dt
import getpass
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from pipelines.checkpoint import CheckpointError, CheckpointStore, Manifest, checkpoint_id
from pipelines.registry import MISSING, CodeVersion, DataManifest, Registry, RegistryError
from pipelines.registry.migrate import (
    VERSION_TABLE,
    alembic_config,
    head_revision,
    make_engine,
    newest_file_revision,
)
from pipelines.registry.schema import Base

ROOT = Path(__file__).resolve().parents[2]
LR = "sklearn.linear_model.LogisticRegression"


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(str(tmp_path / "checkpoints"))


def _commit(store: CheckpointStore, seq: int, positions: dict[str, int],
            pipeline: str = "p") -> Manifest:
    ckpt = checkpoint_id(seq)
    part = store.write_part(ckpt, "scorer-0", f"model state {seq}".encode())
    return store.commit(Manifest(id=ckpt, seq=seq, created_at=0.0, pipeline=pipeline,
                                 config_hash="cfg0", positions=positions,
                                 parts={"scorer-0": part}, events_read=sum(positions.values())))


def _register_batch(registry: Registry, store: CheckpointStore, version_id: str,
                    blob: bytes = b"sklearn pickle", **over: Any) -> Any:
    part = store.write_part("models", version_id.split("/")[-1], blob)
    fields: dict[str, Any] = {
        "pipeline": version_id.split("/")[0], "kind": "sklearn", "version_id": version_id,
        "model_class": LR, "params": {"C": 1.0}, "actor": "ci",
        "artifact_uri": f"{store.url}/{part.path}", "artifact_sha256": part.sha256,
    }
    return registry.register(**{**fields, **over})


def test_registry_register_then_get_returns_every_field(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    registry = make_registry()
    before = dt.datetime.now(dt.UTC)
    v = _register_batch(registry, store, "p/sk-0001", params={"C": 0.5, "solver": "lbfgs"},
                        config_hash="abc123", metrics={"accuracy": 0.91, "n": 1000},
                        data={"sources": {"loans[0]": [0, 600], "loans[1]": [10, 400]},
                              "n_learned": 990},
                        actor="api:alice", reason="nightly retrain")
    got = registry.get("p/sk-0001")
    assert got == v
    assert (got.pipeline, got.kind, got.model_class, got.parent_id) == ("p", "sklearn", LR, None)
    assert got.params == {"C": 0.5, "solver": "lbfgs"}
    assert got.metrics == {"accuracy": 0.91, "n": 1000}
    assert got.data == DataManifest(sources={"loans[0]": (0, 600), "loans[1]": (10, 400)},
                                    n_learned=990)
    assert got.config_hash == "abc123" and got.status == "created"
    assert got.created_by == "api:alice"
    assert before <= got.created_at <= dt.datetime.now(dt.UTC)
    # The code version is this checkout's commit (the tests run from a git work tree).
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert got.code is not None and got.code.commit == head
    [created] = registry.events("p/sk-0001")
    assert (created.kind, created.actor, created.details) == ("created", "api:alice",
                                                              {"reason": "nightly retrain"})
    assert created.at == got.created_at


def test_registry_versions_of_a_river_pipeline_are_its_checkpoints(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    registry = make_registry()
    m1 = _commit(store, 1, {"loans[0]": 500, "loans[1]": 480})
    v1 = registry.register_checkpoint(store.url, m1, model_class="river.linear_model.LogReg",
                                      params={"lr": 0.1}, n_learned=950,
                                      start_positions={"loans[1]": 30})
    m2 = _commit(store, 2, {"loans[0]": 900, "loans[1]": 870})
    v2 = registry.register_checkpoint(store.url, m2, model_class="river.linear_model.LogReg",
                                      params={"lr": 0.1}, n_learned=1740, parent_id=v1.id,
                                      metrics={"accuracy": 0.8})
    assert (v1.id, v2.id) == ("p/ckpt-000001", "p/ckpt-000002")
    assert v2.parent_id == v1.id and v2.kind == "river" and v2.config_hash == "cfg0"
    # The ranges cover the whole lineage: from where it began to the checkpoint's positions.
    assert v1.data.sources == {"loans[0]": (0, 500), "loans[1]": (30, 480)}
    assert v2.data.sources == {"loans[0]": (0, 900), "loans[1]": (30, 870)}
    assert [v.id for v in registry.versions("p")] == [v1.id, v2.id]
    assert registry.versions("other") == []
    assert registry.events(v2.id)[0].details == {"checkpoint": "ckpt-000002",
                                                 "events_read": 1770, "deployment": None}
    ckpt_store, manifest = registry.open_checkpoint(v2.id)
    assert manifest == m2
    assert ckpt_store.read_part(manifest, "scorer-0") == b"model state 2"


def test_registry_lifecycle_events_record_actor_time_and_details(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    registry = make_registry()
    _register_batch(registry, store, "p/sk-live")
    _register_batch(registry, store, "p/sk-cand", parent_id="p/sk-live")
    registry.record("p/sk-live", "deployed")  # the OS user
    registry.record("p/sk-cand", "shadowed", actor="api:bob", traffic=1.0)
    registry.record("p/sk-cand", "canaried", actor="api:bob", share=0.05)
    decision = {"test": "two-proportion", "p_value": 0.0012, "margin": 0.01,
                "live": {"accuracy": 0.871, "n": 20000}, "candidate": {"accuracy": 0.893,
                                                                       "n": 1000}}
    registry.record("p/sk-cand", "promoted", actor="auto-promoter", decision=decision)
    registry.record("p/sk-cand", "rolled_back", actor="api:carol", reason="latency")
    events = registry.events("p/sk-cand")
    assert [(e.kind, e.actor) for e in events] == [
        ("created", "ci"), ("shadowed", "api:bob"), ("canaried", "api:bob"),
        ("promoted", "auto-promoter"), ("rolled_back", "api:carol")]
    assert events[3].details == {"decision": decision}
    assert all(a.at <= b.at for a, b in itertools.pairwise(events))
    assert all(e.at.tzinfo is not None for e in events)
    assert registry.events("p/sk-live")[-1].actor == getpass.getuser()
    assert registry.get("p/sk-cand").status == "rolled_back"
    assert registry.get("p/sk-live").status == "deployed"


def test_registry_invalid_transitions_are_rejected_and_recorded(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    registry = make_registry()
    _register_batch(registry, store, "p/sk-old")
    registry.record("p/sk-old", "retired", actor="ops", reason="superseded")
    with pytest.raises(RegistryError, match="p/sk-old is retired: it cannot be promoted"):
        registry.record("p/sk-old", "promoted", actor="api:mallory", p_value=0.2)
    with pytest.raises(RegistryError, match="never deployed or promoted"):
        _register_batch(registry, store, "p/sk-new")
        registry.record("p/sk-new", "rolled_back", actor="ops")
    with pytest.raises(RegistryError, match="unknown lifecycle event 'launched'"):
        registry.record("p/sk-new", "launched")
    with pytest.raises(RegistryError, match="recorded by register"):
        registry.record("p/sk-new", "created")
    rejected = registry.events("p/sk-old")[-1]
    assert (rejected.kind, rejected.actor) == ("rejected", "api:mallory")
    assert rejected.details == {"requested": "promoted", "p_value": 0.2,
                                "error": "p/sk-old is retired: it cannot be promoted"}
    assert registry.get("p/sk-old").status == "retired"  # a refusal changes nothing
    assert [e.kind for e in registry.events("p/sk-new")] == ["created"] + ["rejected"] * 3
    assert registry.get("p/sk-new").status == "created"
    # Requests about versions that do not exist, and ids that are taken.
    with pytest.raises(RegistryError, match="unknown model version p/nope"):
        registry.record("p/nope", "deployed")
    with pytest.raises(RegistryError, match="unknown model version p/nope"):
        registry.get("p/nope")
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.diff("p/sk-old", "p/nope")
    with pytest.raises(RegistryError, match="already registered"):
        _register_batch(registry, store, "p/sk-old")
    with pytest.raises(RegistryError, match="unknown parent version p/ghost"):
        _register_batch(registry, store, "p/sk-orphan", parent_id="p/ghost")
    with pytest.raises(RegistryError, match="must start with its pipeline"):
        _register_batch(registry, store, "p/sk-x", pipeline="q")
    with pytest.raises(RegistryError, match="bad data manifest"):
        _register_batch(registry, store, "p/sk-y", data={"sources": {"t[0]": [9, 3]}})
    assert [v.id for v in registry.versions("p")] == ["p/sk-old", "p/sk-new"]


def test_registry_evaluated_event_logs_the_numbers_and_keeps_the_status(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    registry = make_registry()
    _register_batch(registry, store, "p/sk-cand")
    registry.record("p/sk-cand", "shadowed", actor="api:bob")
    numbers = {"test": "paired", "n": 20000, "gain": -0.002, "p_value": 0.61,
               "outcome": "max_samples reached without a win"}
    evaluated = registry.record("p/sk-cand", "evaluated", actor="auto-promoter", **numbers)
    assert (evaluated.kind, evaluated.details) == ("evaluated", numbers)
    assert registry.get("p/sk-cand").status == "shadowed"  # only logged
    registry.record("p/sk-cand", "promoted", actor="auto-promoter", p_value=0.001)
    assert registry.get("p/sk-cand").status == "promoted"
    registry.record("p/sk-cand", "retired", actor="ops")
    with pytest.raises(RegistryError, match="is retired: it cannot be evaluated"):
        registry.record("p/sk-cand", "evaluated", actor="auto-promoter")
    assert [e.kind for e in registry.events("p/sk-cand")] == [
        "created", "shadowed", "evaluated", "promoted", "retired", "rejected"]


def test_registry_log_command_round_trips_applied_and_rejected(
        make_registry: Callable[[], Registry]) -> None:
    registry = make_registry()
    before = dt.datetime.now(dt.UTC)
    deployment = {"mode": "canary", "arms": [["live", "p/sk-a", "live", 0.9],
                                             ["candidate", "p/sk-b", "canary", 0.1]],
                  "previous": None}
    applied = registry.log_command(
        status="applied", raw=b'{"id": "c0ffee", "op": "deploy", "mode": "canary"}',
        channel="kafka:riffle.models[0]@45", pipeline="p", command_id="c0ffee",
        op="deploy", version_id="p/sk-b", actor="api:ann",
        pause_ms={"scorer-0": 1.5, "scorer-1": 2.25}, deployment=deployment)
    received = dt.datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
    rejected = registry.log_command(
        status="rejected", raw='{"id": "bad1", "op": "promote", "version": "p/sk-zzz"}',
        channel="file:/runs/p/control.jsonl@123", pipeline="p", command_id="bad1",
        op="promote", version_id="p/sk-zzz", actor="ann", received_at=received,
        error="unknown model version p/sk-zzz")
    assert applied.status == "applied" and applied.error is None
    assert (applied.command_id, applied.pipeline, applied.op, applied.version_id,
            applied.actor, applied.channel) == ("c0ffee", "p", "deploy", "p/sk-b", "api:ann",
                                                "kafka:riffle.models[0]@45")
    assert applied.raw == '{"id": "c0ffee", "op": "deploy", "mode": "canary"}'
    assert applied.details == {"pause_ms": {"scorer-0": 1.5, "scorer-1": 2.25},
                               "deployment": deployment}
    assert before <= applied.received_at <= dt.datetime.now(dt.UTC)
    # A command naming a version the registry does not know is recorded all the same.
    assert (rejected.status, rejected.version_id, rejected.error, rejected.received_at) == (
        "rejected", "p/sk-zzz", "unknown model version p/sk-zzz", received)
    assert rejected.details == {} and rejected.id > applied.id
    # What a second process reads back is what was logged.
    assert make_registry().commands("p") == [applied, rejected]


def test_registry_log_command_records_an_unparseable_message_as_received(
        make_registry: Callable[[], Registry]) -> None:
    registry = make_registry()
    garbage = b'{"op": "dep\xff\x00loy", ' + b"x" * 20_000
    logged = registry.log_command(status="rejected", raw=garbage,
                                  channel="file:" + "/deep" * 60 + "/control.jsonl@9876543",
                                  error="not JSON: unexpected character: line 1 column 13")
    [read] = registry.commands()
    assert read == logged
    assert (read.command_id, read.pipeline, read.op, read.version_id, read.actor) == (
        None, None, None, None, None)
    assert read.error == "not JSON: unexpected character: line 1 column 13"
    # Kept as received, cut to 10k characters (the full length noted), storable anywhere.
    assert read.raw.startswith('{"op": "dep\ufffd\ufffdloy", xxx') and len(read.raw) == 10_000
    assert read.details == {"raw_chars": len(garbage)}
    assert len(read.channel) == 200 and read.channel.endswith("/control.jsonl@9876543")
    # A command that parses but carries fields longer than their columns is logged too.
    long = registry.log_command(status="rejected", raw=b"{}", channel="kafka:m[0]@1",
                                pipeline="p" * 150, command_id="9" * 64, op="set_traffic",
                                version_id="p/" + "v" * 300, actor="a\x00" * 150,
                                error="pipeline: not this one")
    assert (len(long.pipeline or ""), len(long.command_id or ""), len(long.version_id or ""),
            len(long.actor or "")) == (100, 32, 200, 200)
    assert registry.commands() == [logged, long]
    # What the log refuses: a status it does not know, a rejection without its error,
    # details that are not JSON.
    with pytest.raises(RegistryError, match="applied or rejected, not 'ignored'"):
        registry.log_command(status="ignored", raw=b"{}", channel="c")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="logged with its error"):
        registry.log_command(status="rejected", raw=b"{}", channel="c")
    with pytest.raises(RegistryError, match="has no error"):
        registry.log_command(status="applied", raw=b"{}", channel="c", error="oops")
    with pytest.raises(RegistryError, match="details must be plain JSON"):
        registry.log_command(status="applied", raw=b"{}", channel="c", when=dt.datetime.now())
    assert len(registry.commands()) == 2


def test_registry_commands_filter_by_pipeline_and_limit_to_the_latest(
        make_registry: Callable[[], Registry]) -> None:
    registry = make_registry()
    for i in range(5):
        for pipeline in ("a", "b"):
            registry.log_command(status="applied", raw=f'{{"n": {i}}}', pipeline=pipeline,
                                 channel=f"file:/{pipeline}/control.jsonl@{i * 10}",
                                 command_id=f"{pipeline}{i}", op="rollback", actor="ops")
    registry.log_command(status="rejected", raw=b"\x00", channel="file:/a/control.jsonl@50",
                         error="not JSON")
    assert [c.command_id for c in registry.commands("a")] == ["a0", "a1", "a2", "a3", "a4"]
    assert [c.command_id for c in registry.commands("b", limit=2)] == ["b3", "b4"]
    assert [c.command_id for c in registry.commands(limit=3)] == ["a4", "b4", None]
    assert len(registry.commands()) == 11
    assert registry.commands("a", limit=0) == [] and registry.commands("nobody") == []


def test_registry_diff_shows_params_metrics_data_and_code(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    registry = make_registry()
    _register_batch(registry, store, "p/sk-a", params={"C": 1.0, "penalty": {"kind": "l2"}},
                    metrics={"accuracy": 0.8, "log_loss": 0.41},
                    data={"sources": {"t[0]": [0, 100]}, "n_learned": 100},
                    code=CodeVersion(commit="a" * 40, dirty=False), config_hash="c1")
    _register_batch(registry, store, "p/sk-b", blob=b"other bytes", parent_id="p/sk-a",
                    params={"C": 0.1, "penalty": {"kind": "l2"}, "tol": 1e-4},
                    metrics={"accuracy": 0.85},
                    data={"sources": {"t[0]": [0, 250], "t[1]": [0, 50]}, "n_learned": 300},
                    code=CodeVersion(commit="b" * 40, dirty=True), config_hash="c1")
    changes = {(c.section, c.key): (c.old, c.new) for c in registry.diff("p/sk-a", "p/sk-b")}
    sha = {v.id: v.artifact_sha256 for v in registry.versions("p")}
    assert changes == {
        ("version", "parent_id"): (None, "p/sk-a"),
        ("version", "artifact_sha256"): (sha["p/sk-a"], sha["p/sk-b"]),
        ("code", "commit"): ("a" * 40, "b" * 40),
        ("code", "dirty"): (False, True),
        ("params", "C"): (1.0, 0.1),
        ("params", "tol"): (MISSING, 1e-4),
        ("metrics", "accuracy"): (0.8, 0.85),
        ("metrics", "log_loss"): (0.41, MISSING),
        ("data", "sources.t[0]"): ([0, 100], [0, 250]),
        ("data", "sources.t[1]"): (MISSING, [0, 50]),
        ("data", "n_learned"): (100, 300),
    }
    assert registry.diff("p/sk-a", "p/sk-a") == []


def test_registry_load_verifies_the_artifact_hash_and_refuses_a_tampered_one(
        make_registry: Callable[[], Registry], store: CheckpointStore, tmp_path: Path) -> None:
    registry = make_registry()
    v = _register_batch(registry, store, "p/sk-1", blob=b"the real model")
    assert registry.load_artifact(v.id) == b"the real model"
    Path(v.artifact_uri).write_bytes(b"the real modeL")
    with pytest.raises(RegistryError, match="does not match its registered sha256"):
        registry.load_artifact(v.id)
    Path(v.artifact_uri).unlink()
    with pytest.raises(RegistryError, match="cannot be read"):
        registry.load_artifact(v.id)
    # A River version: the registry holds the manifest's hash, the manifest each part's.
    river = registry.register_checkpoint(store.url, _commit(store, 1, {"t[0]": 5}),
                                         model_class="river.tree.HoeffdingTreeClassifier",
                                         params={}, n_learned=5)
    ckpt_store, manifest = registry.open_checkpoint(river.id)
    (tmp_path / "checkpoints" / "ckpt-000001" / "scorer-0.pkl").write_bytes(b"model state 9")
    with pytest.raises(CheckpointError, match="does not match its hash"):
        ckpt_store.read_part(manifest, "scorer-0")
    manifest_file = Path(river.artifact_uri)
    manifest_file.write_bytes(manifest_file.read_bytes().replace(b'"t[0]": 5', b'"t[0]": 6'))
    with pytest.raises(RegistryError, match="does not match its registered sha256"):
        registry.open_checkpoint(river.id)
    with pytest.raises(RegistryError, match="not a River checkpoint"):
        registry.open_checkpoint(v.id)


def test_registry_concurrent_writers_do_not_corrupt(
        make_registry: Callable[[], Registry], store: CheckpointStore) -> None:
    one, two = make_registry(), make_registry()
    n = 12
    for i in range(n):
        _register_batch(one, store, f"p/sk-{i:02d}")
        one.record(f"p/sk-{i:02d}", "deployed", actor="ops")
    outcomes: dict[str, list[str]] = {"ok": [], "refused": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(registry: Registry, name: str) -> None:
        try:
            start.wait(timeout=10)
            for i in range(n):
                # Both writers register their own versions and race to retire the same ones.
                _register_batch(registry, store, f"p/sk-{name}-{i:02d}", parent_id=f"p/sk-{i:02d}")
                try:
                    registry.record(f"p/sk-{i:02d}", "retired", actor=name)
                    outcomes["ok"].append(f"p/sk-{i:02d}")
                except RegistryError:
                    outcomes["refused"].append(f"p/sk-{i:02d}")
        except BaseException as e:  # reported below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(r, name))
               for r, name in ((one, "w1"), (two, "w2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    # Each version was retired exactly once; the other writer's attempt was refused.
    assert sorted(outcomes["ok"]) == [f"p/sk-{i:02d}" for i in range(n)]
    assert sorted(outcomes["refused"]) == sorted(outcomes["ok"])
    assert len(two.versions("p")) == 3 * n
    for i in range(n):
        kinds = [e.kind for e in two.events(f"p/sk-{i:02d}")]
        assert kinds == ["created", "deployed", "retired", "rejected"], kinds
        assert two.get(f"p/sk-{i:02d}").status == "retired"


def _insert_old(url: str, version_id: str, events: list[str], status: str | None = None
                ) -> None:
    """A row as an older revision wrote it: 0001 (no status column yet), or 0002 (with
    ``status``)."""
    columns, values = ("", "") if status is None else (", status", ", :status")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO model_versions (id, pipeline, parent_id, kind, model_class, params, "
            "code_commit, code_dirty, config_hash, artifact_uri, artifact_sha256, "
            f"data_manifest, metrics, created_at, created_by{columns}) VALUES (:id, 'p', NULL, "
            "'sklearn', :cls, '{\"C\": 2.0}', NULL, NULL, 'c0', '/a', :sha, "
            "'{\"sources\": {\"t[0]\": [0, 10]}, \"n_learned\": 10}', '{\"accuracy\": 0.7}', "
            f":at, 'old-riffle'{values})"),
            {"id": version_id, "cls": LR, "sha": "0" * 64, "status": status,
             "at": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)})
        for i, kind in enumerate(["created", *events]):
            conn.execute(text("INSERT INTO lifecycle_events (version_id, kind, at, actor, "
                              "details) VALUES (:v, :k, :at, 'ops', '{}')"),
                         {"v": version_id, "k": kind,
                          "at": dt.datetime(2025, 1, 2, 3, 4, 5 + i, tzinfo=dt.UTC)})
    engine.dispose()


def _create_at(url: str, revision: str) -> None:
    """A registry database at an older schema revision, as that riffle created it."""
    engine = make_engine(url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def _assert_schema_is_head(url: str) -> None:
    engine = make_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert ctx.get_current_heads() == ("0004",)
        # The migrated schema is the one the ORM describes.
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                    "version_table": VERSION_TABLE})
        assert compare_metadata(ctx, Base.metadata) == []
    engine.dispose()


def test_registry_from_revision_0001_upgrades_in_place(db_url: str) -> None:
    _create_at(db_url, "0001")
    _insert_old(db_url, "p/sk-live", ["deployed", "promoted"])
    _insert_old(db_url, "p/sk-gone", ["deployed", "retired", "rejected"])
    _insert_old(db_url, "p/sk-new", [])

    with Registry(db_url) as registry:
        assert registry.schema_revision == head_revision() == "0004"
        live = registry.get("p/sk-live")
        assert (live.params, live.metrics, live.created_by) == ({"C": 2.0}, {"accuracy": 0.7},
                                                                "old-riffle")
        assert live.created_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        assert live.data == DataManifest(sources={"t[0]": (0, 10)}, n_learned=10)
        # 0002's status column is backfilled from the event log.
        assert {v.id: v.status for v in registry.versions("p")} == {
            "p/sk-live": "promoted", "p/sk-gone": "retired", "p/sk-new": "created"}
        assert [e.kind for e in registry.events("p/sk-gone")] == [
            "created", "deployed", "retired", "rejected"]
        with pytest.raises(RegistryError, match="is retired"):
            registry.record("p/sk-gone", "promoted")
        registry.record("p/sk-new", "deployed", actor="ops")
        assert registry.commands() == []
    _assert_schema_is_head(db_url)


def test_registry_from_revision_0002_upgrades_in_place_with_a_control_log(db_url: str) -> None:
    _create_at(db_url, "0002")
    _insert_old(db_url, "p/sk-live", ["deployed", "promoted"], status="promoted")
    _insert_old(db_url, "p/sk-gone", ["deployed", "retired"], status="retired")

    with Registry(db_url) as registry:
        assert registry.schema_revision == head_revision() == "0004"
        live = registry.get("p/sk-live")
        assert (live.params, live.metrics, live.created_by, live.status) == (
            {"C": 2.0}, {"accuracy": 0.7}, "old-riffle", "promoted")
        assert live.created_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        assert [e.kind for e in registry.events("p/sk-live")] == [
            "created", "deployed", "promoted"]
        assert [e.at.second for e in registry.events("p/sk-gone")] == [5, 6, 7]
        assert registry.get("p/sk-gone").status == "retired"
        # The new table is there, empty, and takes commands about old versions.
        assert registry.commands() == []
        logged = registry.log_command(status="rejected", raw=b'{"op": "promote"}',
                                      channel="file:/old/control.jsonl@0", pipeline="p",
                                      op="promote", version_id="p/sk-gone", actor="ops",
                                      error="p/sk-gone is retired: it cannot be promoted")
        registry.record("p/sk-live", "evaluated", actor="auto-promoter", p_value=0.4)
        assert registry.get("p/sk-live").status == "promoted"
    with Registry(db_url) as registry:
        assert registry.commands("p") == [logged]
    _assert_schema_is_head(db_url)


def test_registry_newer_than_this_riffle_is_refused(db_url: str) -> None:
    Registry(db_url).close()
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(RegistryError, match="schema revision 0099, newer than this riffle"):
        Registry(db_url)


def _riffle(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``riffle`` commands side by side (each start imports River: seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["COLUMNS"] = "200"  # rich's width when the output is not a terminal
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in commands]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def test_cli_models_list_show_diff_read_the_registry(
        db_url: str, make_registry: Callable[[], Registry], store: CheckpointStore,
        tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"name: p\nsource: {{kind: synthetic}}\n"
                      f"output: {{out_dir: {tmp_path / 'out'}}}\n")
    # SQLite: the registry the config names by default; PostgreSQL: --registry URL.
    where = [] if db_url.startswith("sqlite") else ["--registry", db_url]
    if db_url.startswith("sqlite"):  # nothing registered yet, and reading creates no file
        [missing] = _riffle(["models", "list", str(config)])
        assert missing.returncode == 2, missing.stderr
        assert missing.stderr.startswith("riffle: error: no registry at ")
        assert len(missing.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out" / "registry.db").exists()

    registry = make_registry()
    _register_batch(registry, store, "p/sk-a", metrics={"accuracy": 0.8})
    _register_batch(registry, store, "p/sk-b", params={"C": 0.25}, metrics={"accuracy": 0.9},
                    parent_id="p/sk-a")
    registry.record("p/sk-b", "promoted", actor="api:dana", p_value=0.004)

    listed, shown, diffed, unknown = _riffle(
        ["models", "list", str(config), *where],
        ["models", "show", str(config), "sk-b", *where],
        ["models", "diff", str(config), "sk-a", "sk-b", *where],
        ["models", "show", str(config), "sk-zzz", *where])
    assert listed.returncode == 0, listed.stderr
    assert "p/sk-a" in listed.stdout and "p/sk-b" in listed.stdout
    assert "promoted" in listed.stdout and "(2 versions)" in listed.stdout

    assert shown.returncode == 0, shown.stderr
    for fragment in ("p/sk-b", "params.C", "0.25", "api:dana", "promoted", "p_value"):
        assert fragment in shown.stdout, fragment

    assert diffed.returncode == 0, diffed.stderr
    assert "accuracy" in diffed.stdout and "0.9" in diffed.stdout and "0.25" in diffed.stdout

    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "riffle: error: unknown model version p/sk-zzz"


def test_migrate_newest_file_revision_is_alembics_head() -> None:
    # An up-to-date registry opens on the file rule alone, without importing Alembic.
    assert newest_file_revision() == head_revision()
