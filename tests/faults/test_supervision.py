"""Supervision and checkpoints under real faults: real Ray workers killed with SIGKILL,
a worker frozen with SIGSTOP, a crash while a checkpoint is written, a crash loop, and
a stop followed by ``--resume``.

Every run reads one partition through one ingest actor into two scorers, so each scorer
sees its records in one order, run after run: a deterministic model must then end with
exactly the coefficients of a run without faults. Each test checks

- accounting: every input ``record_id`` is predicted or dead-lettered;
- duplicates (records predicted twice) exist only after the positions of the
  checkpoint that the restart restored;
- every prediction, including those replayed after the restart, equals the fault-free
  run's, and so does the final model (same weights, same scaler statistics);
- the committed audit trail and training log hold every record exactly once, and their
  rows equal the fault-free run's (all but the times and the checkpoint they name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import ray
import yaml

from actors.driver import run_pipeline
from pipelines.audit.query import AuditQuery
from pipelines.checkpoint import CheckpointStore, loads_state
from pipelines.config import PipelineConfig
from pipelines.scoring import live_model_of

pytestmark = pytest.mark.usefixtures("ray_session")

N_EVENTS = 24_000
RATE = 3_000.0  # events/s: the stream lasts ~8 s, so faults land mid-stream


def config_for(make_config: Callable[..., PipelineConfig], out: Path, **over: Any
               ) -> PipelineConfig:
    base: dict[str, Any] = {
        "source": {"partitions": 1, "n_events": N_EVENTS, "rate_per_s": RATE,
                   "label_delay_events": 20, "n_keys": 500},
        "ingest": {"n_actors": 1, "batch_size": 200},
        "scoring": {"n_actors": 2},
        "output": {"out_dir": str(out)},
        "checkpoint": {"interval_s": 1.0, "keep": 3},
        "supervision": {"ping_interval_s": 0.5, "ping_timeout_s": 4.0,
                        "scorer": {"backoff_initial_s": 0.1, "backoff_jitter": 0.0},
                        "ingest": {"backoff_initial_s": 0.1, "backoff_jitter": 0.0},
                        "sink": {"backoff_initial_s": 0.1, "backoff_jitter": 0.0}},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value}
    return make_config(**base)


class Run:
    """``run_pipeline`` in a thread; the test acts on the running pipeline meanwhile."""

    def __init__(self, config: PipelineConfig, *, resume: bool = False) -> None:
        self.config = config
        self.stop = threading.Event()
        self.status: dict[str, Any] = {}
        self.supervisor: Any = None
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(resume,), daemon=True)
        self._thread.start()

    def _run(self, resume: bool) -> None:
        def progress(status: dict[str, Any]) -> None:
            self.status = status

        def started(supervisor: Any) -> None:
            self.supervisor = supervisor

        try:
            self.summary = run_pipeline(self.config, stop=self.stop, on_progress=progress,
                                        on_started=started, resume=resume)
        except BaseException as e:
            self.error = e

    def until(self, cond: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert self._thread.is_alive(), f"the run ended before {what}: {self.error!r}"
            assert time.monotonic() < deadline, f"no {what} after {timeout_s} s: {self.status}"
            time.sleep(0.05)

    def checkpoints(self) -> int:
        return len(self.status.get("supervision", {}).get("checkpoints", []))

    def pid(self, actor: str) -> int:
        assert self.supervisor is not None
        pid: int = ray.get(self.supervisor.pids.remote())[actor]
        return pid

    def result(self, timeout_s: float = 120.0) -> dict[str, Any]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the run did not end within {timeout_s} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def predictions(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (out / "predictions.jsonl").read_bytes().splitlines()]


def supervision_log(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (out / "supervision.jsonl").read_bytes().splitlines()]


def final_models(out: Path) -> dict[str, dict[str, Any]]:
    """Per scorer, the weights, intercept and scaler statistics of the final checkpoint."""
    store = CheckpointStore(str(out / "checkpoints"))
    manifest = store.latest()
    assert manifest is not None and manifest.final, "no final checkpoint"
    models = {}
    for name in ("scorer-0", "scorer-1"):
        model = live_model_of(loads_state(store.read_part(manifest, name)))
        lr = model["LogisticRegression"]
        scaler = model["StandardScaler"]
        models[name] = {"weights": dict(lr.weights), "intercept": lr.intercept,
                        "means": dict(scaler.means), "vars": dict(scaler.vars)}
    return models


_TRAIL = ("record_id", "key", "partition", "offset", "model_version", "arm",
          "role", "scorer", "features", "score", "prediction")
_TRAINING = ("record_id", "key", "partition", "offset", "label", "model_version", "arm",
             "scorer", "seq")


def audit_rows(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The committed audit trail and training log, without times and checkpoint names
    (those differ from run to run), sorted."""
    def select(view: str, columns: tuple[str, ...]) -> str:
        return f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in columns)} FROM {view}"

    with AuditQuery(str(out / "checkpoints")) as q:
        return {"trail": sorted(q.con.execute(select("trail", _TRAIL)).fetchall()),
                "training": sorted(q.con.execute(select("training", _TRAINING)).fetchall())}


