"""A damaged checkpoint and ``riffle run --resume``, through the real command.

One byte changed in the newest checkpoint's ingest part: the parts are checked against
their hashes before any actor starts, the run falls back to the newest intact checkpoint
(one warning line, one ``supervision.jsonl`` entry naming the part), replays what came
after it, and every input record is accounted for. With every checkpoint damaged, the
command refuses in one line naming the part, exit code 2, and starts nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pipelines.checkpoint import CheckpointStore, Manifest

N_EVENTS = 6_000
SEED = 7


def riffle(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The console script of the venv that runs the tests (else ``python -m``)."""
    script = Path(sys.executable).parent / "riffle"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipelines.cli"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([*command, *args, "--no-progress"], capture_output=True, text=True,
                          timeout=timeout, env=env)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def flip_one_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run to completion with several checkpoints: its config and output folder."""
    root = tmp_path_factory.mktemp("damaged")
    out = root / "out"
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "damaged",
        # Rate-limited (~3 s of stream) so that periodic checkpoints precede the final one.
        "source": {"kind": "synthetic", "partitions": 1, "n_events": N_EVENTS, "seed": SEED,
                   "rate_per_s": 2_000.0, "label_delay_events": 20, "n_keys": 500},
        "ingest": {"n_actors": 1, "batch_size": 200, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(out)},
        "checkpoint": {"interval_s": 0.5, "keep": 3},
        "runtime": {"num_cpus": 2},
    }))
    first = riffle("run", str(config))
    assert first.returncode == 0, first.stderr
    manifests = CheckpointStore(str(out / "checkpoints")).manifests()
    assert len(manifests) >= 2 and manifests[-1].final, [m.id for m in manifests]
    return config, out


def copy_of(finished_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path,
                                                                      list[Manifest]]:
    """The finished run's outputs in a folder of this test's own."""
    config, out = finished_run
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    return config, mine, CheckpointStore(str(mine / "checkpoints")).manifests()


def test_resume_past_a_damaged_ingest_part_falls_back_and_accounts_for_every_record(
        finished_run: tuple[Path, Path], tmp_path: Path) -> None:
    config, out, manifests = copy_of(finished_run, tmp_path)
    newest, intact = manifests[-1], manifests[-2]
    flip_one_byte(out / "checkpoints" / newest.parts["ingest-0"].path)

    resumed = riffle("run", str(config), "--out", str(out), "--resume")

    assert resumed.returncode == 0, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("riffle: ")]
    assert warnings == [
        f"riffle: warning: checkpoint {newest.id} is damaged (part ingest-0 does not match "
        f"its SHA-256 in the manifest): resuming from {intact.id}, the newest intact "
        "checkpoint; records after it are read again"], resumed.stderr
    log = read_jsonl(out / "supervision.jsonl")
    damaged = [e for e in log if e["kind"] == "checkpoint_damaged"]
    assert len(damaged) == 1, log
    assert damaged[0]["checkpoint"] == newest.id and damaged[0]["part"] == "ingest-0"
    assert damaged[0]["resumed_from"] == intact.id
    assert next(e for e in log if e["kind"] == "resume")["checkpoint"] == intact.id
    assert not [e for e in log if e["kind"] in ("failure", "restart", "escalation")]
    # Every input record is predicted or dead-lettered; the replay after the intact
    # checkpoint's positions may predict some twice (at-least-once), none before them.
    predictions = read_jsonl(out / "predictions.jsonl")
    predicted = Counter(p["record_id"] for p in predictions)
    dead = {d.get("record_id") for d in read_jsonl(out / "dead_letters.jsonl")}
    expected = {f"loans-{SEED}-0-{i}" for i in range(N_EVENTS)}
    assert set(predicted) | dead == expected
    floor = intact.positions["loans[0]"]
    offsets = {p["record_id"]: p["offset"] for p in predictions}
    twice = [r for r, n in predicted.items() if n > 1]
    if floor < newest.positions["loans[0]"]:  # records came after it: they were replayed
        assert twice, "nothing predicted twice: the run did not resume from the older one"
    assert all(offsets[r] >= floor for r in twice)
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["events"] == N_EVENTS  # counts continue from the intact checkpoint


def test_resume_with_every_checkpoint_damaged_refuses_naming_the_part_exit_2(
        finished_run: tuple[Path, Path], tmp_path: Path) -> None:
    config, out, manifests = copy_of(finished_run, tmp_path)
    for manifest in manifests:
        flip_one_byte(out / "checkpoints" / manifest.parts["ingest-0"].path)
    log_before = read_jsonl(out / "supervision.jsonl")

    resumed = riffle("run", str(config), "--out", str(out), "--resume", timeout=180)

    assert resumed.returncode == 2, resumed.stderr
    lines = resumed.stderr.strip().splitlines()
    assert "Traceback" not in resumed.stderr
    newest = manifests[-1]
    assert lines[-1] == (
        f"riffle: error: --resume: no intact checkpoint in {out / 'checkpoints'}: checkpoint "
        f"{newest.id}: part ingest-0 ({newest.parts['ingest-0'].path}) does not match its "
        f"SHA-256 in the manifest (and {len(manifests) - 1} older checkpoint"
        f"{'s' if len(manifests) > 2 else ''} damaged too)"), resumed.stderr
    # Refused before any actor started: nothing was read, restarted or written.
    log = read_jsonl(out / "supervision.jsonl")
    assert [e["kind"] for e in log[len(log_before):]] == []
