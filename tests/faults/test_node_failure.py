"""Multi-node with node failure: a pipeline placed across a 3-node Ray cluster on this
machine (real raylets), one worker node killed mid-stream.

The cluster runs in a process of its own (``tests/faults/node_failure_drill.py``) with
its own temp dir and token, beside the test session's Ray; the checkpoint store is a
folder every node reaches. The fault-free reference and the checks are those of
``tests/faults/test_supervision.py``: every record predicted, duplicates only after the
restored checkpoint's position, every prediction and the final models equal to the
fault-free run's, the audit trail and training log exactly once.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.faults.test_supervision import check_recovered, config_for, reference  # noqa: F401
from tests.ray_cluster import ray_bin

DRILL_TIMEOUT_S = 240
DATA_PATH = {"riffle-worker": 1}


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """A short temp dir of the cluster's own (Ray's socket paths must stay under 108
    bytes), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rf-node-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_node_failure_mid_stream_re_places_its_actors_on_the_survivors_with_the_same_model(
        make_config: Any, tmp_path: Path, ray_tmpdir: Path,
        reference: dict[str, Any]) -> None:  # noqa: F811
    out = tmp_path / "out"
    config = config_for(make_config, out, runtime={"placement": {
        "strategy": "spread", "ingest": DATA_PATH, "scoring": DATA_PATH}})
    config_path, report_path = tmp_path / "config.json", tmp_path / "report.json"
    config_path.write_bytes(orjson.dumps(config.model_dump(mode="json")))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    python = ray_bin().parent / "python"
    proc = subprocess.run(
        [str(python if python.exists() else sys.executable), "-m",
         "tests.faults.node_failure_drill", str(config_path), str(report_path)],
        env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True,
        timeout=DRILL_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = orjson.loads(report_path.read_bytes())

    killed, before, after = report["killed"], report["before"], report["after"]
    data_path = [a for a in before if a.startswith(("scorer-", "ingest-"))]
    # Placed across both worker nodes, never on the head (no riffle-worker there).
    assert {before[a] for a in data_path} == {"worker-0", "worker-1"}, before
    lost = sorted(a for a in before if before[a] == killed)
    assert "scorer-0" in lost
    # After the restart nothing runs on the lost node: its actors were re-placed on the
    # surviving worker, the others stayed where they were.
    assert killed not in after.values(), after
    survivor = ({"worker-0", "worker-1"} - {killed}).pop()
    assert all(after[a] == survivor for a in data_path), after
    assert all(after[a] == before[a] for a in before if a not in lost), (before, after)

    assert report["summary"]["supervision"]["restarts"] == 1
    restart = check_recovered(out, reference)
    assert restart["actor"] in lost
    assert restart["checkpoint"] is not None
