"""Supervision and checkpoints with Kafka in and out, under real faults: the Kafka variants
of tests/faults/test_supervision.py (a scorer killed is tests/faults/test_kafka_recovery.py).

Each test loads a backlog of loans (events, their labels, and now and then an invalid
event that must become a dead letter) into topics of its own, runs one ingest actor
reading one partition into two scorers, and hits it with faults while it is busy. Then
it reads the predictions and dead-letter topics back and checks

- accounting: every valid record_id produced is predicted, every invalid one
  dead-lettered;
- duplicates: a record at offset ``o`` of the events topic comes out at most
  ``1 + (restarts that restored a checkpoint at a position <= o)`` times. Nothing
  before a restored checkpoint's position (from the store's manifest, as
  ``supervision.jsonl`` names it) is read again, and each restart replays what
  follows it once. A record predicted twice has the same score both times;
- the final models (the final checkpoint's) are exactly River learning the same
  feedback in log order.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition

from actors.driver import run_pipeline
from pipelines.checkpoint import CheckpointStore
from pipelines.config import PipelineConfig, SyntheticSourceConfig
from pipelines.errors import RunFailed
from pipelines.kafka import ensure_topics
from pipelines.produce import produce
from pipelines.protocol import SourceMessage
from pipelines.sources import open_reader
from tests.faults.test_kafka_recovery import river_models
from tests.faults.test_supervision import Run, final_models, supervision_log
from tests.helpers import assert_same_set

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ray_session")]

INVALID_EVERY = 500
"""One invalid event (a feature that is not a number) after every this many loans."""
ACTORS = ("ray::Supervisor", "ray::IngestActor", "ray::ScorerActor", "ray::SinkActor")
"""Titles of the worker processes of a pipeline's actors."""


class WithInvalid:
    """A source reader that slips an invalid event in after every ``every``-th event."""

    def __init__(self, reader: Any, every: int) -> None:
        self.name = reader.name
        self._reader = reader
        self._every = every
        self._n = 0

    @property
    def exhausted(self) -> bool:
        return bool(self._reader.exhausted)

    def read(self, max_n: int) -> list[SourceMessage]:
        out = []
        for m in self._reader.read(max_n):
            out.append(m)
            if m.kind == "event" and m.payload is not None:
                self._n += 1
                if self._n % self._every == 0:
                    bad = {**m.payload, "record_id": f"bad-{self._n}",
                           "features": {"age": "unknown"}}
                    out.append(m._replace(payload=bad))
        return out

    def positions(self) -> dict[str, int]:
        return dict(self._reader.positions())

    def commit(self, positions: dict[str, int]) -> None:
        self._reader.commit(positions)

    def close(self) -> None:
        self._reader.close()


def load(config: PipelineConfig, n_events: int) -> tuple[set[str], set[str]]:
    """``n_events`` loans, their labels and the invalid events into one partition of the
    config's topics; the record_ids of the valid and of the invalid events."""
    ensure_topics(config.kafka, 1)
    src = SyntheticSourceConfig(kind="synthetic", partitions=1, n_events=n_events, seed=7,
                                label_delay_events=5)  # as river_models() has it
    counts = produce(WithInvalid(open_reader(src, [0]), INVALID_EVERY), config.kafka)
    n_invalid = n_events // INVALID_EVERY
    assert counts == {"events": n_events + n_invalid, "feedback": n_events, "undecodable": 0}
    return ({f"loans-7-0-{i}" for i in range(n_events)},
            {f"bad-{i}" for i in range(INVALID_EVERY, n_events + 1, INVALID_EVERY)})


