"""The real ``riffle`` command, as a subprocess: errors, a run, a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psutil
import pytest

from tests.helpers import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
RIFFLE = [sys.executable, "-m", "pipelines.cli"]
# Every process a test's riffle starts (Ray's included) inherits this mark in its
# environment: another Ray on the machine (a parallel test session) is not ours.
RUN_MARK = "RIFFLE_TEST_RUN"


def run_env(mark: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[RUN_MARK] = mark or uuid.uuid4().hex
    return env


def riffle(*args: str, cwd: Path = ROOT, timeout: float = 300, mark: str = ""
           ) -> subprocess.CompletedProcess:
    return subprocess.run([*RIFFLE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=run_env(mark))


def ray_pids(mark: str) -> set[int]:
    """The Ray processes (GCS, raylet, agents, workers) of the riffle run marked ``mark``."""
    pattern = "ray/(core|_private|dashboard|autoscaler)|raylet|gcs_server"
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    mine = set()
    for pid in map(int, out.split()):
        try:
            if psutil.Process(pid).environ().get(RUN_MARK) == mark:
                mine.add(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return mine


def wait_until(cond, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("yaml", "args", "fragment"), [
    ("name: x\nsource: {kind: synthetic, partitions: -1}\n", (), "source.synthetic.partitions"),
    ("name: x\nsource: {kind: synthetic}\nsurprise: 1\n", (), "surprise: Extra inputs"),
    ("name: x\nsource: {kind: file, path: /nonexistent/e.jsonl}\n", (), "no such file"),
    ("name: x\nsource: {kind: synthetic}\nscoring: {model: {steps: [{name: tree.Nope}]}}\n", (),
     "unknown River estimator 'tree.Nope'"),
    ("name: x\nsource: {kind: synthetic}\nscoring: {model: {steps: [{name: "
     "linear_model.LogisticRegression, params: {bogus: 1}}]}}\n", (), "cannot build"),
    ("name: x\nsource: {kind: synthetic\n", (), "not valid YAML"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_bad_config_exit_2_one_line(tmp_path: Path, yaml: str, args: tuple, fragment: str,
                                        command: str) -> None:
    result = riffle(command, str(_config(tmp_path, yaml)), *args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("riffle: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [("run", "missing.yaml"), ("run",), ("nope",),
                                  ("run", "configs/local.yaml", "--events", "0"),
                                  ("run", "configs/local.yaml", "--events", "5", "--endless")])
def test_cli_usage_mistakes_exit_2_one_line(args: tuple) -> None:
    result = riffle(*args, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cli_validate_shipped_config_ok() -> None:
    result = riffle("validate", "configs/local.yaml", timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout


def test_cli_run_file_with_bad_lines_goes_on_and_writes_outputs(tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    assert riffle("sample", str(data), "--events", "3000", timeout=60).returncode == 0
    with open(data, "ab") as f:
        f.write(b"\xff\xfe not utf8\n{\"record_id\": \"x1\"}\n\n")
    config = _config(tmp_path, f"name: cli\nsource: {{kind: file, path: {data}, partitions: 2, "
                               "label_column: label}\ningest: {num_cpus: 0}\n"
                               "scoring: {n_actors: 2, num_cpus: 0}\n")
    mark = uuid.uuid4().hex
    result = riffle("run", str(config), "--out", str(tmp_path / "out"), mark=mark)
    assert result.returncode == 0, result.stderr
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    for field in ("events", "scored", "learned", "dead_letters", "labels_expired",
                  "labels_unmatched", "duplicates", "events_per_s", "latency_ms", "metrics"):
        assert field in summary
    assert summary["events"] == 3003 and summary["scored"] == 3000
    assert summary["dead_letters"] == 3
    assert set(summary["latency_ms"]) >= {"p50", "p99"}
    assert 0.5 < summary["metrics"]["accuracy"] <= 1.0 and summary["metrics"]["log_loss"] > 0
    dead = read_jsonl(tmp_path / "out" / "dead_letters.jsonl")
    assert sorted(d["error"].split(":")[0] for d in dead) == [
        "empty line", "invalid JSON", "key"]
    assert "events" in result.stdout  # the summary table
    wait_until(lambda: not ray_pids(mark), 30, "the run's Ray processes to exit")
    # The run's status afterwards: finished, its final checkpoint, the supervision log.
    status = riffle("status", str(config), "--out", str(tmp_path / "out"), timeout=60)
    assert status.returncode == 0, status.stderr
    assert "finished" in status.stdout and "ckpt-" in status.stdout
    assert "start" in status.stdout and "final" in status.stdout
    assert "arm live" in status.stdout and "v0 live" in status.stdout
    # Every committed checkpoint is a model version in the run's registry.
    listed = riffle("models", "list", str(config), "--registry",
                    f"sqlite:///{tmp_path / 'out' / 'registry.db'}", timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "cli/ckpt-00000" in listed.stdout
    # A second run with --resume starts from that final checkpoint: nothing is left to read.
    again = riffle("run", str(config), "--out", str(tmp_path / "out"), "--resume")
    assert again.returncode == 0, again.stderr
    assert len(read_jsonl(tmp_path / "out" / "predictions.jsonl")) == 3000
    resumed = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert resumed["events"] == 3003 and resumed["scored"] == 3000


def test_cli_status_and_resume_without_a_run_exit_2(tmp_path: Path) -> None:
    config = _config(tmp_path, "name: none\nsource: {kind: synthetic}\n")
    status = riffle("status", str(config), "--out", str(tmp_path / "out"), timeout=60)
    assert status.returncode == 2 and "no status.json" in status.stderr
    resume = riffle("run", str(config), "--out", str(tmp_path / "out"), "--resume", timeout=120)
    assert resume.returncode == 2, resume.stderr
    assert resume.stderr.strip().splitlines()[-1].startswith(
        "riffle: error: --resume: no committed checkpoint in ")


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_cli_endless_run_stops_cleanly_on_signal(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    mark = uuid.uuid4().hex
    env = run_env(mark)
    proc = subprocess.Popen([*RIFFLE, "run", "configs/local.yaml", "--endless", "--out",
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        # Running for real: predictions are being written.
        wait_until(lambda: (out / "predictions.jsonl").exists()
                   and (out / "predictions.jsonl").stat().st_size > 100_000, 120,
                   "predictions to flow")
        assert ray_pids(mark), "the run's Ray processes are not found by their mark"
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stopped_early"] is True
    predictions = read_jsonl(out / "predictions.jsonl")
    # Drained: every event read was scored and written, no line is torn.
    assert summary["events"] == summary["scored"] == len(predictions) > 0
    wait_until(lambda: not ray_pids(mark), 30, "the run's Ray processes to exit")
