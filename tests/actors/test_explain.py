"""Point-in-time explanations of records of a real run: a concept change, a candidate
launched in shadow and promoted mid-stream (a hot swap), checkpoints pruned with some
retained. Every explained record's model is rebuilt and scores it as it did then."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest

from actors.driver import run_pipeline
from pipelines.audit.explain import Explainer
from pipelines.audit.query import AuditQuery
from pipelines.checkpoint import CheckpointStore, retained
from pipelines.config import PipelineConfig
from pipelines.registry import Registry

# Agrawal's function 0 is a band of ages: a tree learns it, a linear model cannot, so the
# tree candidate beats the linear live model and is promoted. "mc": a leaf predicts its
# class distribution.
TREE = {"steps": [{"name": "tree.HoeffdingTreeClassifier",
                   "params": {"grace_period": 100, "leaf_prediction": "mc"}}]}


def _config(root: Path, name: str, **over: Any) -> PipelineConfig:
    base: dict[str, Any] = {
        "name": "ex",
        "source": {"kind": "synthetic", "partitions": 2, "n_events": 4000, "seed": 5,
                   "n_keys": 2000, "label_delay_events": 5},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(root / name)},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        "checkpoint": {"interval_s": None, "every_events": 1500, "keep": 5},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(base)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path, str]:
    """A tree trained by a first run; a second run (linear live) launches it in shadow,
    promotes it, meets a concept change, and prunes its checkpoints (keep 2, one in 3
    retained)."""
    root = tmp_path_factory.mktemp("explain")
    run_pipeline(_config(root, "trained", scoring={"n_actors": 2, "num_cpus": 0,
                                                   "model": TREE}))
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        candidate = [v.id for v in reg.versions("ex")][-1]
    cfg = _config(
        root, "explained",
        # Paced, so that checkpoints (asked for every 500 events, looked at every 0.5 s)
        # are many.
        source={"n_events": 12_000, "rate_per_s": 3000.0,
                "drift": {"position": 6000, "width": 500, "to_function": 2}},
        checkpoint={"every_events": 500, "keep": 2, "retain": {"every": 3}},
        launch={"mode": "shadow", "candidate": candidate,
                "promotion": {"mode": "auto", "min_samples": 400, "check_every": 400,
                              "max_samples": 4000}})
    run_pipeline(cfg)
    return cfg, root, candidate


def _explainer(cfg: PipelineConfig, root: Path) -> tuple[Explainer, Registry]:
    reg = Registry(f"sqlite:///{root / 'registry.db'}", create=False)
    return Explainer(cfg, store_url=cfg.checkpoint_store_url(), registry=reg), reg


def test_explain_100_random_records_across_swap_and_drift_rebuilt_scores_equal_audited(
        run: tuple[PipelineConfig, Path, str]) -> None:
    cfg, root, candidate = run
    with AuditQuery(cfg.checkpoint_store_url()) as q:
        rows = q.rows("SELECT record_id, arm, role, model_version, checkpoint FROM trail")
    served = [r for r in rows if r["role"] != "shadow"]
    by_version = {r["model_version"] for r in served}
    assert by_version == {"v0", candidate}  # promoted mid-stream: both served
    rng = random.Random(3)
    picked = rng.sample(served, 80) + rng.sample([r for r in rows if r["role"] == "shadow"],
                                                 20)
    store = CheckpointStore(cfg.checkpoint_store_url())
    kept = {m.id for m in store.manifests()}
    explainer, reg = _explainer(cfg, root)
    methods: dict[str, int] = {}
    fallbacks = 0
    with reg, explainer:
        for r in picked:
            doc = explainer.explain(r["record_id"], arm=r["arm"])
            assert doc["exact"], (r, doc["max_error"], doc["rebuilt_from"], doc["notes"])
            assert doc["max_error"] <= 1e-9
            assert doc["model_version"] == r["model_version"]
            methods[doc["method"]] = methods.get(doc["method"], 0) + 1
            if r["checkpoint"] is not None and r["checkpoint"] not in kept:
                assert doc["fallback"] is not None
                fallbacks += 1
            score = doc["rebuilt_score"]
            if doc["method"] == "linear":
                lin = doc["linear"]
                assert abs(lin["residual"]) <= 1e-9
                assert abs(lin["sum"] - lin["raw_score"]) <= 1e-9
                # the raw score is the log-odds of the score
                assert abs(1 / (1 + math.exp(-lin["raw_score"])) - score["true"]) <= 1e-9
                assert {c["feature"] for c in lin["contributions"]} == set(doc["features"])
            else:
                assert doc["method"] == "tree"
                why = doc["tree"]
                assert why["leaf_gives_score"]
                (leaf,) = why["leaves"]
                counts = leaf["class_counts"]
                total = sum(counts.values())
                for c, p in score.items():
                    assert abs(counts.get(c, 0.0) / total - p) <= 1e-9
                # the path is the one the record's values take
                for step in why["path"]:
                    value = doc["features"][step["feature"]]
                    assert (value <= step["threshold"]) == (step["branch"] == 0)
    assert methods.get("linear", 0) > 0 and methods.get("tree", 0) > 0
    assert fallbacks > 0  # records whose own checkpoint was pruned were rebuilt too


def test_prune_keeps_the_newest_and_every_third_checkpoint_for_explain(
        run: tuple[PipelineConfig, Path, str]) -> None:
    cfg, _, _ = run
    store = CheckpointStore(cfg.checkpoint_store_url())
    manifests = store.manifests()
    seqs = [m.seq for m in manifests]
    assert seqs[-1] >= 6 and len(seqs) < seqs[-1]  # enough taken that some were pruned
    # the newest two (keep), and the oldest with every third one after it (retain)
    assert {m.id for m in manifests} == ({m.id for m in manifests[-2:]}
                                         | retained(manifests, cfg.checkpoint.retain))
    older = seqs[:-2]
    assert older[0] == 1 and all(b - a >= 3 for a, b in itertools.pairwise(older))