def config_for(make_kafka_config: Any, out: Path, **over: Any) -> PipelineConfig:
    base: dict[str, Any] = {
        "source": {"partitions": 1, "idle_stop_s": None},
        "ingest": {"n_actors": 1, "batch_size": 200},
        "scoring": {"n_actors": 2},
        "output": {"kind": "kafka", "out_dir": str(out)},
        # By count, so that faults land between checkpoints however fast the box is;
        # every checkpoint kept, so that each restart's can be read back at the end.
        "checkpoint": {"interval_s": None, "every_events": 1_500, "keep": 1_000},
        "runtime": {"progress_interval_s": 0.2},
        "supervision": {"ping_interval_s": 0.5, "ping_timeout_s": 4.0,
                        **{role: {"backoff_initial_s": 0.1, "backoff_jitter": 0.0}
                           for role in ("scorer", "ingest", "sink")}},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value}
    return make_kafka_config(**base)


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every message of ``topic`` up to its end as of now (its writers are done)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topic}: not read to {ends} in {timeout_s} s"
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
        return sorted(out, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def outputs(config: PipelineConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Predictions and dead letters in the order they were written, each as ``record_id``,
    events ``offset`` and ``score`` (None for a dead letter)."""
    bootstrap, topics = config.kafka.bootstrap_servers, config.kafka.topics
    predictions = []
    for m in read_to_end(bootstrap, topics.predictions):
        p = orjson.loads(m.value)
        assert p["partition"] == 0
        predictions.append({"record_id": p["record_id"], "offset": p["offset"],
                            "score": p["score"]})
    dead = []
    for m in read_to_end(bootstrap, topics.dead_letters):
        h = {k: v.decode() for k, v in m.headers}
        assert h["__connect.errors.exception.class.name"] == "InvalidRecord", h
        assert h["__connect.errors.topic"] == topics.events, h
        dead.append({"record_id": orjson.loads(m.value)["record_id"],
                     "offset": int(h["__connect.errors.offset"]), "score": None})
    return predictions, dead


def check_accounting(got: list[dict[str, Any]], valid: set[str], invalid: set[str],
                     floors: list[int]) -> Counter[str]:
    """Every record out (predicted if valid, dead-lettered if not), duplicates only after
    restored positions and as often as restarts replayed them, replays scored alike.
    Returns how many times each record came out."""
    assert_same_set({o["record_id"] for o in got if o["score"] is not None}, valid,
                    "record_ids predicted")
    assert_same_set({o["record_id"] for o in got if o["score"] is None}, invalid,
                    "record_ids dead-lettered")
    times = Counter(o["record_id"] for o in got)
    offsets: dict[str, set[int]] = defaultdict(set)
    scores: dict[str, list[Any]] = defaultdict(list)
    for o in got:
        offsets[o["record_id"]].add(o["offset"])
        scores[o["record_id"]].append(o["score"])
    assert all(len(at) == 1 for at in offsets.values()), "a record_id at two offsets"
    offset = {rid: next(iter(at)) for rid, at in offsets.items()}
    too_often = {rid: (offset[rid], n) for rid, n in times.items()
                 if n > 1 + sum(1 for floor in floors if floor <= offset[rid])}
    assert not too_often, (f"{len(too_often)} records out more often than the restarts from "
                           f"positions {floors} replay them; (offset, times), e.g. "
                           f"{sorted(too_often.values())[:5]}")
    differ = [rid for rid, s in scores.items() if any(x != s[0] for x in s)]
    assert not differ, f"{len(differ)} records scored differently when replayed: {differ[:3]}"
    return times


def log_so_far(out: Path) -> list[dict[str, Any]]:
    """``supervision.jsonl`` as written so far (a line being written is left out)."""
    try:
        data = (out / "supervision.jsonl").read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in data.split(b"\n")[:-1]]


def restarted(out: Path, k: int, *, then_checkpointed: bool = False) -> bool:
    """The ``k``-th restart is done (and a checkpoint was committed after it)."""
    log = log_so_far(out)
    at = [i for i, e in enumerate(log) if e["kind"] == "restart"]
    return len(at) >= k and (not then_checkpointed or any(
        e["kind"] == "checkpoint" for e in log[at[k - 1]:]))


def restarts(config: PipelineConfig, out: Path) -> list[tuple[dict[str, Any], int]]:
    """Each restart's log entry and the events position of the checkpoint it restored,
    from the store's manifest (the same as the log gave when it was committed).

    No restart goes back beyond the last checkpoint logged before its failure (it may
    restore a later one: a checkpoint committed just as the failure hit, and logged after).
    """
    log = supervision_log(out)
    manifests = {m.id: m for m in CheckpointStore(str(out / "checkpoints")).manifests()}
    logged = {e["checkpoint"]: e for e in log if e["kind"] == "checkpoint"}
    found = []
    for i, entry in enumerate(log):
        if entry["kind"] != "restart":
            continue
        failed = max(j for j in range(i) if log[j]["kind"] == "failure")
        before = [e["checkpoint"] for e in log[:failed] if e["kind"] == "checkpoint"]
        restored = entry["checkpoint"]
        assert before and restored is not None and restored >= before[-1], \
            f"restart {entry} restored an older checkpoint than {before[-1:]}"
        positions = manifests[restored].positions
        if restored in logged:
            assert positions == logged[restored]["positions"]
        found.append((entry, positions[f"{config.kafka.topics.events}[0]"]))
    return found


def committed(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "checkpoints").glob("ckpt-*/MANIFEST.json")}


def kill_at_next_commit(run: Run, out: Path, actor: str, timeout_s: float = 120.0) -> None:
    """kill -9 of ``actor`` the moment the next checkpoint's manifest is written: the
    worst moment for the sink, whose writes of the records the checkpoint covers may
    still be queued."""
    pid = run.pid(actor)
    before = committed(out)
    deadline = time.monotonic() + timeout_s
    while committed(out) <= before:
        assert run.summary is None and run.error is None, f"the run ended: {run.error!r}"
        assert time.monotonic() < deadline, f"no checkpoint after {timeout_s} s: {run.status}"
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)


def events_end(config: PipelineConfig) -> dict[str, int]:
    """Where the events and feedback topics end, as positions (``topic[p]``)."""
    consumer = KafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers)
    try:
        tps = [TopicPartition(t, 0) for t in (config.kafka.topics.events,
                                              config.kafka.topics.feedback)]
        return {f"{tp.topic}[0]": end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def kill(run: Run, actor: str, sig: int = signal.SIGKILL) -> int:
    pid = run.pid(actor)
    os.kill(pid, sig)
    return pid


@pytest.fixture
def start_run() -> Iterator[Callable[[PipelineConfig], Run]]:
    """Starts pipelines in the background; stops what a failed test left running."""
    runs: list[Run] = []

    def start(config: PipelineConfig) -> Run:
        runs.append(Run(config))
        return runs[-1]

    yield start
    for run in runs:
        run.stop.set()
    for run in runs:
        try:
            run.result(timeout_s=120)
        except Exception:  # the test has failed already, or reports it itself
            pass


# Enough that all three faults land mid-stream, each after the previous restart has
# checkpointed: with the lean hot path a run of 24,000 was read to its end before the
# sink's kill, and no checkpoint came after that restart (nothing left to read).
N_FAULTS = 80_000


def test_kafka_ingest_and_sink_killed_and_a_hung_scorer_each_restart_from_the_checkpoint(
        make_kafka_config: Any, start_run: Any, tmp_path: Path) -> None:
    """One run, three faults in turn, each after the previous restart has checkpointed:
    kill -9 of the ingest actor's worker, kill -9 of the sink's, and scorer-1 frozen with
    SIGSTOP (found by the ping). one_for_one: each time the failed actor is replaced and
    the others are rewound in place, the group set back to the checkpoint's offsets."""
    out = tmp_path / "out"
    config = config_for(make_kafka_config, out)
    valid, invalid = load(config, N_FAULTS)
    end = events_end(config)
    run = start_run(config)
    stopped: int | None = None
    try:
        run.until(lambda: run.checkpoints() >= 2, "two checkpoints", timeout_s=180)
        kill(run, "ingest-0")
        run.until(lambda: restarted(out, 1, then_checkpointed=True), "a checkpoint after the "
                  "ingest restart", timeout_s=120)
        kill_at_next_commit(run, out, "sink")
        run.until(lambda: restarted(out, 2, then_checkpointed=True), "a checkpoint after the "
                  "sink restart", timeout_s=120)
        stopped = kill(run, "scorer-1", signal.SIGSTOP)
        run.until(lambda: restarted(out, 3), "the hung scorer's restart",
                  timeout_s=120)
        # The source never ends by itself: stop once everything is read and written.
        run.until(lambda: run.status.get("positions") == end, f"the group to commit {end}",
                  timeout_s=180)
        run.stop.set()
        summary = run.result(timeout_s=120)
    finally:
        run.stop.set()
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass

    assert summary["supervision"]["restarts"] == 3
    found = restarts(config, out)
    assert [(e["actor"], e["strategy"]) for e, _ in found] == [
        ("ingest-0", "one_for_one"), ("sink", "one_for_one"), ("scorer-1", "one_for_one")]
    assert "hung" in found[2][0]["reason"]
    floors = [floor for _, floor in found]
    # Each fault hit mid-stream: the restored position is short of the end, and later
    # than the one before (each restart restored a checkpoint taken after the last).
    assert floors == sorted(set(floors)) and floors[-1] < N_FAULTS, floors
    predictions, dead = outputs(config)
    times = check_accounting(predictions + dead, valid, invalid, floors)
    assert final_models(out) == river_models(N_FAULTS, 2)
    print(f"\nrestored positions {floors}; {sum(n - 1 for n in times.values())} outputs "
          f"replayed; run {summary['wall_s']} s")


# Enough that the stop lands before the first run has read everything: the drill fires at
# ~4,500 events and the stop follows the next checkpoint; since the lean hot path a run
# of 15,000 was over before the stop arrived.
N_RESUME = 40_000


def test_kafka_crash_mid_checkpoint_then_stop_and_resume_continue_exactly(
        make_kafka_config: Any, start_run: Any, tmp_path: Path) -> None:
    """scorer-0 exits halfway through writing checkpoint 3: the restart restores
    checkpoint 2, never the half-written one. Then the run is stopped (drained, a final
    checkpoint) and resumed with ``resume=True``: the second run starts at the stop's
    positions, so nothing of the first is predicted again, and ends with River's models."""
    out = tmp_path / "out"
    config = config_for(make_kafka_config, out, source={"idle_stop_s": 4.0},
                        runtime={"fault_drills": ["scorer-0@checkpoint#3"]})
    valid, invalid = load(config, N_RESUME)
    run = start_run(config)
    run.until(lambda: restarted(out, 1, then_checkpointed=True), "the drill's restart and a "
              "checkpoint after it", timeout_s=180)
    run.stop.set()
    first = run.result(timeout_s=120)
    assert first["stopped_early"] and first["supervision"]["restarts"] == 1
    ((restart, floor),) = restarts(config, out)
    assert restart["actor"] == "scorer-0" and restart["checkpoint"] == "ckpt-000002"
    store = CheckpointStore(str(out / "checkpoints"))
    assert "ckpt-000003" not in [m.id for m in store.manifests()]
    assert "ckpt-000003" not in [e.get("checkpoint") for e in supervision_log(out)
                                 if e["kind"] == "checkpoint"]
    stop = store.latest()
    assert stop is not None and stop.final
    # The final checkpoint is where the drained run stopped: what it committed.
    assert stop.positions == first["positions"]
    stop_at = stop.positions[f"{config.kafka.topics.events}[0]"]
    assert stop_at < N_RESUME + len(invalid), "the first run read everything: raise N_RESUME"
    n_predicted, n_dead = (len(o) for o in outputs(config))

    second = run_pipeline(config, resume=True)

    assert not second["stopped_early"] and second["supervision"]["restarts"] == 0
    resumed = next(e for e in supervision_log(out) if e["kind"] == "resume")
    assert resumed["checkpoint"] == stop.id
    predictions, dead = outputs(config)
    times = check_accounting(predictions + dead, valid, invalid, [floor])
    # A stop drains and checkpoints where it stopped: the second run reads on from there.
    before = {o["record_id"] for o in predictions[:n_predicted] + dead[:n_dead]}
    again = [o for o in predictions[n_predicted:] + dead[n_dead:]
             if o["offset"] < stop_at or o["record_id"] in before]
    assert not again, (f"{len(again)} records of the first run (or before its stop at "
                       f"{stop_at}) came out again after --resume, e.g. {again[:3]}")
    assert final_models(out) == river_models(N_RESUME, 2)
    print(f"\ncrash restored position {floor}, stopped at {stop_at}; "
          f"{sum(n - 1 for n in times.values())} outputs replayed")


def actor_processes() -> set[tuple[int, float]]:
    """(pid, start time) of the worker processes of pipeline actors in this session's Ray."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            if title.startswith(ACTORS):
                found.add((proc.pid, proc.create_time()))
        except psutil.Error:  # gone meanwhile
            continue
    return found


@pytest.fixture
def no_actor_left() -> Iterator[None]:
    """After the test: every actor process it started has exited."""
    before = actor_processes()
    yield
    deadline = time.monotonic() + 30
    while (left := actor_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"actor processes left behind: {left}"


def test_kafka_crash_loop_escalates_with_one_line_naming_the_actor_and_consumes_nothing(
        make_kafka_config: Any, tmp_path: Path, no_actor_left: None) -> None:
    """scorer-1 fails at every start: the run fails (RunFailed: what `riffle run` exits 1
    on) after max_restarts, in one line naming it; no actor process and no member of the
    consumer group is left, and no offset was committed past the start, so a later run
    reads the whole stream."""
    out = tmp_path / "out"
    config = config_for(make_kafka_config, out, source={"idle_stop_s": 4.0},
                        runtime={"fault_drills": ["scorer-1@start"]},
                        supervision={"scorer": {"max_restarts": 2, "within_s": 60,
                                                "backoff_initial_s": 0.1,
                                                "backoff_jitter": 0.0}})
    load(config, 1_000)
    with pytest.raises(RunFailed) as failed:
        run_pipeline(config)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("pipeline test: scorer-1 failed and was not restarted: "
                              "3 failures within 60.0 s (max_restarts 2)"), message
    log = supervision_log(out)
    assert [(e["kind"], e["actor"]) for e in log if e["kind"] != "start"] == [
        *[("failure", "scorer-1")] * 3, ("escalation", "scorer-1")]
    group = config.kafka.group_id
    admin = KafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    try:
        assert admin.describe_groups([group])[group]["members"] == []
        # Set back to where the run started at each restart, never moved on from there.
        offsets = admin.list_group_offsets(group)[group]
        assert {om.offset for om in offsets.values()} <= {0}, offsets
    finally:
        admin.close()