def check_audit(out: Path, reference: dict[str, Any]) -> None:
    """Exactly once, and the fault-free run's rows."""
    got = audit_rows(out)
    for kind, rows in got.items():
        ids = Counter(r[0] for r in rows)
        twice = [rid for rid, n in ids.items() if n > 1]
        assert not twice, f"{kind}: {len(twice)} records more than once, e.g. {twice[:3]}"
        assert len(ids) == N_EVENTS, f"{kind}: {len(ids)} records of {N_EVENTS}"
        want = reference["audit"][kind]
        differ = sorted(set(rows) ^ set(want))
        assert not differ, f"{kind}: {len(differ)} rows differ from the fault-free run's: " \
                           f"{differ[:2]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, ray_session: None
              ) -> dict[str, dict[str, Any]]:
    """The final models and every prediction of the same stream without faults."""
    from tests.conftest import _merge

    out = tmp_path_factory.mktemp("reference")
    config = PipelineConfig.model_validate(_merge(
        {"name": "test", "source": {"kind": "synthetic", "seed": 7},
         "ingest": {"num_cpus": 0}, "scoring": {"num_cpus": 0}},
        {"source": {"partitions": 1, "n_events": N_EVENTS, "label_delay_events": 20,
                    "n_keys": 500},
         "ingest": {"n_actors": 1, "batch_size": 200}, "scoring": {"n_actors": 2},
         "output": {"out_dir": str(out)},
         "checkpoint": {"interval_s": None, "every_events": 5_000}}))
    summary = run_pipeline(config)
    assert summary["supervision"]["restarts"] == 0
    # Checkpoints by count of events only: some were taken, never closer than 5,000
    # events apart (how many depends on the speed: the count is polled every 0.5 s).
    periodic = [c["events_read"] for c in summary["supervision"]["checkpoints"]
                if not c["final"]]
    assert len(periodic) >= 1
    assert all(b - a >= 5_000 for a, b in zip([0, *periodic], periodic, strict=False))
    return {"models": final_models(out),
            "scores": {p["record_id"]: p["score"] for p in predictions(out)},
            "audit": audit_rows(out)}


def check_recovered(out: Path, reference: dict[str, dict[str, Any]], *, restarts: int = 1
                    ) -> dict[str, Any]:
    """The three properties of every fault test; returns the restart's log entry."""
    preds = predictions(out)
    ids = Counter(p["record_id"] for p in preds)
    expected = {f"loans-7-0-{i}" for i in range(N_EVENTS)}
    assert set(ids) == expected, (f"missing {len(expected - set(ids))}, "
                                  f"unknown {len(set(ids) - expected)}")
    log = supervision_log(out)
    restarts_logged = [e for e in log if e["kind"] == "restart"]
    assert len(restarts_logged) == restarts, log
    restored = restarts_logged[0]["checkpoint"]
    floor = _restored_position(log, restored) if restored is not None else 0
    duplicated = {rid for rid, n in ids.items() if n > 1}
    offsets = {p["record_id"]: p["offset"] for p in preds}
    early = [rid for rid in duplicated if offsets[rid] < floor]
    assert not early, f"{len(early)} duplicates from before checkpoint {restored}'s position"
    # Every prediction (before the failure, replayed, and after) is the fault-free run's.
    want = reference["scores"]
    differ = [p["record_id"] for p in preds if p["score"] != want[p["record_id"]]]
    assert not differ, f"{len(differ)} predictions differ from the fault-free run's: {differ[:3]}"
    assert final_models(out) == reference["models"]
    check_audit(out, reference)
    return restarts_logged[0]


def _restored_position(log: list[dict[str, Any]], checkpoint: str) -> int:
    entry = next(e for e in log if e["kind"] == "checkpoint" and e["checkpoint"] == checkpoint)
    position: int = entry["positions"]["loans[0]"]
    return position


def kill_mid_stream(run: Run, actor: str, sig: int = signal.SIGKILL) -> int:
    run.until(lambda: run.checkpoints() >= 2 and run.status.get("events", 0) > 4_000,
              "two checkpoints and 4k events")
    pid = run.pid(actor)
    os.kill(pid, sig)
    return pid


