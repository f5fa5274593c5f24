"""Lineage end to end: a pipeline of 2 scorers with a hot swap mid-stream (a registered
checkpoint deployed live through the control path), then ``riffle audit``.

- ``audit record`` names, for 200 random records, the version predictions.jsonl says
  scored it;
- ``audit model --records`` of every version lists exactly the records whose labels it
  learned: River replayed on those records alone (features from the trail, labels and
  order from the training log, per scorer, from a fresh model) ends with the very
  parameters of the version's checkpoint part;
- the three commands answer ``--json`` as the real CLI (a subprocess), and say
  unknown in one line with exit code 2.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner

from actors.driver import run_pipeline
from pipelines.audit.query import AuditQuery
from pipelines.checkpoint import loads_state
from pipelines.cli import cli
from pipelines.config import PipelineConfig
from pipelines.control import FileControl
from pipelines.models import build_model
from pipelines.protocol import Command
from pipelines.registry import Registry
from pipelines.scoring import live_model_of
from tests.helpers import read_jsonl

REPO = Path(__file__).resolve().parents[2]
N_EVENTS = 16_000


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "lin",
        "source": {"kind": "synthetic", "partitions": 2, "n_events": N_EVENTS, "seed": 5,
                   "n_keys": 4000, "label_delay_events": 5, "rate_per_s": 4000.0},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(root / "out")},
        "checkpoint": {"interval_s": None, "every_events": 3000, "keep": 50},
        "audit": {"segment_rows": 1000},
    })


@pytest.fixture(scope="module")
def swapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PipelineConfig, str]:
    """The run: once its first checkpoint is registered, that version is deployed live
    (each scorer continues its own part's model; v0 stays warm as ``previous``)."""
    root = tmp_path_factory.mktemp("lineage")
    cfg = _config(root)
    config_file = root / "lin.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    first = "lin/ckpt-000001"
    failure: list[BaseException] = []

    def deploy() -> None:
        try:
            deadline = time.monotonic() + 120
            with Registry(cfg.registry_url()) as reg:
                while not any(v.id == first for v in reg.versions("lin")):
                    assert time.monotonic() < deadline, "no first checkpoint"
                    time.sleep(0.05)
            FileControl(cfg.out_dir / "control.jsonl").send(Command(
                op="deploy", pipeline="lin", version=first, actor="auditor-test",
                reason="hot swap mid-stream").to_json())
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=deploy, daemon=True)
    run_pipeline(cfg, on_started=lambda _: thread.start())
    thread.join(timeout=60)
    assert not failure, failure
    return config_file, cfg, first


