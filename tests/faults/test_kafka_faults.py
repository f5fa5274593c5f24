"""Faults on the real broker and real Ray: a broker outage, a stop and restart, a scale-out.

Each test loads a stream into topics of its own, starts the pipeline, hits it with the
fault while it is still busy, and then reads the predictions topic back: every event
must be predicted (at-least-once), and whatever was predicted twice must come from
after the offsets the group had committed when the fault hit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import ray
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from pipelines.config import PipelineConfig
from pipelines.runner import run_pipeline
from tests.kafka_broker import broker_start, broker_stop
from tests.kafka_helpers import produce_loans, read_topic, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ray_session")]

OUTAGE_S = 10.0
# Far above the ~1-2 k events/s the pipeline manages on a loaded 2-core box, and below
# what would make a test take minutes: the fault must land while events are unread.
N_EVENTS = 20_000


class Background:
    """``run_pipeline`` in a thread, keeping its statuses, supervisor and outcome."""

    def __init__(self, config: PipelineConfig) -> None:
        self.stop = threading.Event()
        self.statuses: list[dict[str, Any]] = []
        self.supervisor: Any = None
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
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

    def result(self, timeout_s: float) -> dict[str, Any]:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # Do not leave a pipeline reading into the next test.
            self.stop.set()
            self._thread.join(60)
            raise AssertionError(f"the pipeline did not finish within {timeout_s}s "
                                 f"(last status: {self.last})")
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


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


def _assignment(config: PipelineConfig) -> dict[str, list[int]]:
    """Events partitions per member (by client id) of the group as it stands now."""
    group = config.kafka.group_id
    description = _admin(config, lambda a: a.describe_groups([group]))[group]
    if description["group_state"] != "Stable":
        return {}
    out: dict[str, list[int]] = {}
    for member in description["members"]:
        parts = [p for t in (member["member_assignment"] or {}).get("assigned_partitions", [])
                 if t["topic"] == config.kafka.topics.events for p in t["partitions"]]
        out[member["client_id"]] = sorted(parts)
    return out


def _produced(config: PipelineConfig, n_events: int) -> dict[str, tuple[int, int]]:
    """Load ``n_events`` loans; their record_ids with (partition, offset), read back."""
    counts = produce_loans(config, n_events)
    assert counts["events"] == n_events and counts["undecodable"] == 0
    events = read_topic(config.kafka.bootstrap_servers, config.kafka.topics.events)
    out = {orjson.loads(m.value)["record_id"]: (m.partition, m.offset) for m in events}
    assert len(out) == n_events
    return out


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


def test_pipeline_broker_outage_resumes_without_loss(make_kafka_config: Any) -> None:
    # The source's idle stop must outlast the outage, or the run would end during it.
    config = make_kafka_config(source={"idle_stop_s": 2.5 * OUTAGE_S},
                               runtime={"progress_interval_s": 0.2})
    produced = _produced(config, N_EVENTS)
    run = Background(config)

    wait_for(lambda: run.written >= 2_000 or not run.running(), 120, "predictions to flow")
    assert run.running() and run.written < N_EVENTS, \
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

    summary = run.result(timeout_s=180)

    predictions = _predictions(config)
    times = Counter(p["record_id"] for p in predictions)
    assert set(times) == set(produced), "events lost (or invented) across the outage"
    # A record read again by the actor that had already scored it is dropped as a
    # duplicate; by another actor, predicted again. Both are redeliveries.
    redelivered = [produced[rid] for rid, n in times.items() if n > 1]
    redelivered += _duplicate_dead_letters(config)
    for partition, offset in redelivered:
        assert offset >= committed_before.get(partition, 0), \
            f"events[{partition}]@{offset} was redelivered from before the commit " \
            f"({committed_before}) made before the outage"
    assert not summary["stopped_early"]
    assert summary["scored"] == len(predictions)
    print(f"\noutage: {outage_s:.1f}s with {written_before} of {N_EVENTS} predicted; "
          f"committed before: {committed_before} (status said {status_before}); "
          f"redeliveries: {len(redelivered)} ({sum(n - 1 for n in times.values())} "
          f"predicted twice, {summary['duplicates']} dropped as seen); "
          f"run {summary['wall_s']}s")


def test_pipeline_stop_then_restart_resumes_at_committed_offsets(
        make_kafka_config: Any) -> None:
    config = make_kafka_config(runtime={"progress_interval_s": 0.2})
    produced = _produced(config, N_EVENTS)

    first = Background(config)
    wait_for(lambda: first.written >= 2_000 or not first.running(), 120,
             "predictions to flow")
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
    assert set(times) == set(produced)
    assert len(predictions) == N_EVENTS, \
        f"{len(predictions) - N_EVENTS} records scored twice across a clean restart"
    second = [p for p in predictions if p["scored_at"] > (first.ended_at or 0.0)]
    assert len(second) == summary2["scored"]
    assert all(p["offset"] >= committed.get(p["partition"], 0) for p in second)
    print(f"\nrestart: first run {summary1['events']} events in {summary1['wall_s']}s, "
          f"second {summary2['events']} in {summary2['wall_s']}s; committed {committed}")


def test_ingest_scale_out_rebalances_without_loss(make_kafka_config: Any) -> None:
    config = make_kafka_config(ingest={"n_actors": 2}, runtime={"progress_interval_s": 0.2})
    produced = _produced(config, N_EVENTS)
    run = Background(config)

    wait_for(lambda: run.written >= 1_000 or not run.running(), 120, "predictions to flow")
    assert run.running() and run.supervisor is not None
    assert ray.get(run.supervisor.scale_ingest.remote(3)) == 3
    seen: dict[str, list[int]] = {}

    def three_members() -> bool:
        nonlocal seen
        seen = _assignment(config)
        return len(seen) == 3 and all(seen.values())

    wait_for(lambda: three_members() or not run.running(), 60,
             "the group to rebalance onto three members")
    assert set(seen) == {"ingest-0", "ingest-1", "ingest-2"}, seen
    # The new member got partitions with records still unread: it took part.
    committed = _committed(config)
    ends = Counter(p for p, _ in produced.values())
    assert any(committed.get(p, 0) < ends[p] for p in seen["ingest-2"]), \
        f"the stream was done before the rebalance; raise N_EVENTS ({committed}, {seen})"

    summary = run.result(timeout_s=180)

    predictions = _predictions(config)
    times = Counter(p["record_id"] for p in predictions)
    assert set(times) == set(produced), "events lost in the rebalance"
    assert summary["events"] >= N_EVENTS
    final = _committed(config)
    assert final == dict(ends), "the group did not commit every event"
    duplicates = sum(n - 1 for n in times.values())
    print(f"\nscale-out: members {seen}; {duplicates} predicted twice, "
          f"{summary['duplicates']} dropped as seen; run {summary['wall_s']}s")
