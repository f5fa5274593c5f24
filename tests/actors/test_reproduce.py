"""``riffle audit reproduce`` on a real run: versions of a 2-scorer pipeline (a
scikit-learn version canaried beside the online model, checkpoints pruned with some
retained) are rebuilt from their parent checkpoint (or the nearest retained ancestor)
and the training log, and equal their artifacts to 1e-12; a tampered training-log label
makes the rebuilt model differ (exit 1, the parameter named); a version trained with
``riffle train`` is retrained and equals its artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from actors.driver import run_pipeline
from pipelines.audit.reproduce import Reproducer
from pipelines.audit.trail import AuditStore
from pipelines.checkpoint import CheckpointStore
from pipelines.cli import cli
from pipelines.config import PipelineConfig
from pipelines.registry import Registry


def _config(root: Path, **over: Any) -> PipelineConfig:
    base: dict[str, Any] = {
        "name": "rp",
        "source": {"kind": "synthetic", "partitions": 2, "n_events": 9000, "seed": 7,
                   "n_keys": 1000, "label_delay_events": 5, "rate_per_s": 2000.0},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(root / "run")},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        # one in two kept beyond the newest two: some versions' parents are pruned
        "checkpoint": {"interval_s": None, "every_events": 500, "keep": 2,
                       "retain": {"every": 2}},
        "training": {"estimator": "sklearn.linear_model.LogisticRegression",
                     "params": {"C": 0.5, "random_state": 3}},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(base)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pipelines.sources.sample import write_sample
    from pipelines.training import train

    root = tmp_path_factory.mktemp("reproduce")
    history = root / "history.jsonl"
    write_sample(history, n_events=2000, seed=5)
    trained = train(_config(root), history, actor="test")
    cfg = _config(root, launch={"mode": "canary", "candidate": trained.id, "share": 0.3})
    run_pipeline(cfg)
    config_file = root / "rp.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    kept = [m.id for m in CheckpointStore(cfg.checkpoint_store_url()).manifests()]
    with Registry(cfg.registry_url()) as reg:
        versions = {v.id: v for v in reg.versions("rp") if v.kind == "river"}
    return {"cfg": cfg, "root": root, "sklearn": trained.id, "kept": kept,
            "versions": versions, "config_file": config_file}


def _reproduce(cfg: PipelineConfig, version: str) -> dict[str, Any]:
    with Registry(cfg.registry_url(), create=False) as reg:
        return Reproducer(cfg, registry=reg).reproduce(version)


def test_reproduce_river_versions_rebuilt_from_parent_equal_artifacts(
        run: dict[str, Any]) -> None:
    cfg, kept, versions = run["cfg"], run["kept"], run["versions"]
    assert len(kept) >= 3 and len(versions) > len(kept)  # some checkpoints were pruned
    direct = [c for c in kept if versions[f"rp/{c}"].parent_id is not None
              and versions[f"rp/{c}"].parent_id.split("/")[1] in kept]
    pruned = [c for c in kept if versions[f"rp/{c}"].parent_id is not None
              and versions[f"rp/{c}"].parent_id.split("/")[1] not in kept]
    assert direct and pruned
    # The checkpoints fall where the schedule's polls do (timing): the first may precede
    # any label learned, so each is checked against what it holds, and some replay at all.
    examples = {c: _examples(cfg, c) for c in kept}
    replayed = 0
    for ckpt in (kept[0], direct[-1], pruned[-1]):
        doc = _reproduce(cfg, ckpt)
        assert doc["reproduced"], (ckpt, doc["first_difference"])
        assert set(doc["scorers"]) == {"scorer-0", "scorer-1"}
        parent_id = versions[f"rp/{ckpt}"].parent_id
        parent = parent_id.split("/")[1] if parent_id else None
        for name, p in doc["scorers"].items():
            assert p["equal"] and p["max_error"] <= 1e-12, (ckpt, name)
            assert p["n_values"] > 10  # weights, intercept, scaler statistics compared
            assert p["model_version"] == "v0"
            assert p["examples"] == examples[ckpt][name]
            if ckpt in direct:  # from the parent's state: the examples learned since
                assert p["replayed"] == p["examples"] - examples[parent][name]
            elif ckpt == kept[0]:  # from the fresh model: every example
                assert p["replayed"] == p["examples"]
            replayed += p["replayed"]
            if ckpt == kept[0]:
                assert p["rebuilt_from"] == "the config's fresh model"
            elif ckpt in pruned:
                assert "is pruned" in p["rebuilt_from"]
            else:
                assert p["rebuilt_from"] == f"checkpoint {parent} ({name})"
    assert replayed > 0


def _examples(cfg: PipelineConfig, ckpt: str) -> dict[str, int]:
    """The examples each scorer's state in ``ckpt`` has learned."""
    from pipelines.checkpoint import loads_state

    store = CheckpointStore(cfg.checkpoint_store_url())
    [manifest] = [m for m in store.manifests() if m.id == ckpt]
    return {n: int(loads_state(store.read_part(manifest, n))["counts"].get("examples", 0))
            for n in manifest.parts if n.startswith("scorer-")}