def _audit(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["audit", *args[:1], str(config), *args[1:], "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_audit_record_names_the_version_that_scored_each_record(
        swapped: tuple[Path, PipelineConfig, str]) -> None:
    config, cfg, first = swapped
    served = {p["record_id"]: p["model_version"]
              for p in read_jsonl(cfg.out_dir / "predictions.jsonl")}
    assert len(served) == N_EVENTS
    assert {"v0", first} <= set(served.values())  # the swap landed mid-stream
    rng = random.Random(10)
    swapped_ids = [r for r, v in served.items() if v == first]
    sample = rng.sample(sorted(served), 180) + rng.sample(swapped_ids, 20)
    for record_id in sample:
        doc = _audit(config, "record", record_id)
        [row] = doc["served"]
        assert row["model_version"] == served[record_id], record_id
        if row["model_version"] == first:
            placed = doc["served"][0]["placed_by"]
            assert placed["command"]["actor"] == "auditor-test"
            assert placed["command"]["op"] == "deploy"
            assert [e["event"] for e in placed["events"]] == ["deployed"]


def test_audit_model_lists_exactly_the_records_that_replay_to_its_parameters(
        swapped: tuple[Path, PipelineConfig, str]) -> None:
    config, cfg, first = swapped
    with Registry(cfg.registry_url()) as reg:
        versions = [v.id for v in reg.versions("lin")]
        opened = {v: reg.open_checkpoint(v) for v in versions}
    assert len(versions) >= 4
    deployments = {v: m.deployment["arms"][0]["version"] for v, (_, m) in opened.items()}
    assert set(deployments.values()) == {"v0", first}  # versions before and after the swap
    with AuditQuery(cfg.checkpoint_store_url()) as q:
        order = {(r["record_id"]): r for r in q.rows(
            "SELECT t.record_id, t.scorer, min(t.seq) AS seq, any_value(t.label) AS label, "
            "any_value(f.features) AS features FROM training t JOIN trail f "
            "USING (record_id) GROUP BY t.record_id, t.scorer")}
    n_by_version = {}
    for version in versions:
        doc = _audit(config, "model", version, "--records")
        records = doc["training"]["records"]
        assert len(records) == len(set(records)) == doc["training"]["n_examples"]
        n_by_version[version] = len(records)
        store, manifest = opened[version]
        for scorer in ("scorer-0", "scorer-1"):
            mine = sorted((order[r] for r in records if order[r]["scorer"] == scorer),
                          key=lambda r: r["seq"])
            model = build_model(cfg.scoring.model)
            for r in mine:
                model.learn_one(orjson.loads(r["features"]), orjson.loads(r["label"]))
            part = live_model_of(loads_state(store.read_part(manifest, scorer)))
            assert _params(model) == _params(part), (version, scorer, len(mine))
    # After the swap a version's data is ckpt-1's plus what ckpt-1's model learned since:
    # not v0's labels learned meanwhile, so fewer than all labels learned so far.
    last = versions[-1]
    with AuditQuery(cfg.checkpoint_store_url()) as q:
        v0_rows = q.rows("SELECT count(*) AS n FROM training WHERE model_version = 'v0'")[0]
    assert n_by_version[last] < v0_rows["n"]


def _params(model: Any) -> tuple[Any, ...]:
    """A scaler | logistic regression pipeline's learned parameters."""
    scaler, lr = model["StandardScaler"], model["LogisticRegression"]
    return (dict(scaler.means), dict(scaler.vars), dict(lr.weights), lr.intercept)


def _riffle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_audit_cli_record_model_key_answer_json_and_log_each_query(
        swapped: tuple[Path, PipelineConfig, str]) -> None:
    config, cfg, first = swapped
    pred = read_jsonl(cfg.out_dir / "predictions.jsonl")[-1]
    rec = _riffle("audit", "record", str(config), pred["record_id"], "--json")
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout)["served"][0]["model_version"] == pred["model_version"]
    with Registry(cfg.registry_url()) as reg:  # the first version taken after the swap
        after = next(v for v in reg.versions("lin")
                     if reg.open_checkpoint(v.id)[1].deployment["arms"][0]["version"] == first)
    mod = _riffle("audit", "model", str(config), after.id.split("/")[1], "--json")
    assert mod.returncode == 0, mod.stderr
    doc = json.loads(mod.stdout)
    assert doc["version"] == after.id and doc["parents"][0] == after.parent_id
    assert [t["model_version"] for t in doc["lineage"]] == [first, "v0"]
    assert doc["training"]["n_examples"] > 0 and doc["training"]["first"]["record_id"]
    key = _riffle("audit", "key", str(config), pred["key"], "--json")
    assert key.returncode == 0, key.stderr
    subject = json.loads(key.stdout)
    assert pred["record_id"] in {r["record_id"] for r in subject["records"]}
    for args, what in ((("record", "no-such-record"), "unknown record no-such-record"),
                       (("model", "ckpt-999999"), "unknown model version"),
                       (("key", "no-such-subject"), "unknown key")):
        bad = _riffle("audit", args[0], str(config), args[1], "--json")
        assert bad.returncode == 2 and what in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and not bad.stdout
    with Registry(cfg.registry_url()) as reg:
        log = [(e.action, e.target) for e in reg.access_entries(pipeline="lin")
               if e.action.startswith("audit.")]
        model_accesses = reg.access_entries(target=after.id)
    assert ("audit.record", pred["record_id"]) in log
    assert ("audit.model", after.id) in log
    keys = [t for a, t in log if a == "audit.key"]
    assert keys and pred["key"] not in keys and "no-such-subject" not in keys  # hashed
    assert any(e.action == "audit.model" for e in model_accesses)
