"""The access and decision log on a real SQLite file and a real PostgreSQL: every test runs
on both. Lifecycle writes land in it in their own transaction; concurrent writers (processes
and threads) keep it contiguous; tampering with the database by SQL is named by
``audit verify``; proofs verify, and stop verifying after the tampering; 0003 upgrades."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pipelines.audit.ledger import Frontier, TreeHead, entry_bytes, leaf_hash, tree_root
from pipelines.audit.subjects import SALT_ENV, subject_hash
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id
from pipelines.registry import Registry, RegistryError
from pipelines.registry.access import recorded_heads
from pipelines.registry.migrate import alembic_config, make_engine

ROOT = Path(__file__).resolve().parents[2]
LR = "sklearn.linear_model.LogisticRegression"


@pytest.fixture(autouse=True)
def salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, str(tmp_path / "audit-salt"))


def _register(registry: Registry, version_id: str, **over: Any) -> Any:
    fields: dict[str, Any] = {
        "pipeline": version_id.split("/")[0], "kind": "sklearn", "version_id": version_id,
        "model_class": LR, "params": {"C": 1.0}, "actor": "ci", "artifact_uri": "/nowhere",
        "artifact_sha256": "0" * 64, "code": None}
    return registry.register(**{**fields, **over})


def _sql(url: str, *statements: str) -> None:
    """Edit the database behind riffle's back, as an attacker with write access would."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _populate(registry: Registry, n_reads: int = 6) -> None:
    """A small history: versions registered, deployed, promoted, refused, commands, reads."""
    _register(registry, "p/sk-a", reason="first model")
    _register(registry, "p/sk-b", parent_id="p/sk-a")
    registry.record("p/sk-a", "deployed", actor="ops", reason="go live")
    registry.record("p/sk-b", "shadowed", actor="ops")
    registry.log_command(status="applied", raw=b'{"op": "promote"}', channel="cli",
                         pipeline="p", command_id="c1", op="promote", version_id="p/sk-b",
                         actor="ops", before="p/sk-a", after="p/sk-b", reason="better")
    for i in range(n_reads):
        registry.log_access("models.show", pipeline="p", target="p/sk-a", actor=f"reader{i}")


# -- what is recorded ---------------------------------------------------------------------

def test_access_log_lifecycle_writes_produce_entries_in_the_same_transaction(
        make_registry: Callable[[], Registry]) -> None:
    registry = make_registry()
    _register(registry, "p/sk-live", reason="nightly retrain", rows=1000)
    _register(registry, "p/sk-cand", parent_id="p/sk-live", logged_as="train")
    registry.record("p/sk-live", "deployed", actor="api:ann", command="c0")
    decision = {"auto": True, "test": "two-proportion", "p_value": 0.0012,
                "live": {"accuracy": 0.871, "n": 20000}}
    registry.record("p/sk-cand", "canaried", actor="ops", share=0.05)
    registry.record("p/sk-cand", "promoted", actor="riffle-auto-promotion", decision=decision)
    registry.record("p/sk-live", "retired", actor="ops", reason="superseded")
    with pytest.raises(RegistryError, match="is retired"):
        registry.record("p/sk-live", "promoted", actor="api:mallory")
    registry.log_command(status="applied", raw=b'{"op": "set_traffic"}', channel="cli",
                         pipeline="p", command_id="c9", op="set_traffic", actor="ops",
                         before="p/sk-cand", after="p/sk-cand", reason="more traffic",
                         pause_ms_max=1.5)
    registry.log_command(status="rejected", raw=b"{oops", channel="file:/c.jsonl@3",
                         error="not JSON")
    entries = registry.access_entries()
    assert [e.index for e in entries] == list(range(9))
    assert [(e.action, e.actor, e.target) for e in entries] == [
        ("register", "ci", "p/sk-live"), ("train", "ci", "p/sk-cand"),
        ("deploy", "api:ann", "p/sk-live"), ("deploy", "ops", "p/sk-cand"),
        ("auto-promote", "riffle-auto-promotion", "p/sk-cand"),
        ("retire", "ops", "p/sk-live"), ("promote", "api:mallory", "p/sk-live"),
        ("set-traffic", "ops", None), ("command", "(unknown)", None)]
    register, _, deploy, canary, promote, retire, refused, traffic, garbage = entries
    assert register.reason == "nightly retrain" and register.details["rows"] == 1000
    assert register.details["event"] == "created" and register.pipeline == "p"
    assert deploy.details == {"command": "c0", "event": "deployed",
                              "status": ["created", "deployed"],
                              "event_id": registry.events("p/sk-live")[1].id}
    assert canary.details["share"] == 0.05 and canary.details["event"] == "canaried"
    assert promote.details["decision"] == decision  # the numbers behind the decision
    assert retire.reason == "superseded" and retire.details["status"] == ["deployed", "retired"]
    assert refused.details["event"] == "rejected"
    assert refused.details["error"] == "p/sk-live is retired: it cannot be promoted"
    assert (traffic.before, traffic.after, traffic.reason) == ("p/sk-cand", "p/sk-cand",
                                                               "more traffic")
    assert traffic.details["pause_ms_max"] == 1.5 and traffic.details["status"] == "applied"
    assert garbage.details["error"] == "not JSON" and len(garbage.details["raw_sha256"]) == 64
    assert all(e.at.tzinfo is not None for e in entries)
    assert registry.verify_access().ok
    # A write refused as a whole leaves no entry, and an entry refused leaves no write:
    # an unknown version, a subject's key in clear (its hash is accepted).
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.record("p/nope", "deployed")
    with pytest.raises(RegistryError, match=r"details\.key must hold subject_hash"):
        _register(registry, "p/sk-leak", key="customer-42")
    with pytest.raises(RegistryError, match=r"details.records\[0\].subject must hold"):
        registry.log_access("audit.key", records=[{"subject": "customer-42"}])
    with pytest.raises(RegistryError, match="action 'Deploy!'"):
        registry.log_access("Deploy!")
    assert [v.id for v in registry.versions("p")] == ["p/sk-live", "p/sk-cand"]
    assert registry.access_head()[0] == 9
    hashed = subject_hash("customer-42")
    registry.log_access("audit.key", target="p", actor="auditor", key=hashed)
    assert registry.access_entries(action="audit.key")[0].details == {"key": hashed}
    assert "customer-42" not in json.dumps([e.details for e in registry.access_entries()])


