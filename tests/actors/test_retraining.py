"""The retraining policy end to end on Ray: a concept change is detected, a candidate is
trained on the window after it, launched in shadow and promoted by the statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.driver import run_pipeline
from pipelines.config import PipelineConfig
from pipelines.registry import Registry
from pipelines.sources.synthetic import make_stream
from tests.helpers import read_jsonl

CHANGE = 10_000
# Naive Bayes keeps the old concept's counts: it recovers slowly after the change, so
# a model that learns the new concept alone is better, as a stale production model.
MODEL = {"steps": [{"name": "naive_bayes.GaussianNB"}]}


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "rt",
        "source": {"kind": "synthetic", "partitions": 1, "n_events": 50_000, "seed": 3,
                   "n_keys": 5000, "rate_per_s": 1500,
                   "drift": {"position": CHANGE, "width": 500, "to_function": 2}},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 1, "num_cpus": 0, "model": MODEL,
                    "drift": {"poll_interval_s": 0.5}},
        "output": {"out_dir": str(root / "out")},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        "checkpoint": {"interval_s": None, "every_events": 2000, "keep": 50},
        "launch": {"promotion": {"mode": "auto", "min_samples": 1000, "check_every": 1000,
                                 "max_samples": 10_000}},
        "retraining": {"enabled": True, "window": {"n_labels": 3000}, "num_cpus": 1,
                       "cooldown_s": 0},
    })


def _labels(cfg: PipelineConfig) -> list[Any]:
    stream = make_stream(cfg.source, 0)  # type: ignore[arg-type]
    return [next(stream)[1] for _ in range(cfg.source.n_events)]  # type: ignore[union-attr]


def _new_concept_accuracy(cfg: PipelineConfig, indices: list[int]) -> float:
    """A fresh model that learns only the stream after the change, predict then learn;
    its accuracy on the events at ``indices``."""
    from pipelines.models import build_model

    model = build_model(cfg.scoring.model)
    wanted = set(indices)
    hits = n = 0
    stream = make_stream(cfg.source, 0)  # type: ignore[arg-type]
    for i in range(max(indices) + 1):
        x, y = next(stream)
        if i < CHANGE + 250:  # the old concept, and the change itself
            continue
        if i in wanted:
            hits += model.predict_one(x) == y
            n += 1
        model.learn_one(x, y)
    return hits / n


def test_retraining_drifting_stream_candidate_trained_after_change_is_promoted(
        ray_session: None, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    summary = run_pipeline(cfg)
    drift = summary["drift"]
    assert drift["counts"]["concept_alarms"] >= 1
    first = drift["alarms"][0]
    assert first["kind"] == "concept" and first["detector"] == "adwin"
    assert first["at_label"] > CHANGE  # no false alarm before the change
    assert drift["counts"]["retrains_registered"] >= 1
    candidate = next(r["version"] for r in drift["retrains"] if r["status"] == "registered")

    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as reg:
        v = reg.get(candidate)
        events = reg.events(candidate)
        kinds = [e.kind for e in events]
        assert kinds[0] == "created" and "shadowed" in kinds and "promoted" in kinds
        provenance = events[0].details["provenance"]
        assert provenance["trigger"]["kind"] == "drift"
        assert provenance["gate"]["passed"] is True
        assert provenance["trigger"]["numbers"]["error_after"] > \
            provenance["trigger"]["numbers"]["error_before"]
        # Trained on the window after the change only (the data manifest's positions).
        (lo, hi), = v.data.sources.values()
        assert lo > CHANGE and hi - lo >= 3000
        assert v.parent_id is not None
        assert "retrain" in [e.kind for e in reg.events(v.parent_id)]
        # The alarm is on the version live when it fired: the parent or one of its
        # ancestors (checkpoints went on while the window's labels came).
        alarmed = provenance["trigger"]["numbers"]["recorded_on"]
        assert "drift" in [e.kind for e in reg.events(alarmed)]
        chain, at = [], v.parent_id
        while at is not None:
            chain.append(at)
            at = reg.get(at).parent_id
        assert alarmed in chain
        actions = {e.action for e in reg.access_entries(pipeline="rt")}
        assert {"drift", "retrain", "train", "deploy", "auto-promote"} <= actions
        assert reg.verify_access().ok

    assert summary["deployment"]["arms"]["live"]["version"] == candidate
    labels = _labels(cfg)
    served = [p for p in read_jsonl(cfg.out_dir / "predictions.jsonl")
              if p["model_version"] == candidate]
    indices = [int(p["record_id"].rsplit("-", 1)[1]) for p in served]
    assert len(indices) >= 5000
    accuracy = sum(p["prediction"] == labels[i] for p, i in zip(served, indices,
                                                                 strict=True)) / len(served)
    reference = _new_concept_accuracy(cfg, indices)
    assert abs(accuracy - reference) <= 0.02, (accuracy, reference)