def _learning(cfg: PipelineConfig, kept: list[str]) -> str:
    """The newest kept checkpoint whose commit holds labels scorer-0's live model learned
    (the final one may hold none: the last scheduled checkpoint can end the stream)."""
    audit = AuditStore(cfg.checkpoint_store_url())
    learned = {c.checkpoint for c in audit.commits()
               if any(s.kind == "training" and s.scorer == "scorer-0" and s.rows
                      for s in c.segments)}
    return [c for c in kept if c in learned][-1]


def _tamper(cfg: PipelineConfig, ckpt: str) -> tuple[Path, bytes]:
    """Flip the last label scorer-0's live model learned before ``ckpt``, rewriting its
    segment; returns the segment's path and its bytes before."""
    audit = AuditStore(cfg.checkpoint_store_url())
    [commit] = [c for c in audit.commits() if c.checkpoint == ckpt]
    segment = [s for s in commit.segments if s.kind == "training" and s.scorer == "scorer-0"][-1]
    path = Path(audit.path(segment.path))
    before = path.read_bytes()
    table = pq.read_table(path)
    rows = table.to_pylist()
    last = max((r for r in rows if r["model_version"] == "v0"), key=lambda r: r["seq"])
    flipped = orjson.dumps(not orjson.loads(last["label"])).decode()
    labels = [flipped if r["seq"] == last["seq"] else r["label"] for r in rows]
    i = table.schema.get_field_index("label")
    table = table.set_column(i, table.schema.field(i), pa.array(labels, table["label"].type))
    pq.write_table(table, path)
    return path, before


def test_reproduce_tampered_training_label_not_equal_exit_1(run: dict[str, Any]) -> None:
    cfg, kept = run["cfg"], run["kept"]
    ckpt = _learning(cfg, kept)
    path, before = _tamper(cfg, ckpt)
    try:
        doc = _reproduce(cfg, ckpt)
        result = CliRunner().invoke(cli, ["audit", "reproduce", str(run["config_file"]),
                                          ckpt])
    finally:
        path.write_bytes(before)
    assert not doc["reproduced"]
    assert not doc["scorers"]["scorer-0"]["equal"] and doc["scorers"]["scorer-1"]["equal"]
    assert doc["first_difference"].startswith("scorer-0: steps[")
    assert result.exit_code == 1, result.output
    assert "is not reproduced: scorer-0: steps[" in result.output
    assert _reproduce(cfg, ckpt)["reproduced"]  # the segment restored: equal again


def test_reproduce_sklearn_version_retrained_equals_artifact(run: dict[str, Any]) -> None:
    doc = _reproduce(run["cfg"], run["sklearn"])
    assert doc["kind"] == "sklearn" and doc["reproduced"], doc["first_difference"]
    p = doc["scorers"]["model"]
    assert p["equal"] and p["predictions_max_error"] <= 1e-12
    assert p["n_values"] > 10  # coefficients, scaler means and variances


def test_reproduce_sklearn_with_other_params_is_not_equal(run: dict[str, Any]) -> None:
    """The comparison can fail: the same data with another C is a different model."""
    from pipelines.audit.compare import compare_models
    from pipelines.batch_models import loads_model
    from pipelines.config import TrainingConfig
    from pipelines.training import build_estimator, fit, read_matrix

    cfg = run["cfg"]
    with Registry(cfg.registry_url(), create=False) as reg:
        v = reg.get(run["sklearn"])
        artifact = loads_model(reg.load_artifact(v.id))
    [(where, _)] = v.data.sources.items()
    spec = TrainingConfig(params={"C": 0.6, "random_state": 3})
    X, y, features, _ = read_matrix(spec, where)
    model, _ = fit(build_estimator(spec), spec, X[:v.data.n_learned], y[:v.data.n_learned],
                   features, where=where)
    result = compare_models(model, artifact)
    assert not result.equal and "C" in (result.first_difference or "")


def test_cli_reproduce_json_logs_the_answer_and_unknown_version_exits_2(
        run: dict[str, Any]) -> None:
    cfg, ckpt = run["cfg"], run["kept"][-1]
    result = CliRunner().invoke(cli, ["audit", "reproduce", str(run["config_file"]), ckpt,
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["reproduced"] and doc["version"] == f"rp/{ckpt}"
    with Registry(cfg.registry_url(), create=False) as reg:
        logged = reg.access_entries(action="reproduce", target=f"rp/{ckpt}")[-1]
        assert reg.verify_access().finding is None
    assert logged.details["reproduced"] is True
    assert logged.details["scorers"]["scorer-1"]["rebuilt_sha256"] == \
        doc["scorers"]["scorer-1"]["rebuilt_sha256"]
    assert logged.details["artifact_sha256"] == doc["artifact_sha256"]
    bad = CliRunner().invoke(cli, ["audit", "reproduce", str(run["config_file"]),
                                   "ckpt-999999"])
    assert bad.exit_code == 2
    assert "unknown model version ckpt-999999" in bad.output
