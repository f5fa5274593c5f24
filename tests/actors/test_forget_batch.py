"""``riffle forget`` and the scikit-learn versions (``riffle train``), on the session's Ray
(Ray Data reads the histories): a version whose training rows hold the subject is
retrained without them, equal to a version trained on a history that never held them,
and reproducible; a version whose history is gone is retired; both pickles deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.audit.compare import compare_models
from pipelines.audit.forget import Forgetter
from pipelines.audit.reproduce import Reproducer
from pipelines.batch_models import loads_model
from pipelines.config import PipelineConfig
from pipelines.registry import Registry
from pipelines.sources.sample import write_sample
from pipelines.storage import resolve
from pipelines.training import train


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "fb", "source": {"kind": "synthetic"},
        "output": {"out_dir": str(root / "run")},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        "training": {"estimator": "sklearn.linear_model.LogisticRegression",
                     "params": {"C": 0.5, "random_state": 3}, "test_fraction": 0.25}})


def _exists(uri: str) -> bool:
    filesystem, path = resolve(uri)
    return bool(filesystem.get_file_info(path).is_file)


def test_forget_sklearn_version_retrained_without_subject_equals_one_never_trained_on_it(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    history, gone = tmp_path / "history.jsonl", tmp_path / "old.jsonl"
    write_sample(history, n_events=1500, seed=5, n_keys=300)
    write_sample(gone, n_events=600, seed=6, n_keys=300)
    lines = history.read_bytes().splitlines(keepends=True)
    key = orjson.loads(lines[3])["key"]
    without = tmp_path / "without.jsonl"
    without.write_bytes(b"".join(ln for ln in lines if orjson.loads(ln)["key"] != key))
    n_subject = len(lines) - len(without.read_bytes().splitlines())
    assert n_subject >= 2
    tainted = train(cfg, history, actor="test")
    lost = train(cfg, gone, actor="test")
    gone.unlink()  # its data is gone: it can be neither retrained nor checked
    reference = train(cfg, without, actor="test")

    with Registry(cfg.registry_url()) as reg:
        cert = Forgetter(cfg, registry=reg, actor="test").forget(key, reason="ticket 7")
        by_id = {b["version"]: b for b in cert["batch_versions"]}
        assert by_id[tainted.id]["action"] == "retrain"
        assert by_id[tainted.id]["rows_removed"] > 0
        assert by_id[lost.id]["action"] == "retire" and "gone" in by_id[lost.id]["why"]
        assert reference.id not in by_id  # it never saw the subject: untouched
        new_id = by_id[tainted.id]["retrained_version"]
        versions = {v.id: v for v in reg.versions("fb")}
        assert versions[tainted.id].status == "retired"
        assert versions[lost.id].status == "retired"
        assert versions[reference.id].status != "retired"
        assert versions[new_id].parent_id == tainted.id
        assert not _exists(tainted.artifact_uri) and not _exists(lost.artifact_uri)
        retired = [e for e in reg.events(tainted.id) if e.kind == "retired"]
        assert retired and retired[0].details["tainted"] is True
        rebuilt = loads_model(reg.load_artifact(new_id))
        expected = loads_model(reg.load_artifact(reference.id))
        same = compare_models(rebuilt, expected)
        assert same.equal, same.first_difference
        assert versions[new_id].data.n_learned == versions[reference.id].data.n_learned
        X = np.random.default_rng(0).normal(size=(50, len(rebuilt.features)))
        assert np.array_equal(rebuilt.estimator.predict_proba(X),
                              expected.estimator.predict_proba(X))
        entries = reg.access_entries(action="forget")
        assert entries and entries[-1].details["batch_versions"] == cert["batch_versions"]
        assert any("history files" in s["store"] for s in cert["not_owned"])
        answer: dict[str, Any] = Reproducer(cfg, registry=reg).reproduce(new_id)
    assert answer["reproduced"], answer["first_difference"]
    assert key not in orjson.dumps(cert).decode()
