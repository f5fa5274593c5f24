"""Faults on the real broker and real Ray: a broker outage, a stop and restart, a scale-out.

Each test loads a stream into topics of its own, starts the pipeline, hits it with the
fault while it is still busy, and then reads the predictions topic back: every event
must be predicted (at-least-once), and whatever was predicted twice must come from
after the offsets the group had committed when the fault hit. The last test moves a
partition away from an ingest actor and back, and checks that its committed offset
never goes back in the log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import ray
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from actors.driver import run_pipeline
from actors.ingest import COMMIT_INTERVAL_S
from pipelines.audit.query import AuditQuery
from pipelines.config import PipelineConfig
from tests.helpers import assert_same_set
from tests.kafka_broker import broker_start, broker_stop
from tests.kafka_helpers import produce_loans, read_topic, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ray_session")]

OUTAGE_S = 10.0
# No message arrives from just before the broker stops until it serves again (its stop
# takes ~1 s, its start 8-15 s): the source's idle stop must outlast all of that, or the
# run would end, as configured, during the outage.
IDLE_STOP_S = 40.0
# The pipeline scores 2-5 k events/s on a 2-core box: the faults, which hit after the
# first 1-2 k predictions, land with most of the stream unread, and a test still takes
# well under two minutes.
N_EVENTS = 20_000


class Rewound(AssertionError):
    """The group's committed offset went back in the log."""


