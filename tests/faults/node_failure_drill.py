"""A pipeline on a 3-node Ray cluster on this machine, one worker node killed mid-stream.

Run by ``tests/faults/test_node_failure.py`` in a process of its own (a process joins
one Ray, and the test session's is another), as
``python -m tests.faults.node_failure_drill CONFIG.json REPORT.json``; the environment
carries the cluster's own temp dir (``RAY_TMPDIR``) and token, so no other Ray on the
machine can find this one.

The head (the driver, the Supervisor) offers no ``riffle-worker`` resource; the two
worker nodes offer 4 each, and the config's ``runtime.placement`` asks one per ingest
and scoring actor, spread: the data path lives on the workers. Once two checkpoints
are committed, the worker node that hosts ``scorer-0`` is killed (its raylet and every
worker process, as a lost machine). The report says where each actor ran before and
after, which node was killed, and the summary.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import ray
from ray.cluster_utils import Cluster

from pipelines.config import PipelineConfig
from tests.faults.test_supervision import Run
from tests.ray_cluster import free_port

# The GCS declares a node dead after 3 missed health checks 0.5 s apart (default: 5 of
# 3 s), so that the actors it hosted fail fast and the restart can re-place them.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
WORKER_RESOURCE = "riffle-worker"


def node_of(pid: int, raylets: dict[int, str]) -> str:
    """The node whose raylet started this worker process."""
    for parent in psutil.Process(pid).parents():
        if parent.pid in raylets:
            return raylets[parent.pid]
    return "head"


def placement(run: Run, raylets: dict[int, str]) -> dict[str, str]:
    assert run.supervisor is not None
    pids: dict[str, int] = ray.get(run.supervisor.pids.remote())
    return {actor: node_of(pid, raylets) for actor, pid in pids.items()}


def main(config_path: Path, report_path: Path) -> None:
    config = PipelineConfig.model_validate(orjson.loads(config_path.read_bytes()))
    temp_dir = Path(os.environ["RAY_TMPDIR"]) / "ray"  # where ray_current_cluster goes
    temp_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "temp_dir": str(temp_dir), "gcs_server_port": free_port(),
        "include_dashboard": False,
        "dashboard_agent_listen_port": free_port(), "runtime_env_agent_port": free_port(),
        "metrics_export_port": free_port(), "_system_config": FAST_NODE_DEATH})
    workers = {f"worker-{i}": cluster.add_node(num_cpus=1, resources={WORKER_RESOURCE: 4})
               for i in range(2)}
    raylets = {node.all_processes["raylet"][0].process.pid: name
               for name, node in workers.items()}
    report: dict[str, Any] = {}
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        run = Run(config)
        run.until(lambda: run.checkpoints() >= 2 and run.status.get("events", 0) > 4_000,
                  "two checkpoints and 4k events", timeout_s=90)
        report["before"] = placement(run, raylets)
        killed = report["before"]["scorer-0"]
        report["killed"] = killed
        cluster.remove_node(workers[killed], allow_graceful=False)
        run.until(lambda: run.status.get("supervision", {}).get("restarts", 0) >= 1
                  and not run.status.get("restarting"), "a restart", timeout_s=60)
        report["after"] = placement(run, raylets)
        report["summary"] = run.result()
    finally:
        report_path.write_bytes(orjson.dumps(report, default=str))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    started = time.monotonic()
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"drill done in {time.monotonic() - started:.1f} s", flush=True)