@pytest.mark.parametrize("actor", ["scorer-0", "ingest-0", "sink"])
def test_kill_9_of_an_actor_restarts_from_the_checkpoint_with_the_same_final_model(
        actor: str, make_config: Any, tmp_path: Path, reference: dict[str, Any]) -> None:
    run = Run(config_for(make_config, tmp_path / "out"))
    kill_mid_stream(run, actor)
    summary = run.result()
    assert summary["supervision"]["restarts"] == 1
    restart = check_recovered(tmp_path / "out", reference)
    assert restart["actor"] == actor
    assert restart["checkpoint"] is not None
    # What `riffle status` showed while the run went on after the restart.
    status = orjson.loads((tmp_path / "out" / "status.json").read_bytes())
    assert status["supervision"]["restarts"] == 1


def test_a_hung_scorer_is_found_by_the_ping_and_replaced(
        make_config: Any, tmp_path: Path, reference: dict[str, Any]) -> None:
    """Frozen with SIGSTOP, it never answers again; all_for_one replaces every actor."""
    run = Run(config_for(make_config, tmp_path / "out",
                         supervision={"strategy": "all_for_one"}))
    pid = kill_mid_stream(run, "scorer-1", signal.SIGSTOP)
    try:
        run.result()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    failure = next(e for e in supervision_log(tmp_path / "out") if e["kind"] == "failure")
    assert failure["actor"] == "scorer-1" and "hung" in failure["reason"]
    restart = check_recovered(tmp_path / "out", reference)
    assert restart["strategy"] == "all_for_one"


def test_a_crash_while_writing_a_checkpoint_never_uses_it(
        make_config: Any, tmp_path: Path, reference: dict[str, Any]) -> None:
    out = tmp_path / "out"
    config = config_for(make_config, out, runtime={"fault_drills": ["scorer-0@checkpoint#3"]})
    summary = run_pipeline(config)
    assert summary["supervision"]["restarts"] == 1
    restart = check_recovered(out, reference)
    assert restart["checkpoint"] == "ckpt-000002"  # not the half-written ckpt-000003
    committed = [e["checkpoint"] for e in supervision_log(out) if e["kind"] == "checkpoint"]
    assert "ckpt-000003" not in committed


def test_a_crash_loop_escalates_and_riffle_run_exits_1_naming_the_actor(tmp_path: Path) -> None:
    config = {
        "name": "loop",
        "source": {"kind": "synthetic", "partitions": 1, "n_events": 1000},
        "ingest": {"num_cpus": 0}, "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(tmp_path / "out")},
        "runtime": {"num_cpus": 2, "fault_drills": ["scorer-1@start"]},
        "supervision": {"scorer": {"max_restarts": 2, "within_s": 60, "backoff_initial_s": 0.1,
                                   "backoff_jitter": 0}},
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    riffle = Path(sys.executable).parent / "riffle"
    proc = subprocess.run([str(riffle), "run", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("riffle: error: pipeline loop: scorer-1 failed and was not restarted")
    assert "3 failures within 60.0 s (max_restarts 2)" in last
    kinds = [e["kind"] for e in supervision_log(tmp_path / "out")]
    assert kinds.count("failure") == 3 and kinds[-1] == "escalation"


def test_stop_then_resume_continues_from_the_checkpoint(
        make_config: Any, tmp_path: Path, reference: dict[str, Any]) -> None:
    out = tmp_path / "out"
    config = config_for(make_config, out)
    run = Run(config)
    run.until(lambda: run.status.get("events", 0) > 6_000, "6k events")
    run.stop.set()
    first = run.result()
    assert first["stopped_early"] and first["events"] < N_EVENTS
    stopped_at = CheckpointStore(str(out / "checkpoints")).latest()
    assert stopped_at is not None and stopped_at.final
    second = run_pipeline(config, resume=True)
    assert not second["stopped_early"]
    assert second["events"] == N_EVENTS  # counts continue from the checkpoint
    ids = Counter(p["record_id"] for p in predictions(out))
    assert set(ids) == {f"loans-7-0-{i}" for i in range(N_EVENTS)}
    # A stop drains and checkpoints exactly where it stopped: nothing is predicted twice.
    assert max(ids.values()) == 1
    assert final_models(out) == reference["models"]
    assert all(p["score"] == reference["scores"][p["record_id"]] for p in predictions(out))
    check_audit(out, reference)
    assert "resume" in [e["kind"] for e in supervision_log(out)]
