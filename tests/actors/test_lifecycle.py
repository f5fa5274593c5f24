"""The model lifecycle on a running pipeline: hot swaps, launches, promotion, refusals.

Real Ray actors, the real control channel (the embedded file) and a real SQLite
registry. The candidate versions are committed checkpoints of an earlier run of the
same pipeline (each scorer continues its own part's model).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.driver import run_pipeline
from pipelines.config import PipelineConfig
from pipelines.control import FileControl
from pipelines.protocol import Command
from pipelines.registry import Registry
from tests.helpers import read_jsonl

REPO = Path(__file__).resolve().parents[2]
# Agrawal's function 0 is a band of ages: a tree learns it, a linear model cannot.
TREE_MODEL = {"steps": [{"name": "tree.HoeffdingTreeClassifier",
                         "params": {"grace_period": 100}}]}


def _config(root: Path, name: str, **over: Any) -> PipelineConfig:
    base: dict[str, Any] = {
        "name": "lc",
        "source": {"kind": "synthetic", "partitions": 2, "n_events": 6000, "seed": 11,
                   "n_keys": 3000, "label_delay_events": 5},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(root / name)},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        "checkpoint": {"enabled": False},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(base)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A first run whose checkpoints are registered: the candidates of the tests. Paced,
    so that the periodic checkpoint's barrier finds the ingest actor still reading (one
    that has read everything abandons it, and only the final checkpoint would be left)."""
    root = tmp_path_factory.mktemp("lifecycle")
    cfg = _config(root, "trained", checkpoint={"enabled": True, "interval_s": None,
                                                 "every_events": 2500, "keep": 5},
                  source={"rate_per_s": 2000},
                  scoring={"n_actors": 2, "num_cpus": 0, "model": TREE_MODEL})
    run_pipeline(cfg)
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        ids = [v.id for v in reg.versions("lc")]
    assert len(ids) >= 2
    return root, ids


class _WhenPredictions:
    """on_started hook: run ``action`` in a thread once ``n`` predictions are written;
    ``join`` waits for it and raises what it raised."""

    def __init__(self, out: Path, n: int, action: Callable[[], None]) -> None:
        self.out, self.n, self.action = out, n, action
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)

    def __call__(self, _: Any) -> None:
        self.thread.start()

    def _wait(self) -> None:
        path = self.out / "predictions.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= self.n:
                break
            time.sleep(0.05)
        try:
            self.action()
        except BaseException as e:
            self.error = e

    def join(self) -> None:
        self.thread.join(timeout=180)
        if self.error is not None:
            raise self.error


def reg_events(root: Path, version: str) -> list[Any]:
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        return reg.events(version)