# -- concurrency --------------------------------------------------------------------------

def _append_from_process(url: str, name: str, n: int, salt_file: str) -> None:
    """A writer process: its own Registry, two threads appending reads and lifecycle events."""
    os.environ[SALT_ENV] = salt_file
    with Registry(url) as registry:
        def work(thread: int) -> None:
            for i in range(n):
                registry.log_access("models.list", pipeline="p", actor=f"{name}-{thread}",
                                    i=i)
                if i % 5 == 0:
                    registry.record("p/sk-base", "evaluated", actor=f"{name}-{thread}",
                                    outcome="keep", i=i)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_access_log_concurrent_writers_keep_it_contiguous_and_verifiable(
        db_url: str, make_registry: Callable[[], Registry], tmp_path: Path) -> None:
    registry = make_registry()
    _register(registry, "p/sk-base")
    n, n_procs = 20, 3
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_from_process,
                         args=(db_url, f"proc{p}", n, str(tmp_path / "audit-salt")))
             for p in range(n_procs)]
    for proc in procs:
        proc.start()
    # ... while this process appends from two threads of its own (a CLI beside them).
    _append_from_process(db_url, "main", n, str(tmp_path / "audit-salt"))
    for proc in procs:
        proc.join(timeout=180)
    assert [proc.exitcode for proc in procs] == [0] * n_procs
    writers = n_procs + 1
    expected = 1 + writers * 2 * (n + n // 5)
    entries = registry.access_entries()
    assert [e.index for e in entries] == list(range(expected))  # no gap, no duplicate
    per_actor: dict[str, list[int]] = {}
    for e in entries:
        if e.action == "models.list":
            per_actor.setdefault(e.actor, []).append(e.details["i"])
    assert len(per_actor) == writers * 2
    assert all(seen == list(range(n)) for seen in per_actor.values())  # each in its order
    result = registry.verify_access()
    assert result.ok and result.size == expected
    size, root = registry.access_head()
    assert (size, root) == (expected, result.root)
    # Another reader recomputes the same root from the entries.
    other = make_registry()
    assert other.verify_access(size, root).ok
    assert tree_root([bytes.fromhex(e.leaf_hash) for e in other.access_entries()]).hex() == root


# -- tampering --------------------------------------------------------------------------

def _insert_sql(index: int, fields_at: str, leaf: str) -> str:
    return ("INSERT INTO access_log (idx, at, actor, action, pipeline, target, "
            "version_before, version_after, reason, details, leaf_hash) VALUES "
            f"({index}, '{fields_at}', 'mallory', 'models.show', 'p', 'p/sk-a', NULL, NULL, "
            f"NULL, '{{}}', '{leaf}')")


def _shift(url: str, start: int, by: int, size: int) -> list[str]:
    """SQL moving entries ``start``.. by ``by`` places (one at a time: the index is a key)."""
    order = range(size - 1, start - 1, -1) if by > 0 else range(start, size)
    return [f"UPDATE access_log SET idx = {i + by} WHERE idx = {i}" for i in order]


@pytest.mark.parametrize(("damage", "problem", "index"), [
    ("edit", "edited", 4),
    ("delete", "deleted", 4),
    ("insert", "inserted", 4),
    ("swap", "reordered", 4),
    ("truncate", "truncated", 9),
    ("rewrite", "rewritten", 0),
])
def test_access_log_verify_names_each_tampering_and_proofs_stop_verifying(
        db_url: str, make_registry: Callable[[], Registry], damage: str, problem: str,
        index: int) -> None:
    registry = make_registry()
    _populate(registry)
    size, root = registry.access_head()
    assert size == 11
    first = TreeHead(7, registry.consistency_proof(7, size).first_root, "ckpt-1")
    assert registry.verify_access(size, root).ok
    inclusion = registry.inclusion_proof(5, size)
    consistency = registry.consistency_proof(first.size, size)
    assert inclusion.verify(root) and consistency.verify(first.root, root)

    if damage == "edit":
        _sql(db_url, "UPDATE access_log SET actor = 'someone-else' WHERE idx = 4")
    elif damage == "delete":
        _sql(db_url, "DELETE FROM access_log WHERE idx = 4", *_shift(db_url, 5, -1, size))
    elif damage == "insert":
        at = "2026-01-01 00:00:00"
        _sql(db_url, *_shift(db_url, 4, 1, size), _insert_sql(4, at, "ab" * 32))
    elif damage == "swap":
        _sql(db_url, "UPDATE access_log SET idx = -1 WHERE idx = 4",
             "UPDATE access_log SET idx = 4 WHERE idx = 5",
             "UPDATE access_log SET idx = 5 WHERE idx = -1")
    elif damage == "truncate":  # the tail, and the head row made to match: only the record knows
        _sql(db_url, "DELETE FROM access_log WHERE idx >= 9")
        _rehead(db_url, registry)
    elif damage == "rewrite":  # an entry edited and its leaf hash recomputed: self-consistent
        entry = registry.access_entries()[4]
        fields = {"at": entry.at.isoformat(timespec="microseconds"), "actor": "someone-else",
                  "action": entry.action, "pipeline": entry.pipeline, "target": entry.target,
                  "before": entry.before, "after": entry.after, "reason": entry.reason,
                  "details": entry.details}
        forged = leaf_hash(entry_bytes(4, fields)).hex()
        _sql(db_url, f"UPDATE access_log SET actor = 'someone-else', leaf_hash = '{forged}' "
                     "WHERE idx = 4")
        _rehead(db_url, registry)

    now = make_registry()
    result = now.verify_access(size, root)
    assert result.finding is not None, damage
    assert (result.finding.problem, result.finding.index) == (problem, index), \
        result.finding.message
    if damage == "rewrite":
        # Found only through the recorded root: without one, a consistent rewrite is
        # invisible (the scheme's limit); two recorded heads narrow it down no further
        # here, as entry 4 lies before both.
        assert now.verify_access(heads=[]).ok
        with_first = now.verify_access(size, root, heads=[first])
        assert with_first.finding is not None and with_first.finding.index == 0
        assert "first 7 entries" in with_first.finding.message
    # Proofs at the recorded sizes no longer verify against the recorded roots (or cannot
    # be made at all: the entries are fewer than the record says); what lies before the
    # damage still proves (the truncation spared the first 9 entries).
    for make_proof, check, spared in (
            (lambda: now.inclusion_proof(5, size), lambda p: p.verify(root), False),
            (lambda: now.inclusion_proof(1, first.size), lambda p: p.verify(first.root),
             damage == "truncate"),
            (lambda: now.consistency_proof(first.size, size),
             lambda p: p.verify(first.root, root), False)):
        try:
            proof = make_proof()
        except RegistryError as e:
            assert damage in ("delete", "truncate") and "entries, not 11" in str(e), e
            continue
        assert check(proof) is spared, damage


def _rehead(url: str, registry: Registry) -> None:
    """Make the head row match the entries as they now are (a thorough attacker)."""
    frontier = Frontier()
    for leaf in registry.verify_access().leaves:
        frontier = frontier.append(leaf)
    nodes = json.dumps([node.hex() for node in frontier.nodes])
    _sql(url, f"UPDATE access_log_head SET size = {frontier.size}, "
              f"root = '{frontier.root().hex()}', frontier = '{nodes}'")


# -- migration --------------------------------------------------------------------------

def test_access_log_migration_0004_upgrades_a_0003_database_in_place(db_url: str) -> None:
    from alembic import command

    engine = make_engine(db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(text(
            "INSERT INTO control_commands (command_id, pipeline, op, version_id, received_at, "
            "actor, channel, raw, status, error, details) VALUES ('c0', 'p', 'rollback', "
            "NULL, '2025-12-05 10:00:00', 'ops', 'cli', '{}', 'applied', NULL, '{}')"))
    engine.dispose()
    with Registry(db_url) as registry:
        assert registry.schema_revision == "0004"
        assert registry.access_head() == (0, tree_root([]).hex())
        assert [c.command_id for c in registry.commands()] == ["c0"]  # kept as it was
        assert registry.access_entries() == []  # the log starts at the upgrade
        _register(registry, "p/sk-1")
        assert registry.log_access("models.list", pipeline="p") == 1
        assert registry.verify_access().ok and registry.access_head()[0] == 2


# -- the CLI ------------------------------------------------------------------------------

def _riffle(*args: str, salt_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(COLUMNS="200", **{SALT_ENV: str(salt_file)})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _checkpoint(store: CheckpointStore, seq: int, head: tuple[int, str]) -> None:
    ckpt = checkpoint_id(seq)
    part = store.write_part(ckpt, "scorer-0", b"state")
    store.commit(Manifest(id=ckpt, seq=seq, created_at=0.0, pipeline="p", config_hash="c",
                          positions={"t[0]": seq}, parts={"scorer-0": part},
                          access_log={"size": head[0], "root": head[1]}))


def test_cli_audit_verify_and_prove_against_the_heads_recorded_in_checkpoints(
        db_url: str, make_registry: Callable[[], Registry], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"name: p\nsource: {{kind: synthetic}}\n"
                      f"output: {{out_dir: {tmp_path / 'out'}}}\n")
    where = [] if db_url.startswith("sqlite") else ["--registry", db_url]
    salt_file = tmp_path / "audit-salt"
    registry = make_registry()
    _populate(registry, n_reads=2)
    store = CheckpointStore(str(tmp_path / "out" / "checkpoints"))
    _checkpoint(store, 1, registry.access_head())
    registry.log_access("models.list", pipeline="p", actor="ann")
    _checkpoint(store, 2, registry.access_head())
    assert [h.size for h in recorded_heads(store.url)] == [7, 8]

    ok = _riffle("audit", "verify", str(config), *where, "--json", salt_file=salt_file)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["size"] == 8 and report["finding"] is None
    assert [h["source"] for h in report["heads"]] == [
        "checkpoint ckpt-000001", "checkpoint ckpt-000002", "the registry's head row"]
    text_ok = _riffle("audit", "verify", str(config), *where, salt_file=salt_file)
    assert text_ok.returncode == 0 and "intact" in text_ok.stdout
    assert "newest: checkpoint ckpt-000002, 8 entries" in text_ok.stdout

    proved = _riffle("audit", "prove", str(config), "3", *where, "--json", salt_file=salt_file)
    assert proved.returncode == 0, proved.stderr
    proof = json.loads(proved.stdout)
    assert (proof["index"], proof["size"], proof["verified"]) == (3, 8, True)
    assert proof["against"] == "the root recorded by checkpoint ckpt-000002"
    assert len(proof["path"]) == 3
    cons = _riffle("audit", "prove", str(config), "--consistency", "7", "8", *where, "--json",
                   salt_file=salt_file)
    assert cons.returncode == 0, cons.stderr
    assert json.loads(cons.stdout)["verified"] is True
    text_proof = _riffle("audit", "prove", str(config), "0", "--size", "7", *where,
                         salt_file=salt_file)
    assert text_proof.returncode == 0, text_proof.stderr
    assert "verified against the root recorded by checkpoint ckpt-000001" in text_proof.stdout

    # Operator mistakes: one line, exit 2.
    for args in (["prove", str(config), *where],
                 ["prove", str(config), "1", "--consistency", "1", "2", *where],
                 ["prove", str(config), "99", *where]):
        bad = _riffle("audit", *args, salt_file=salt_file)
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.startswith("riffle: error: ")
        assert len(bad.stderr.strip().splitlines()) == 1

    # Each audit command was logged after it answered (verify twice, prove three times).
    actions = [e.action for e in registry.access_entries()][8:]
    assert actions == ["audit.verify", "audit.verify", "audit.prove", "audit.prove",
                       "audit.prove"]

    _sql(db_url, "UPDATE access_log SET reason = 'nothing to see' WHERE idx = 2")
    broken = _riffle("audit", "verify", str(config), *where, salt_file=salt_file)
    assert broken.returncode == 1
    assert broken.stderr.strip() == ("riffle: error: access log: entry 2 was edited: it does "
                                     "not hash to its recorded leaf hash")
    broken_json = _riffle("audit", "verify", str(config), *where, "--json",
                          salt_file=salt_file)
    assert broken_json.returncode == 1
    assert json.loads(broken_json.stdout)["finding"]["index"] == 2
    refused = _riffle("audit", "prove", str(config), "2", *where, salt_file=salt_file)
    assert refused.returncode == 1, refused.stderr
    assert "DOES NOT VERIFY" in refused.stdout
    assert refused.stderr.startswith("riffle: error: access log: the proof does not verify")


def test_cli_models_json_output_and_reads_logged(
        db_url: str, make_registry: Callable[[], Registry], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"name: p\nsource: {{kind: synthetic}}\n"
                      f"output: {{out_dir: {tmp_path / 'out'}}}\n")
    where = [] if db_url.startswith("sqlite") else ["--registry", db_url]
    salt_file = tmp_path / "audit-salt"
    registry = make_registry()
    _register(registry, "p/sk-a", metrics={"accuracy": 0.8})
    _register(registry, "p/sk-b", parent_id="p/sk-a", params={"C": 0.25, "tol": 0.001},
              metrics={"accuracy": 0.9})
    registry.record("p/sk-b", "promoted", actor="api:dana", p_value=0.004)
    listed = _riffle("models", "list", str(config), *where, "--json", salt_file=salt_file)
    shown = _riffle("models", "show", str(config), "sk-b", *where, "--json",
                    salt_file=salt_file)
    diffed = _riffle("models", "diff", str(config), "sk-a", "sk-b", *where, "--json",
                     salt_file=salt_file)
    for proc in (listed, shown, diffed):
        assert proc.returncode == 0, proc.stderr
    versions = json.loads(listed.stdout)["versions"]
    assert [(v["id"], v["status"]) for v in versions] == [("p/sk-a", "created"),
                                                         ("p/sk-b", "promoted")]
    assert versions[1]["params"] == {"C": 0.25, "tol": 0.001}
    assert versions[1]["parent_id"] == "p/sk-a" and versions[1]["created_by"] == "ci"
    detail = json.loads(shown.stdout)
    assert detail["version"]["metrics"] == {"accuracy": 0.9}
    assert [(e["kind"], e["actor"]) for e in detail["events"]] == [("created", "ci"),
                                                                   ("promoted", "api:dana")]
    assert detail["events"][1]["details"] == {"p_value": 0.004}
    changes = {(c["section"], c["key"]): c for c in json.loads(diffed.stdout)["changes"]}
    assert changes[("params", "C")] == {"section": "params", "key": "C", "old": 1.0,
                                        "new": 0.25}
    assert changes[("params", "tol")] == {"section": "params", "key": "tol", "new": 0.001}
    reads = registry.access_entries()[3:]
    import getpass

    assert [(e.action, e.actor, e.target, e.before, e.after) for e in reads] == [
        ("models.list", getpass.getuser(), None, None, None),
        ("models.show", getpass.getuser(), "p/sk-b", None, None),
        ("models.diff", getpass.getuser(), "p/sk-b", "p/sk-a", "p/sk-b")]
    assert registry.verify_access().ok
