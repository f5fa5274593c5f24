"""``ray start --head`` and ``ray job submit --working-dir . -- riffle run``: a pipeline
submitted to a real cluster (its own GCS, dashboard and job server), as an operator
runs one, beside the test session's own Ray.

The cluster (``tests/ray_cluster.py``) has its own temp dir, ports and token: the
session's Ray, and any plain ``ray.init()`` meanwhile, never join it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import ray
from ray._private import services

from tests.helpers import read_jsonl
from tests.ray_cluster import RayHead, ray_bin

pytestmark = pytest.mark.usefixtures("ray_session")  # the session's Ray runs beside, as in CI

REPO = Path(__file__).parents[2]
N_EVENTS = 6_000
JOB_TIMEOUT_S = 240


@pytest.fixture
def ray_head() -> Iterator[RayHead]:
    """A head node of our own, stopped afterwards with nothing of it left running."""
    root = Path(tempfile.mkdtemp(prefix="rf-job-", dir="/tmp"))  # short socket paths
    # 4 logical CPUs: room for configs/cluster.yaml's actors (0.5 each) and the job
    head = RayHead(root, num_cpus=4).start()
    try:
        yield head
    finally:
        head.stop()
        assert not head.processes()
        shutil.rmtree(root, ignore_errors=True)


def test_ray_job_submit_runs_riffle_on_a_started_cluster_every_record_accounted(
        ray_head: RayHead, tmp_path: Path) -> None:
    # What a plain ray.init() here would join: not this cluster (its address file is in
    # its own temp dir), and the session's Ray is another one.
    assert services.get_ray_address_from_environment(None, None) != ray_head.address
    assert ray.get_runtime_context().gcs_address != ray_head.address

    out = tmp_path / "out"
    job_id = f"riffle-test-{uuid.uuid4().hex[:8]}"
    ray_cmd = str(ray_bin())
    try:
        submit = subprocess.run(
            [ray_cmd, "job", "submit", "--address", ray_head.dashboard_url,
             "--submission-id", job_id, "--working-dir", str(REPO), "--",
             "riffle", "run", "configs/cluster.yaml", "--events", str(N_EVENTS),
             "--out", str(out), "--no-progress"],
            env=ray_head.env, cwd=REPO, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logs = subprocess.run([ray_cmd, "job", "logs", "--address", ray_head.dashboard_url,
                               job_id], env=ray_head.env, capture_output=True, text=True,
                              timeout=60)
        raise AssertionError(f"the job did not end within {JOB_TIMEOUT_S} s: "
                             f"{logs.stdout[-3000:]}") from None
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    status = subprocess.run([ray_cmd, "job", "status", "--address", ray_head.dashboard_url,
                             job_id], env=ray_head.env, capture_output=True, text=True,
                            timeout=60)
    assert f"job '{job_id}' succeeded" in status.stdout.lower(), status.stdout + status.stderr

    # The driver ran in the uploaded working dir (configs/cluster.yaml resolved there)
    # and wrote where --out said, on this machine's (shared) disk.
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["events"] == N_EVENTS and summary["scored"] == N_EVENTS
    predicted = Counter(p["record_id"] for p in read_jsonl(out / "predictions.jsonl"))
    dead = [d["record_id"] for d in read_jsonl(out / "dead_letters.jsonl")]
    assert max(predicted.values()) == 1 and not dead  # no failure: exactly once
    # The source numbers each partition's records from 0: every one of them is there.
    per_partition: dict[str, list[int]] = {}
    for rid in predicted:
        prefix, _, index = rid.rpartition("-")
        per_partition.setdefault(prefix, []).append(int(index))
    assert sorted(per_partition) == [f"loans-42-{p}" for p in range(4)]
    assert all(sorted(ix) == list(range(len(ix))) for ix in per_partition.values())
    assert sum(predicted.values()) == N_EVENTS
    assert summary["supervision"]["n_checkpoints"] >= 1  # the final one at least
    assert (out / "checkpoints").is_dir()