def _riffle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_swap_under_load_every_record_scored_once_by_the_version_live_then(
        versions: tuple[Path, list[str]]) -> None:
    root, ids = versions
    candidate, retired = ids[-1], ids[0]
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        reg.record(retired, "retired", actor="test", reason="superseded")
    # Slow enough that the CLI (a new process) is answered while the stream still runs.
    cfg = _config(root, "swap", source={"n_events": 30_000, "rate_per_s": 2000.0})
    out = cfg.out_dir
    config_file = root / "swap.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    control = FileControl(out / "control.jsonl")
    cli: dict[str, subprocess.CompletedProcess[str]] = {}

    def commands() -> None:
        # Refused, the stream unaffected: malformed, unknown version, a retired version.
        control.send(b'{"op": "deploy", "pipeline": "lc", "version": ')
        control.send(Command(op="deploy", pipeline="lc", version="lc/ckpt-999999",
                             actor="test").to_json())
        control.send(Command(op="deploy", pipeline="lc", version=retired, mode="shadow",
                             actor="test").to_json())
        control.send(b'{"op": "rollback", "pipeline": "lc", "actor": "test"}')
        # The hot swap, through the CLI, which waits for the pipeline's answer.
        cli["deploy"] = _riffle("models", "deploy", str(config_file), candidate,
                                "--reason", "a better model")
        cli["unknown"] = _riffle("models", "deploy", str(config_file), "ckpt-424242")
        cli["rollback"] = _riffle("models", "rollback", str(config_file))

    hook = _WhenPredictions(out, 1500, commands)
    summary = run_pipeline(cfg, on_started=hook)
    hook.join()

    assert cli["deploy"].returncode == 0, cli["deploy"].stderr
    assert "applied" in cli["deploy"].stdout
    assert cli["unknown"].returncode == 2
    assert "unknown model version lc/ckpt-424242" in cli["unknown"].stderr
    assert "Traceback" not in cli["unknown"].stderr
    preds = read_jsonl(out / "predictions.jsonl")
    ids_seen = Counter(p["record_id"] for p in preds)
    assert len(ids_seen) == 30_000 and set(ids_seen.values()) == {1}
    assert summary["dead_letters"] == 0
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        log = reg.commands()  # a malformed message names no pipeline
        applied = [c for c in log if c.status == "applied"]
        rejected = [c for c in log if c.status == "rejected"]
        events = [e.kind for e in reg.events(candidate)]
        retired_events = reg.events(retired)
    assert [c.op for c in applied] == ["deploy", "rollback"]
    assert applied[0].version_id == candidate
    errors = " | ".join(c.error or "" for c in rejected)
    assert "malformed command" in errors
    assert "unknown model version lc/ckpt-999999" in errors
    assert f"{retired} is retired" in errors
    assert "no previous version to roll back to" in errors
    assert any(c.channel == "cli" for c in rejected)  # the CLI's own refusal is logged too
    assert "deployed" in events
    assert retired_events[-1].kind == "rejected"
    assert cli["rollback"].returncode == 0, cli["rollback"].stderr
    assert [e.kind for e in reg_events(root, candidate)][-1] == "rolled_back"
    # Each scorer switched twice, each time between two batches: exactly the events it
    # scored between the swap and the rollback carry the candidate, all others v0.
    swap, back = applied[0].details["scored_before"], applied[1].details["scored_before"]
    by_scorer: dict[str, Counter[str]] = {}
    for p in preds:
        by_scorer.setdefault(p["scorer"], Counter())[p["model_version"]] += 1
    for scorer, n_swap in swap.items():
        assert by_scorer[scorer][candidate] == back[scorer] - n_swap
        assert by_scorer[scorer]["v0"] == sum(by_scorer[scorer].values()) - (
            back[scorer] - n_swap)
    assert sum(c[candidate] for c in by_scorer.values()) > 0
    assert applied[0].details["pause_ms_max"] >= 0
    assert summary["deployment"]["commands_rejected"] == 4
    assert summary["deployment"]["arms"]["live"]["version"] == "v0"


def test_shadow_candidate_clearly_better_is_promoted_automatically_and_never_predicts_in_shadow(
        versions: tuple[Path, list[str]]) -> None:
    root, ids = versions
    candidate = ids[-1]
    cfg = _config(root, "shadow", source={"n_events": 8000},
                  launch={"mode": "shadow", "candidate": candidate,
                          "promotion": {"mode": "auto", "min_samples": 400,
                                        "check_every": 400, "max_samples": 4000}})
    summary = run_pipeline(cfg)
    out = cfg.out_dir
    preds = read_jsonl(out / "predictions.jsonl")
    shadow = read_jsonl(out / "shadow.jsonl")
    assert len({p["record_id"] for p in preds}) == len(preds) == 8000
    assert {s["arm"] for s in shadow} == {"candidate"}
    assert {s["model_version"] for s in shadow} == {candidate}
    assert {p["arm"] for p in preds} == {"live"}  # shadow outputs never predict
    served = Counter(p["model_version"] for p in preds)
    assert served["v0"] > 0 and served[candidate] > 0  # promoted mid-stream
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        events = reg.events(candidate)
    kinds = [e.kind for e in events]
    assert "shadowed" in kinds and "promoted" in kinds
    decision = next(e for e in events if e.kind == "promoted").details["decision"]
    assert decision["auto"] is True and decision["outcome"] == "promote"
    assert decision["candidate_mean"] > decision["live_mean"]
    assert decision["p_value"] <= decision["alpha_per_look"]
    # Shadow scores are of records scored before the promotion (and only those).
    shadow_ids = {s["record_id"] for s in shadow}
    assert shadow_ids <= {p["record_id"] for p in preds if p["model_version"] == "v0"}
    assert summary["deployment"]["arms"]["live"]["version"] == candidate
    assert summary["deployment"]["previous"] == "v0"


