"""``riffle forget`` end to end: exact unlearning, erasure from every store, the certificate.

A file stream (one partition, immediate labels) through 2 scorers is stopped after a
few checkpoints; 3 subjects are forgotten (``--suppress``), and the run resumes to the
end. A second run reads the same file without those subjects' lines from the start. The
two runs' final models are the same to 1e-12 (weights, intercept, scaler means and
variances) on both scorers, and so are their scores of every record read after the
rebuilt checkpoint. No store under the first run's output folder holds the subjects'
keys or record ids, the certificates are in the access log, ``riffle audit verify``
passes and ``riffle audit key`` says "forgotten".
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from actors.driver import run_pipeline
from pipelines.audit.query import AuditQuery
from pipelines.audit.subjects import subject_hash
from pipelines.checkpoint import CheckpointStore, loads_state
from pipelines.cli import cli
from pipelines.config import PipelineConfig
from pipelines.registry import Registry
from pipelines.scoring import live_model_of
from pipelines.sources.sample import sample_rows
from tests.helpers import read_jsonl

N_EVENTS = 3000


def _config(name: str, data: Path, out: Path, rate: float | None) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": name,
        "source": {"kind": "file", "path": str(data), "partitions": 1, "label_column": "label",
                   **({"rate_per_s": rate} if rate else {})},
        "ingest": {"n_actors": 1, "batch_size": 50, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(out)},
        "checkpoint": {"interval_s": None, "every_events": 300, "keep": 50},
        "audit": {"segment_rows": 1000},
    })


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _params(model: Any) -> list[float]:
    scaler, lr = model["StandardScaler"], model["LogisticRegression"]
    return [*(scaler.means[k] for k in sorted(scaler.means)),
            *(scaler.vars[k] for k in sorted(scaler.vars)),
            *(lr.weights[k] for k in sorted(lr.weights)), lr.intercept]


def _final_models(cfg: PipelineConfig) -> dict[str, Any]:
    store = CheckpointStore(cfg.checkpoint_store_url())
    latest = store.latest()
    assert latest is not None and latest.final
    return {n: live_model_of(loads_state(store.read_part(latest, n)))
            for n in ("scorer-0", "scorer-1")}


@pytest.fixture(scope="module")
def forgotten(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("forget")
    rows = sample_rows(N_EVENTS, seed=11, n_keys=400)
    data = _write(root / "loans.jsonl", rows)
    cfg = _config("fg", data, root / "a", rate=600.0)
    config_file = root / "fg.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    store = CheckpointStore(cfg.checkpoint_store_url())
    stop = threading.Event()

    def stop_after_checkpoints() -> None:
        deadline = time.monotonic() + 120
        while len(store.manifests()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()

    watcher = threading.Thread(target=stop_after_checkpoints, daemon=True)
    watcher.start()
    run_pipeline(cfg, stop=stop)
    watcher.join(10)
    stopped_at = store.latest()
    assert stopped_at is not None
    [offset] = stopped_at.positions.values()
    read = offset // 2  # each line is two messages: its event, then its label
    assert 0 < read < N_EVENTS - 300, "the stop must land mid-stream"
    # Subjects learned before the stop (one early in the stream) who come back after it.
    with AuditQuery(cfg.checkpoint_store_url()) as q:
        learned = [r["key"] for r in q.rows(
            "SELECT key, min(seq) AS s FROM training GROUP BY key ORDER BY min(commit_seq), s")]
    later = {r["key"] for r in rows[read:]}
    keys = [k for k in learned if k in later][:1] + [k for k in learned if k in later][-2:]
    assert len(set(keys)) == 3
    certs = []
    for k in keys:
        result = CliRunner().invoke(cli, ["forget", str(config_file), "--key", k, "--reason",
                                          "GDPR request", "--suppress", "--json"])
        assert result.exit_code == 0, result.output
        certs.append(json.loads(result.output))
    resumed_from = store.latest()
    run_pipeline(cfg, resume=True)
    ref = _config("fg", _write(root / "without.jsonl",
                               [r for r in rows if r["key"] not in keys]), root / "b", None)
    run_pipeline(ref)
    return {"cfg": cfg, "ref": ref, "keys": keys, "certs": certs, "rows": rows,
            "config_file": config_file, "resumed_from": resumed_from, "root": root}


def test_forget_then_resume_equals_a_run_that_never_saw_the_subjects(
        forgotten: dict[str, Any]) -> None:
    got, want = _final_models(forgotten["cfg"]), _final_models(forgotten["ref"])
    for scorer in got:
        a, b = _params(got[scorer]), _params(want[scorer])
        assert len(a) == len(b)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-12, scorer
    # Every record read after the rebuilt checkpoint is scored alike by both runs.
    [offset] = forgotten["resumed_from"].positions.values()
    start = offset // 2
    keys = set(forgotten["keys"])
    later = {r["record_id"] for r in forgotten["rows"][start:] if r["key"] not in keys}
    mine = {p["record_id"]: p["score"] for p in read_jsonl(forgotten["cfg"].out_dir /
                                                           "predictions.jsonl")}
    ref = {p["record_id"]: p["score"] for p in read_jsonl(forgotten["ref"].out_dir /
                                                          "predictions.jsonl")}
    assert later and later <= set(mine)
    for rid in later:
        for cls in ref[rid]:
            assert abs(mine[rid][cls] - ref[rid][cls]) <= 1e-12, rid


def test_forget_leaves_no_row_of_the_subjects_in_any_store_riffle_owns(
        forgotten: dict[str, Any]) -> None:
    keys = forgotten["keys"]
    ids = {r["record_id"] for r in forgotten["rows"] if r["key"] in keys}
    needles = [k.encode() for k in keys]
    quoted = [b'"' + i.encode() + b'"' for i in ids]
    pickled = [b"\x8c" + bytes([len(i)]) + i.encode() for i in ids]
    out = forgotten["cfg"].out_dir
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".pkl" for p in files)
    for path in files:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            assert not set(table["key"].to_pylist()) & set(keys), path
            assert not set(table["record_id"].to_pylist()) & ids, path
            continue
        blob = path.read_bytes()
        assert not any(n in blob for n in needles), path
        assert not any(n in blob for n in (pickled if path.suffix == ".pkl" else quoted)), path
    # The suppressed subjects' later records were refused, under their hash only.
    erased = [d for d in read_jsonl(out / "dead_letters.jsonl") if d["error"] == "erased subject"]
    assert erased and {json.loads(d["raw"])["subject"] for d in erased} == {
        subject_hash(k) for k in keys}


def test_forget_certificate_is_logged_verifies_and_audit_key_says_forgotten(
        forgotten: dict[str, Any]) -> None:
    cfg, config_file = forgotten["cfg"], forgotten["config_file"]
    first = forgotten["certs"][0]
    assert first["removed"]["training_log"] > 0 and first["removed"]["audit_trail"] > 0
    assert first["models"]["tainted"] and first["models"]["retired_versions"]
    with Registry(cfg.registry_url()) as reg:
        entries = reg.access_entries(action="forget")
        assert [e.target for e in entries] == [subject_hash(k) for k in forgotten["keys"]]
        assert entries[0].details["removed"] == first["removed"]
        for version in first["models"]["retired_versions"]:
            assert reg.get(version).status == "retired"
            assert reg.events(version)[-1].details["reason"] == "erasure"
    verify = CliRunner().invoke(cli, ["audit", "verify", str(config_file)])
    assert verify.exit_code == 0, verify.output
    key = CliRunner().invoke(cli, ["audit", "key", str(config_file), forgotten["keys"][0],
                                   "--json"])
    assert key.exit_code == 0, key.output
    doc = json.loads(key.output)
    assert doc["n_records"] == 0 and doc["forgotten"][0]["log_index"] == first["log_index"]
