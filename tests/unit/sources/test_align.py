"""TopicAligner: timestamp order within a partition, and how long one side waits for the
other, by what is known of the other side's lag on the broker."""

from __future__ import annotations

from pipelines.protocol import SourceMessage
from pipelines.sources.align import Lag, TopicAligner


def _msg(kind: str, ts: float, *, partition: int = 0, offset: int | None = None
         ) -> SourceMessage:
    return SourceMessage(kind, partition, int(ts) if offset is None else offset, kind, {}, b"",
                         None, ts)


def _lag(n: int | None, calls: list[tuple[str, int]] | None = None) -> Lag:
    """A lag that is always ``n``, recording who asked."""
    def lag(kind: str, partition: int) -> int | None:
        if calls is not None:
            calls.append((kind, partition))
        return n
    return lag


def _kinds(out: list[SourceMessage]) -> list[tuple[str, float]]:
    return [(m.kind, m.timestamp) for m in out]


def test_aligner_both_sides_merged_by_timestamp_event_first_on_a_tie() -> None:
    a = TopicAligner(max_wait_s=1.0)
    a.add([_msg("feedback", 2.0), _msg("feedback", 3.0), _msg("feedback", 9.0)])
    a.add([_msg("event", 1.0), _msg("event", 3.0), _msg("event", 5.0)])

    out = a.release(_lag(7), now=0.0)

    assert _kinds(out) == [("event", 1.0), ("feedback", 2.0), ("event", 3.0),
                           ("feedback", 3.0), ("event", 5.0)]
    assert a.n_held == 1  # feedback@9: events may still come with older timestamps


def test_aligner_known_lag_holds_past_max_wait() -> None:
    a = TopicAligner(max_wait_s=2.0)
    a.add([_msg("event", 10.0), _msg("event", 11.0)])

    for now in (0.0, 2.5, 60.0, 3600.0):
        assert a.release(_lag(5), now=now) == [], f"released at {now}s with feedback lag 5"

    a.add([_msg("feedback", 10.5)])  # the lagging side arrives: order is kept
    assert _kinds(a.release(_lag(4), now=3600.0)) == [("event", 10.0), ("feedback", 10.5)]
    assert a.held("event", 0) == 1


def test_aligner_unknown_lag_releases_after_max_wait() -> None:
    a = TopicAligner(max_wait_s=2.0)
    a.add([_msg("feedback", 5.0)])

    assert a.release(_lag(None), now=100.0) == []
    assert a.release(_lag(None), now=101.9) == []
    assert _kinds(a.release(_lag(None), now=102.0)) == [("feedback", 5.0)]
    # Still unknown: having waited once, the side keeps going.
    a.add([_msg("feedback", 6.0)])
    assert _kinds(a.release(_lag(None), now=102.1)) == [("feedback", 6.0)]


def test_aligner_caught_up_releases_at_once() -> None:
    a = TopicAligner(max_wait_s=60.0)
    a.add([_msg("event", 1.0), _msg("event", 2.0)])

    assert _kinds(a.release(_lag(0), now=0.0)) == [("event", 1.0), ("event", 2.0)]
    assert a.n_held == 0


def test_aligner_wait_on_unknown_lag_restarts_after_a_known_lag() -> None:
    a = TopicAligner(max_wait_s=2.0)
    a.add([_msg("event", 1.0)])
    assert a.release(_lag(None), now=0.0) == []
    assert a.release(_lag(3), now=5.0) == []     # known: the unknown wait is over
    assert a.release(_lag(None), now=6.0) == []  # unknown again: a fresh max_wait_s
    assert _kinds(a.release(_lag(None), now=8.0)) == [("event", 1.0)]


def test_aligner_lag_asked_about_the_empty_side_once_per_partition() -> None:
    a = TopicAligner(max_wait_s=1.0)
    a.add([_msg("event", float(i)) for i in range(100)])
    a.add([_msg("feedback", 0.5, partition=3)])
    calls: list[tuple[str, int]] = []

    out = a.release(_lag(0, calls), now=0.0)

    assert len(out) == 101
    assert calls == [("feedback", 0), ("event", 3)]


def test_aligner_partitions_wait_independently() -> None:
    a = TopicAligner(max_wait_s=1.0)
    a.add([_msg("event", 1.0, partition=0), _msg("event", 1.0, partition=1)])

    out = a.release(lambda kind, p: 0 if p == 1 else 5, now=0.0)

    assert [(m.partition, m.kind) for m in out] == [(1, "event")]
    assert a.held("event", 0) == 1


def test_aligner_drop_returns_the_first_offset_not_handed_out() -> None:
    a = TopicAligner(max_wait_s=1.0)
    a.add([_msg("event", 1.0, offset=40), _msg("event", 3.0, offset=41),
           _msg("event", 4.0, offset=42)])
    a.add([_msg("feedback", 2.0, offset=7)])
    out = a.release(_lag(9), now=0.0)
    assert [(m.kind, m.offset) for m in out] == [("event", 40), ("feedback", 7)]

    first = a.drop({("event", 0), ("feedback", 0), ("event", 5)})

    assert first == {("event", 0): 41}  # nothing held of the feedback side or partition 5
    assert a.n_held == 0


def test_aligner_drop_forgets_the_unknown_lag_wait_of_the_partition() -> None:
    a = TopicAligner(max_wait_s=2.0)
    a.add([_msg("event", 1.0)])
    assert a.release(_lag(None), now=0.0) == []
    a.drop({("event", 0), ("feedback", 0)})

    # Assigned again later: the wait starts over instead of counting the old one.
    a.add([_msg("event", 2.0)])
    assert a.release(_lag(None), now=10.0) == []
    assert len(a.release(_lag(None), now=12.0)) == 1