def test_canary_serves_its_share_of_keys_sticky_by_key(
        versions: tuple[Path, list[str]]) -> None:
    root, ids = versions
    cfg = _config(root, "canary", source={"n_events": 6000, "n_keys": 2000},
                  launch={"mode": "canary", "candidate": ids[-1], "share": 0.3},
                  checkpoint={"enabled": True, "interval_s": None,
                              "store": str(root / "canary-checkpoints")})
    summary = run_pipeline(cfg)
    preds = read_jsonl(cfg.out_dir / "predictions.jsonl")
    arms_of_key: dict[str, set[str]] = {}
    for p in preds:
        arms_of_key.setdefault(p["key"], set()).add(p["arm"])
    assert all(len(a) == 1 for a in arms_of_key.values())  # sticky
    share = sum(a == {"candidate"} for a in arms_of_key.values()) / len(arms_of_key)
    assert 0.25 <= share <= 0.35, share  # ~2,000 keys: the +-1 point bound is a unit test
    arms = summary["deployment"]["arms"]
    assert arms["candidate"]["scored"] + arms["live"]["scored"] == 6000
    assert arms["candidate"]["labeled"] > 0 and "accuracy" in arms["candidate"]["metrics"]

    # The deployment is part of every checkpoint: a resumed run serves the same arms
    # (and does not launch the config's candidate a second time).
    resumed = run_pipeline(cfg, resume=True)
    assert resumed["deployment"]["mode"] == "canary"
    assert resumed["deployment"]["arms"]["candidate"]["version"] == ids[-1]
    assert resumed["deployment"]["commands_applied"] == 0


def test_batch_trained_version_is_canaried_beside_the_online_model(
        versions: tuple[Path, list[str]], tmp_path: Path) -> None:
    """riffle train's scikit-learn version serves its share of keys through the same
    model interface; its scores are the model's own."""
    from pipelines.batch_models import loads_model
    from pipelines.sources.sample import write_sample
    from pipelines.training import train

    root, _ = versions
    history = tmp_path / "history.jsonl"
    write_sample(history, n_events=3000, seed=5)
    cfg = _config(root, "sk", source={"n_events": 4000, "n_keys": 1000},
                  training={"estimator": "sklearn.linear_model.LogisticRegression"})
    version = train(cfg, history, actor="test")
    assert version.kind == "sklearn"
    cfg = _config(root, "sk", source={"n_events": 4000, "n_keys": 1000},
                  launch={"mode": "canary", "candidate": version.id, "share": 0.5})
    summary = run_pipeline(cfg)
    preds = read_jsonl(cfg.out_dir / "predictions.jsonl")
    canary = [p for p in preds if p["arm"] == "candidate"]
    assert canary and {p["model_version"] for p in canary} == {version.id}
    assert len({p["record_id"] for p in preds}) == 4000
    with Registry(f"sqlite:///{root / 'registry.db'}") as reg:
        model = loads_model(reg.load_artifact(version.id))
        assert "canaried" in [e.kind for e in reg.events(version.id)]
    # The features of each record, regenerated as the source made them (per partition).
    from itertools import islice

    from pipelines.sources.synthetic import make_stream

    streams = {p: list(islice(make_stream(cfg.source, p), 4000)) for p in (0, 1)}
    for p in canary:
        partition, index = (int(v) for v in p["record_id"].rsplit("-", 2)[1:])
        expected = model.predict_proba_one(streams[partition][index][0])
        assert {int(k): v for k, v in p["score"].items()} == pytest.approx(expected, rel=1e-9)
    arms = summary["deployment"]["arms"]
    assert arms["candidate"]["scored"] == len(canary) and arms["candidate"]["labeled"] > 0
