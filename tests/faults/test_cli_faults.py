"""Faults through the real ``riffle run`` command: the CLI's own code (progress display,
status file, summary) under a ``kill -9`` of a scoring actor's worker.

The in-process fault tests (``test_supervision.py``) call ``run_pipeline`` directly, so a
crash in the command's progress callback on a status taken mid-recovery went unseen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

N_EVENTS = 24_000
RATE = 3_000.0  # events/s: the stream lasts ~8 s, so the kill lands mid-stream


def riffle_command() -> list[str]:
    """The console script of the venv that runs the tests (``make test`` names its python)."""
    python = Path(os.environ.get("RIFFLE_PYTHON") or sys.executable)
    script = python.parent / "riffle"
    return [str(script)] if script.exists() else [str(python), "-m", "pipelines.cli"]


def wait_until(cond: Callable[[], Any], timeout_s: float, what: str,
               proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"riffle exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return value


def read_status(out: Path) -> dict[str, Any]:
    try:  # replaced whole by the driver (os.replace): never half-written
        data: dict[str, Any] = orjson.loads((out / "status.json").read_bytes())
    except FileNotFoundError:
        return {}
    return data


def scorer_workers(root: int) -> list[psutil.Process]:
    """The Ray workers below ``root`` (our riffle) that host a ScorerActor: only this run's
    (another run of riffle on the machine is not below our process)."""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if "ScorerActor" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def ids_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {orjson.loads(line)["record_id"] for line in path.read_bytes().splitlines()}


def test_riffle_run_survives_kill_9_of_a_scorer_worker_with_every_record_accounted(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = tmp_path / "faulty.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cli-fault",
        "source": {"kind": "synthetic", "partitions": 1, "n_events": N_EVENTS, "seed": 7,
                   "rate_per_s": RATE, "label_delay_events": 20, "n_keys": 500},
        "ingest": {"n_actors": 1, "batch_size": 200, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "checkpoint": {"interval_s": 1.0, "keep": 3},
        # A status every 0.1 s: some are taken while the supervisor recovers.
        "runtime": {"num_cpus": 2, "progress_interval_s": 0.1},
        "supervision": {"ping_interval_s": 0.5, "ping_timeout_s": 4.0,
                        "scorer": {"backoff_initial_s": 0.1, "backoff_jitter": 0.0}},
    }))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # --progress: the progress display runs although stderr is a pipe here.
    proc = subprocess.Popen([*riffle_command(), "run", str(config), "--out", str(out),
                             "--progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        wait_until(lambda: len(read_status(out).get("supervision", {})
                               .get("checkpoints", [])) >= 1
                   and read_status(out).get("events", 0) > 3_000,
                   120, "a checkpoint and 3,000 events", proc)
        victim = wait_until(lambda: scorer_workers(proc.pid), 30, "a scorer's worker", proc)[0]
        victim.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    err = stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "Token authentication" not in err, err  # Ray's notice stays off the console
    # The kill happened mid-run and was recovered from, not missed.
    log = [orjson.loads(line) for line in (out / "supervision.jsonl").read_bytes().splitlines()]
    restarts = [e for e in log if e["kind"] == "restart"]
    assert restarts and restarts[0]["actor"].startswith("scorer-"), log
    accounted = ids_in(out / "predictions.jsonl") | ids_in(out / "dead_letters.jsonl")
    expected = {f"loans-7-0-{i}" for i in range(N_EVENTS)}
    missing = expected - accounted
    assert not missing, f"{len(missing)} records neither predicted nor dead-lettered"
    assert b"riffle run: cli-fault" in stdout