class Background:
    """``run_pipeline`` in a thread, keeping its statuses, supervisor and outcome."""

    def __init__(self, config: PipelineConfig) -> None:
        self.stop = threading.Event()
        self.statuses: list[dict[str, Any]] = []
        self.supervisor: Any = None
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self._config = config
        self._thread = threading.Thread(target=self._run, args=(config,), daemon=True,
                                        name="pipeline")
        self._thread.start()

    def _run(self, config: PipelineConfig) -> None:
        try:
            self.summary = run_pipeline(config, stop=self.stop,
                                        on_progress=self.statuses.append,
                                        on_started=self._started)
        except BaseException as e:  # re-raised in the test's thread by result()
            self.error = e
        finally:
            self.ended_at = time.time()

    def _started(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    @property
    def last(self) -> dict[str, Any]:
        return self.statuses[-1] if self.statuses else {}

    @property
    def written(self) -> int:
        return self.last.get("predictions_written", 0)

    def running(self) -> bool:
        return self._thread.is_alive()

    def until(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait for ``cond`` while the run lasts; a timeout names where the run stood."""
        try:
            wait_for(lambda: cond() or not self.running(), timeout_s, what)
        except AssertionError as e:
            last = {k: self.last.get(k) for k in ("events", "feedback", "predictions_written",
                                                  "wall_s", "positions")}
            raise AssertionError(f"{e}; last status: {last}; the broker has the group at "
                                 f"{_committed(self._config)}; supervision: "
                                 f"{self.last.get('supervision')}") from None
        assert self.running(), (f"the run ended while waiting for {what}: {self.error!r}; "
                                f"summary: {self.brief()}")

    def brief(self) -> dict[str, Any]:
        """What a failure message needs of the summary (or of the last status)."""
        source = self.summary or self.last
        return {k: source.get(k) for k in ("events", "feedback", "predictions_written",
                                           "stopped_early", "wall_s", "supervision")}

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def result(self, timeout_s: float) -> dict[str, Any]:
        self.join(timeout_s)
        if self.running():
            raise AssertionError(f"the pipeline did not finish within {timeout_s}s "
                                 f"(last status: {self.last})")
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


@pytest.fixture
def background() -> Iterator[Callable[[PipelineConfig], Background]]:
    """Starts pipelines in the background; stops what a failed test left running, so that
    no run outlives its test (or the session's Ray)."""
    runs: list[Background] = []

    def start(config: PipelineConfig) -> Background:
        runs.append(Background(config))
        return runs[-1]

    yield start
    for run in runs:
        run.stop.set()
    for run in runs:
        run.join(120)


def _admin(config: PipelineConfig, call: Callable[[KafkaAdminClient], Any]) -> Any:
    # A fresh broker creates __consumer_offsets on the first group request and answers
    # CoordinatorNotAvailable meanwhile: retry briefly.
    deadline = time.monotonic() + 30
    while True:
        admin = None
        try:
            admin = KafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers,
                                     client_id="riffle-fault-test")
            return call(admin)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            if admin is not None:
                admin.close()


def _committed(config: PipelineConfig) -> dict[int, int]:
    """The group's committed offset per events partition, as the broker has it."""
    group = config.kafka.group_id
    offsets = _admin(config, lambda a: a.list_group_offsets(group))[group]
    return {tp.partition: om.offset for tp, om in offsets.items()
            if tp.topic == config.kafka.topics.events and om.offset >= 0}


def _events_positions(config: PipelineConfig, positions: dict[str, int]) -> dict[int, int]:
    """``{"topic[p]": offset}`` of a status or summary, for the events topic only."""
    prefix = config.kafka.topics.events + "["
    return {int(k[len(prefix):-1]): v for k, v in positions.items() if k.startswith(prefix)}


def _assignment(config: PipelineConfig, seen: list[Any] | None = None) -> dict[str, list[int]]:
    """Events partitions per member (by client id) of the group as it stands now; ``seen``
    keeps the group's state and members (for a failure message)."""
    group = config.kafka.group_id
    description = _admin(config, lambda a: a.describe_groups([group]))[group]
    out: dict[str, list[int]] = {}
    for member in description["members"]:
        parts = [p for t in (member["member_assignment"] or {}).get("assigned_partitions", [])
                 if t["topic"] == config.kafka.topics.events for p in t["partitions"]]
        out[member["client_id"]] = sorted(parts)
    if seen is not None:
        seen[:] = [description["group_state"], out]
    return out if description["group_state"] == "Stable" else {}


def _produced(config: PipelineConfig, n_events: int, *, seed: int = 7
              ) -> dict[str, tuple[int, int]]:
    """Load ``n_events`` loans; every record_id of the events topic, at (partition, offset)."""
    counts = produce_loans(config, n_events, seed=seed)
    assert counts["events"] == n_events and counts["undecodable"] == 0
    events = read_topic(config.kafka.bootstrap_servers, config.kafka.topics.events)
    return {orjson.loads(m.value)["record_id"]: (m.partition, m.offset) for m in events}


def _predictions(config: PipelineConfig) -> list[dict[str, Any]]:
    return [orjson.loads(m.value)
            for m in read_topic(config.kafka.bootstrap_servers, config.kafka.topics.predictions)]


def _duplicate_dead_letters(config: PipelineConfig) -> list[tuple[int, int]]:
    """(partition, offset) of events an ingest actor read again and dropped as seen."""
    out = []
    for m in read_topic(config.kafka.bootstrap_servers, config.kafka.topics.dead_letters,
                        idle_s=2.0):
        h = {k: v.decode() for k, v in m.headers}
        assert h["__connect.errors.exception.class.name"] == "DuplicateRecord", h
        out.append((int(h["__connect.errors.partition"]), int(h["__connect.errors.offset"])))
    return out


def test_pipeline_broker_outage_resumes_without_loss(
        make_kafka_config: Any, background: Any) -> None:
    config = make_kafka_config(source={"idle_stop_s": IDLE_STOP_S},
                               runtime={"progress_interval_s": 0.2})
    produced = _produced(config, N_EVENTS)
    assert len(produced) == N_EVENTS
    run = background(config)

    run.until(lambda: run.written >= 2_000, 120, "predictions to flow")
    assert run.written < N_EVENTS, \
        f"the stream was done before the outage; raise N_EVENTS ({run.last})"
    status_before = _events_positions(config, run.last["positions"])
    committed_before = _committed(config)
    written_before = run.written
    outage_started = time.monotonic()
    broker_stop()
    try:
        time.sleep(OUTAGE_S)  # the outage itself, not a synchronisation
        assert run.running(), "the pipeline gave up while the broker was down"
    finally:
        broker_start()
    outage_s = time.monotonic() - outage_started
    assert outage_s < IDLE_STOP_S - 10, \
        f"the broker took {outage_s:.0f}s to come back: raise IDLE_STOP_S"

    summary = run.result(timeout_s=180)

    predictions = _predictions(config)
    times = Counter(p["record_id"] for p in predictions)
    assert_same_set(times, produced, "record ids predicted across the outage")
    # A record read again by the actor that had already scored it is dropped as a
    # duplicate; by another actor, predicted again. Both are redeliveries.
    redelivered = [produced[rid] for rid, n in times.items() if n > 1]
    redelivered += _duplicate_dead_letters(config)
    for partition, offset in redelivered:
        assert offset >= committed_before.get(partition, 0), \
            f"events[{partition}]@{offset} was redelivered from before the commit " \
            f"({committed_before}) made before the outage; {len(redelivered)} redelivered; " \
            f"supervision: {summary.get('supervision')}"
    assert not summary["stopped_early"]
    assert summary["scored"] == len(predictions)
    # The audit trail has every record; a record twice only if it was scored twice
    # (redelivered to another ingest actor), never from a replay after a rewind.
    trail = _trail(config)
    assert_same_set(trail, produced, "record ids in the audit trail")
    assert {rid for rid, n in trail.items() if n > 1} <= {
        rid for rid, n in times.items() if n > 1}
    print(f"\noutage: {outage_s:.1f}s with {written_before} of {N_EVENTS} predicted; "
          f"committed before: {committed_before} (status said {status_before}); "
          f"redeliveries: {len(redelivered)} ({sum(n - 1 for n in times.values())} "
          f"predicted twice, {summary['duplicates']} dropped as seen); "
          f"run {summary['wall_s']}s")


def test_pipeline_stop_then_restart_resumes_at_committed_offsets(
        make_kafka_config: Any, background: Any) -> None:
    config = make_kafka_config(runtime={"progress_interval_s": 0.2})
    produced = _produced(config, N_EVENTS)
    assert len(produced) == N_EVENTS

    first = background(config)
    first.until(lambda: first.written >= 2_000, 120, "predictions to flow")
    first.stop.set()
    summary1 = first.result(timeout_s=120)
    assert summary1["stopped_early"]
    assert summary1["events"] < N_EVENTS, "the first run read everything; raise N_EVENTS"
    committed = _committed(config)
    # A clean stop drains: all it read is written and committed, and the summary says so.
    assert committed == _events_positions(config, summary1["positions"])
    assert sum(committed.values()) == summary1["events"] == summary1["scored"]

    summary2 = run_pipeline(config)  # the same group and topics

    assert summary2["events"] == N_EVENTS - summary1["events"], \
        "the second run did not start at the committed offsets"
    predictions = _predictions(config)
    times = Counter(p["record_id"] for p in predictions)
    assert_same_set(times, produced, "record ids predicted across the restart")
    assert len(predictions) == N_EVENTS, \
        f"{len(predictions) - N_EVENTS} records scored twice across a clean restart"
    second = [p for p in predictions if p["scored_at"] > (first.ended_at or 0.0)]
    assert len(second) == summary2["scored"]
    assert all(p["offset"] >= committed.get(p["partition"], 0) for p in second)
    # Both runs' audit trails together: every record exactly once.
    trail = _trail(config)
    assert_same_set(trail, produced, "record ids in the audit trail across the restart")
    assert max(trail.values()) == 1
    print(f"\nrestart: first run {summary1['events']} events in {summary1['wall_s']}s, "
          f"second {summary2['events']} in {summary2['wall_s']}s; committed {committed}")


def _trail(config: PipelineConfig) -> Counter[str]:
    """How often each record is in the committed audit trail."""
    with AuditQuery(config.checkpoint_store_url()) as q:
        return Counter(r[0] for r in q.con.execute("SELECT record_id FROM trail").fetchall())


def _members(config: PipelineConfig, run: Background, n: int) -> dict[str, list[int]]:
    """Once the group is stable with ``n`` members that all own events partitions: who owns what."""
    members: dict[str, list[int]] = {}
    seen: list[Any] = []

    def settled() -> bool:
        nonlocal members
        members = _assignment(config, seen)
        return len(members) == n and all(members.values())

    try:
        run.until(settled, 60, f"the group to settle on {n} members")
    except AssertionError as e:
        raise AssertionError(f"{e}; the group as last seen (state, members): {seen}") from None
    return members


def test_ingest_scale_out_rebalances_without_loss(make_kafka_config: Any, background: Any) -> None:
    # The idle stop covers the time from the scale-out to the second load.
    config = make_kafka_config(ingest={"n_actors": 2}, source={"idle_stop_s": 15.0},
                               runtime={"progress_interval_s": 0.2})
    half = N_EVENTS // 2
    produced = _produced(config, half)
    assert len(produced) == half
    run = background(config)

    run.until(lambda: run.written >= 1_000, 120, "predictions to flow")
    assert run.supervisor is not None
    assert run.written < half, "the first load was done before the scale-out; raise N_EVENTS"
    assert ray.get(run.supervisor.scale_ingest.remote(3)) == 3
    members = _members(config, run, 3)
    assert set(members) == {"ingest-0", "ingest-1", "ingest-2"}, members
    # A second load after the rebalance: every member, the new one too, has records to
    # read however fast the first load went.
    produced = _produced(config, half, seed=8)
    assert len(produced) == N_EVENTS
    run.until(lambda: run.written >= N_EVENTS, 120, "the second load to be predicted")
    assert _assignment(config) == members, "the group rebalanced again during the second load"

    summary = run.result(timeout_s=120)

    predictions = _predictions(config)
    times = Counter(p["record_id"] for p in predictions)
    assert_same_set(times, produced, "record ids predicted across the rebalance")
    assert summary["events"] >= N_EVENTS
    duplicates = sum(n - 1 for n in times.values())
    print(f"\nscale-out: members {members}; {duplicates} predicted twice, "
          f"{summary['duplicates']} dropped as seen; run {summary['wall_s']}s; "
          f"committed at the end {_committed(config)}")


def test_ingest_partition_moved_back_commit_not_rewound(
        make_kafka_config: Any, background: Any) -> None:
    # Endless source: the run ends by stop, after the checks, not by an idle timer.
    config = make_kafka_config(ingest={"n_actors": 2}, source={"idle_stop_s": None},
                               runtime={"progress_interval_s": 0.2})
    quarter = N_EVENTS // 4
    produced = _produced(config, quarter)
    run = background(config)
    run.until(lambda: sum(_committed(config).values()) == quarter, 120,
              "the first load to be committed")
    before = _committed(config)
    assert set(before) == {0, 1, 2, 3}

    # Partition 3 goes from ingest-1 to the new ingest-2, which reads a second load...
    assert ray.get(run.supervisor.scale_ingest.remote(3)) == 3
    assert 3 in _members(config, run, 3)["ingest-2"]
    produced = _produced(config, quarter, seed=8)
    ends = dict(Counter(p for p, _ in produced.values()))
    run.until(lambda: _committed(config) == ends, 120, "the second load to be committed")
    # ...and comes back to ingest-1 when ingest-2 is retired (drained, committed).
    assert ray.get(run.supervisor.scale_ingest.remote(2)) == 2
    assert 3 in _members(config, run, 2)["ingest-1"]
    # Nothing new to read: the group's offsets must stay at the end of the log while
    # ingest-1 commits, as it does every COMMIT_INTERVAL_S.
    deadline = time.monotonic() + 6 * COMMIT_INTERVAL_S
    try:
        while time.monotonic() < deadline:
            committed = _committed(config)
            if committed != ends:
                raise Rewound(f"committed {committed}, log ends {ends}, "
                              f"first load ended at {before}")
    finally:
        run.stop.set()
        run.result(timeout_s=120)
