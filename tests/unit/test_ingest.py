"""The ingest core's bookkeeping: which positions may be committed, and batch cutting."""

from __future__ import annotations

from pipelines.ingest import Batcher, PositionTracker


def test_position_tracker_commits_only_after_every_older_unit_is_acked() -> None:
    t = PositionTracker()
    t.chunk_read(0, {0: 5})
    t.chunk_read(1, {0: 9})
    t.unit_sent("u0", 0)
    assert t.committable(oldest_unsent=1) is None  # u0 not written yet
    t.unit_acked("u0")
    assert t.committable(oldest_unsent=1) == {0: 5}  # chunk 1 still in a buffer
    assert t.committable(oldest_unsent=None) == {0: 9}
    assert t.committed == {0: 9}


def test_position_tracker_forgets_revoked_partitions_never_commits_them_again() -> None:
    t = PositionTracker()
    t.chunk_read(0, {"ev[0]": 100, "ev[1]": 50})
    t.unit_sent("u", 0)
    t.unit_acked("u")
    assert t.committable(None) == {"ev[0]": 100, "ev[1]": 50}
    t.forget({"ev[1]"})  # ev[1] went to another member, which moves it on to 80...
    t.chunk_read(1, {"ev[0]": 120})
    t.committable(None)
    # ...so if it comes back, 50 must not be committed over 80.
    assert t.committed == {"ev[0]": 120}


def test_batcher_never_cuts_over_batch_size_and_names_oldest_chunk() -> None:
    b = Batcher(1, batch_size=4, linger_s=1.0)
    b.add(0, [list(range(3))], now=0.0)
    b.add(1, [list(range(3, 10))], now=0.0)
    cut = b.cut(now=0.0)
    assert [(items, oldest) for _, items, oldest in cut] == [([0, 1, 2, 3], 0),
                                                             ([4, 5, 6, 7], 1)]
    assert len(b) == 2 and b.oldest_chunk() == 1
    assert b.cut(now=0.5) == []  # the rest lingers from its own cut
    assert b.cut(now=1.5) == [(0, [8, 9], 1)] and b.oldest_chunk() is None
