"""Explanations without Ray: a scorer core driven in process writes the audit trail,
training log and checkpoints as its actor does; records are explained from them."""

from __future__ import annotations

import builtins
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from river.datasets import synth

from pipelines.audit.explain import Explainer
from pipelines.audit.explainers import ShapMissing, shap_values
from pipelines.audit.trail import AuditStore, trail_table, training_table
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id, dumps_state
from pipelines.config import PipelineConfig
from pipelines.errors import AuditError
from pipelines.protocol import Batch, Event, Feedback
from pipelines.scoring import ScorerCore

REPO = Path(__file__).resolve().parents[3]
LINEAR = {"steps": [{"name": "preprocessing.StandardScaler"},
                    {"name": "linear_model.LogisticRegression"}]}


def _config(root: Path, model: dict[str, Any], **checkpoint: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "u", "source": {"kind": "synthetic"},
        "scoring": {"n_actors": 1, "model": model},
        "output": {"out_dir": str(root / "out")},
        "checkpoint": {"keep": 2, **checkpoint}})


def _drive(cfg: PipelineConfig, *, n: int = 3000, every: int = 500, delay: int = 7
           ) -> list[str]:
    """A scorer's run of ``n`` Agrawal events (labels ``delay`` events late, a concept
    change halfway), a checkpoint every ``every`` events as the actors take one (the
    rows written, the part, the manifest, the index, the prune). Returns the record ids."""
    url = cfg.checkpoint_store_url()
    store, audit = CheckpointStore(url), AuditStore(url)
    core = ScorerCore(cfg.scoring, name="scorer-0", audit=True)
    stream = synth.ConceptDriftStream(synth.Agrawal(0, seed=1), synth.Agrawal(2, seed=2),
                                      position=n // 2, width=200, seed=3)
    pending: list[Feedback] = []
    ids = []
    seq = 0
    for i, (x, y) in enumerate(stream.take(n)):
        rid = f"u-{i}"
        ids.append(rid)
        items: list[Any] = [Event(rid, f"k{i % 97}", float(i), x, 0, 2 * i, 0.0, "u")]
        pending.append(Feedback(rid, f"k{i % 97}", y, float(i), 0, 2 * i + 1, 0.0, "u"))
        if len(pending) > delay:
            items.append(pending.pop(0))
        core.process(Batch(0, items))
        if (i + 1) % every == 0:
            seq += 1
            ckpt = checkpoint_id(seq)
            assert core.audit is not None
            segments = [audit.write_segment(
                "trail", trail_table(core.audit.take_trail(), "scorer-0", core.checkpoint),
                scorer="scorer-0", generation=0), audit.write_segment(
                "training", training_table(core.audit.take_training(), "scorer-0"),
                scorer="scorer-0", generation=0)]
            part = store.write_part(ckpt, "scorer-0", dumps_state(core.snapshot()))
            store.commit(Manifest(id=ckpt, seq=seq, created_at=float(seq), pipeline="u",
                                  config_hash="c", positions={}, parts={"scorer-0": part},
                                  segments=segments))
            audit.commit_index(ckpt, seq, segments, float(seq))
            core.checkpoint = ckpt
            store.prune(cfg.checkpoint.keep, cfg.checkpoint.retain, now=float(seq))
    return ids[: (n // every) * every]


@pytest.fixture
def drive(tmp_path: Path) -> Callable[..., tuple[PipelineConfig, list[str]]]:
    """Factory: a config (model, checkpoint options) and the records of its driven run."""

    def make(model: dict[str, Any] = LINEAR, **checkpoint: Any
             ) -> tuple[PipelineConfig, list[str]]:
        cfg = _config(tmp_path, model, **checkpoint)
        return cfg, _drive(cfg)

    return make


def _explain(cfg: PipelineConfig, rid: str) -> dict[str, Any]:
    with Explainer(cfg, store_url=cfg.checkpoint_store_url()) as ex:
        return ex.explain(rid)


def test_explain_linear_contributions_sum_to_the_raw_score_with_the_scaler_then(
        drive: Callable[..., Any]) -> None:
    cfg, ids = drive(retain={"every": 2})
    for rid in ids[::293]:
        doc = _explain(cfg, rid)
        assert doc["exact"] and doc["max_error"] <= 1e-9, rid
        lin = doc["linear"]
        assert abs(lin["sum"] - lin["raw_score"]) <= 1e-9
        assert abs(1 / (1 + math.exp(-lin["raw_score"])) - doc["audited_score"]["true"]) \
            <= 1e-9
        # the scaler's statistics are those of the examples learned before the record
        n = doc["examples_before"]
        assert all(c["count"] == n for c in lin["contributions"])
        for c in lin["contributions"]:
            expected = (c["value"] - c["mean"]) / c["variance"] ** 0.5 if c["variance"] else 0
            assert abs(c["scaled"] - expected) <= 1e-9


@pytest.mark.parametrize("name", ["tree.HoeffdingTreeClassifier",
                                  "tree.HoeffdingAdaptiveTreeClassifier"])
def test_explain_tree_path_reaches_the_leaves_that_give_the_score(
        drive: Callable[..., Any], name: str) -> None:
    model = {"steps": [{"name": name, "params": {"grace_period": 50, "seed": 1}
                        if "Adaptive" in name else {"grace_period": 50}}]}
    cfg, ids = drive(model)
    deep = 0
    for rid in ids[-600::41]:
        doc = _explain(cfg, rid)
        assert doc["exact"], rid
        why = doc["tree"]
        assert why["leaf_gives_score"]
        assert why["combined"] == pytest.approx(doc["audited_score"], abs=1e-9)
        deep += bool(why["path"])
        for step in why["path"]:
            assert (doc["features"][step["feature"]] <= step["threshold"]) == (
                step["branch"] == 0)
    assert deep  # the trees had split by then


def test_explain_pruned_checkpoint_rebuilds_from_a_retained_one(
        drive: Callable[..., Any]) -> None:
    cfg, ids = drive(retain={"every": 3})
    store = CheckpointStore(cfg.checkpoint_store_url())
    assert [m.id for m in store.manifests()] == [checkpoint_id(s) for s in (1, 4, 5, 6)]
    doc = _explain(cfg, ids[1400])  # scored after checkpoint 2 (pruned), before 3
    assert doc["checkpoint"] == "ckpt-000002" and doc["exact"]
    assert doc["fallback"].startswith("checkpoint ckpt-000002 was pruned: rebuilt from "
                                      "ckpt-000001")


def test_explain_pruned_with_the_log_cut_short_says_it_cannot(
        drive: Callable[..., Any]) -> None:
    cfg, ids = drive()  # no retention: checkpoints 5 and 6 only
    audit = AuditStore(cfg.checkpoint_store_url())
    first = audit.commits()[0].segments[1]  # the training log before checkpoint 1
    os.remove(audit.path(first.path))
    with pytest.raises(AuditError, match=r"keep more with checkpoint\.retain"):
        _explain(cfg, ids[1400])
    assert _explain(cfg, ids[-1])["exact"]  # a record after a kept checkpoint still is


def _flip_a_label(cfg: PipelineConfig) -> None:
    """One label of the last committed training segment changed, behind riffle's back."""
    audit = AuditStore(cfg.checkpoint_store_url())
    seg = audit.commits()[-1].segments[1]
    table = pq.read_table(audit.path(seg.path))
    labels = table["label"].to_pylist()
    labels[len(labels) // 2] = "false" if labels[len(labels) // 2] == "true" else "true"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                    pa.array(labels, pa.string())), audit.path(seg.path))


def test_explain_training_log_tampered_is_not_exact(drive: Callable[..., Any]) -> None:
    cfg, ids = drive(retain={"every": 2})
    _flip_a_label(cfg)
    doc = _explain(cfg, ids[-1])
    assert not doc["exact"] and doc["max_error"] > 1e-9


def test_explain_unknown_record_is_an_audit_error(drive: Callable[..., Any]) -> None:
    cfg, _ = drive()
    with pytest.raises(AuditError, match="record nope is not in the committed audit trail"):
        _explain(cfg, "nope")


def test_explain_other_model_gives_shap_values_summing_to_the_score(
        drive: Callable[..., Any]) -> None:
    cfg, ids = drive({"steps": [{"name": "naive_bayes.GaussianNB"}]})
    doc = _explain(cfg, ids[-1])
    assert doc["exact"] and doc["method"] == "shap"
    shap = doc["shap"]
    assert shap["method"] == "exact" and shap["background"] == 20
    assert abs(shap["residual"]) <= 1e-9
    predicted = doc["prediction"]
    key = str(predicted).lower() if isinstance(predicted, bool) else str(predicted)
    assert abs(shap["output"] - doc["audited_score"][key]) <= 1e-9


def test_shap_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_shap(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "shap":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_shap)
    with pytest.raises(ShapMissing, match="shap package is not installed"):
        shap_values(object(), {"a": 1.0}, task="binary", background=lambda n: [])


def _riffle(*args: str, salt: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RIFFLE_AUDIT_SALT_FILE": str(salt)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_explain_prints_the_check_logs_the_access_and_refuses_unknown_records(
        drive: Callable[..., Any], tmp_path: Path) -> None:
    from pipelines.registry import Registry

    cfg, ids = drive(retain={"every": 2})
    config_file = tmp_path / "u.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    Registry(cfg.registry_url()).close()
    salt = tmp_path / "salt"
    text = _riffle("explain", str(config_file), ids[-5], salt=salt)
    assert text.returncode == 0, text.stderr
    assert "exact: yes" in text.stdout and "intercept" in text.stdout
    js = _riffle("explain", str(config_file), ids[-5], "--json", salt=salt)
    doc = orjson.loads(js.stdout)
    assert doc["exact"] and doc["method"] == "linear" and doc["record_id"] == ids[-5]
    unknown = _riffle("explain", str(config_file), "nope", salt=salt)
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "not in the committed audit trail" in \
        unknown.stderr
    with Registry(cfg.registry_url(), create=False) as reg:
        entries = [e for e in reg.access_entries() if e.action == "explain"]
    assert [e.target for e in entries] == ["v0", "v0", None]
    key = doc["key"]
    assert all(key not in orjson.dumps(e.details).decode() for e in entries)
    assert entries[0].details["subject"] and entries[0].details["record"] == ids[-5]
    _flip_a_label(cfg)
    wrong = _riffle("explain", str(config_file), ids[-1], salt=salt)
    assert wrong.returncode == 1 and "exact: NO" in wrong.stdout
    assert "this is not the model that scored it" in wrong.stderr


_COLD = """
import sys
import orjson
from pipelines.cli import cli
from pipelines.lazy import deferred
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    run = [m for m in ("sklearn", "pandas", "alembic", "river.stream", "river.datasets",
                       "river.tree", "scipy.stats") if m in sys.modules and m not in deferred()]
    sys.stderr.write(orjson.dumps(run).decode())
"""


def test_cli_explain_cold_runs_without_sklearn_pandas_alembic_or_trees_and_answers_the_same(
        drive: Callable[..., Any], tmp_path: Path) -> None:
    from pipelines.registry import Registry

    cfg, ids = drive()
    config_file = tmp_path / "u.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    Registry(cfg.registry_url()).close()
    env = {**os.environ, "RIFFLE_AUDIT_SALT_FILE": str(tmp_path / "salt")}
    out = subprocess.run([sys.executable, "-c", _COLD, "explain", str(config_file), ids[-3],
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stderr) == []  # none of them ran in the command
    assert orjson.loads(out.stdout) == orjson.loads(orjson.dumps(_explain(cfg, ids[-3])))
