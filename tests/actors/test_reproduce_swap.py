"""``riffle audit reproduce`` of versions made after a mid-run hot swap: a 2-scorer run
deploys one of its own earlier checkpoints while it streams (each scorer continues from
that checkpoint's part), and every version committed after the swap is rebuilt through
the swapped-in version's lineage and equals its artifact."""

from __future__ import annotations

from pathlib import Path

from pipelines.audit.reproduce import Reproducer
from pipelines.config import PipelineConfig
from pipelines.control import FileControl
from pipelines.protocol import Command
from pipelines.registry import Registry
from tests.faults.test_supervision import Run


def _config(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "rs",
        "source": {"kind": "synthetic", "partitions": 2, "n_events": 6000, "seed": 11,
                   "n_keys": 500, "label_delay_events": 5, "rate_per_s": 1200.0},
        "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(root / "run")},
        "registry": {"url": f"sqlite:///{root / 'registry.db'}"},
        "checkpoint": {"interval_s": None, "every_events": 500, "keep": 50}})


def test_reproduce_versions_after_a_mid_run_hot_swap_equal_their_artifacts(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run = Run(cfg)
    run.until(lambda: run.checkpoints() >= 3, "3 checkpoints", timeout_s=300)
    swapped_in = "rs/ckpt-000001"
    FileControl(cfg.out_dir / "control.jsonl").send(Command(
        op="deploy", pipeline="rs", version=swapped_in, actor="test",
        reason="hot swap").to_json())
    run.result(180)
    with Registry(cfg.registry_url(), create=False) as reg:
        [deploy] = [c for c in reg.commands("rs") if c.op == "deploy"]
        assert deploy.status == "applied", deploy.error
        after = [v.id for v in reg.versions("rs") if v.kind == "river"
                 and v.created_at > deploy.received_at]
        assert len(after) >= 2  # the swap came mid-run: versions were made after it
        for version in after:
            doc = Reproducer(cfg, registry=reg).reproduce(version)
            assert doc["reproduced"], (version, doc["first_difference"])
            for name, part in doc["scorers"].items():
                assert part["max_error"] <= 1e-12, (version, name)
                assert part["model_version"] == swapped_in  # the live model after the swap
                assert part["n_values"] > 10
