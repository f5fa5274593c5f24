"""The checkpoint store and the state the actors put in it (no Ray)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from river.datasets import synth

from pipelines.checkpoint import (
    CheckpointError,
    CheckpointSchedule,
    CheckpointStore,
    DamagedCheckpoint,
    Manifest,
    checkpoint_id,
    dumps_state,
    loads_state,
    resume_point,
)
from pipelines.config import CheckpointConfig, PipelineConfig, ScoringConfig
from pipelines.errors import RiffleError
from pipelines.faults import Drills, parse_drill
from pipelines.ingest import IngestCore
from pipelines.labels import LabelBuffer
from pipelines.protocol import Batch, Event, Feedback, SourceMessage
from pipelines.scoring import ScorerCore


def commit(store: CheckpointStore, seq: int, parts: dict[str, bytes]) -> Manifest:
    ckpt = checkpoint_id(seq)
    written = {name: store.write_part(ckpt, name, blob) for name, blob in parts.items()}
    return store.commit(Manifest(id=ckpt, seq=seq, created_at=float(seq), pipeline="p",
                                 config_hash="h", positions={"loans[0]": seq * 10},
                                 parts=written))


def test_a_checkpoint_without_its_manifest_is_never_used(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    commit(store, 1, {"scorer-0": b"one"})
    store.write_part(checkpoint_id(2), "scorer-0", b"two, but the manifest never came")
    latest = store.latest()
    assert latest is not None and latest.id == "ckpt-000001"
    assert store.read_part(latest, "scorer-0") == b"one"
    assert store.next_seq() == 3  # numbers are never reused, even of a failed checkpoint


def test_a_part_that_does_not_match_its_hash_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    manifest = commit(store, 1, {"scorer-0": b"model bytes"})
    (tmp_path / "ckpt-000001" / "scorer-0.pkl").write_bytes(b"model bytez")
    with pytest.raises(CheckpointError, match="does not match its hash"):
        store.read_part(manifest, "scorer-0")


def test_commit_refuses_a_manifest_whose_part_is_incomplete(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    part = store.write_part("ckpt-000001", "scorer-0", b"0123456789")
    (tmp_path / "ckpt-000001" / "scorer-0.pkl").write_bytes(b"01234")  # cut short
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        store.commit(Manifest(id="ckpt-000001", seq=1, created_at=0.0, pipeline="p",
                              config_hash="h", positions={}, parts={"scorer-0": part}))
    assert store.latest() is None


def _flip_one_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def test_resume_point_is_the_newest_checkpoint_when_every_part_is_intact(tmp_path: Path
                                                                         ) -> None:
    store = CheckpointStore(str(tmp_path))
    assert resume_point(store) is None  # nothing committed: the caller says so
    for seq in (1, 2):
        commit(store, seq, {"ingest-0": b"dedupe", "scorer-0": b"model"})
    point = resume_point(store)
    assert point is not None and point.manifest.id == "ckpt-000002" and point.damaged == []


def test_resume_point_skips_a_checkpoint_with_one_changed_byte_naming_the_part(
        tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    for seq in (1, 2, 3):
        commit(store, seq, {"ingest-0": b"dedupe memory", "scorer-0": b"model bytes"})
    _flip_one_byte(tmp_path / "ckpt-000003" / "ingest-0.pkl")
    (tmp_path / "ckpt-000002" / "scorer-0.pkl").unlink()
    point = resume_point(store)
    assert point is not None and point.manifest.id == "ckpt-000001"
    assert [(d.checkpoint, d.part) for d in point.damaged] == [
        ("ckpt-000003", "ingest-0"), ("ckpt-000002", "scorer-0")]
    assert "does not match its SHA-256" in point.damaged[0].reason
    assert point.damaged[1].reason == "is missing"
    assert store.damage(point.manifest) == []


def test_resume_point_refuses_in_one_line_when_no_checkpoint_is_intact(tmp_path: Path
                                                                       ) -> None:
    store = CheckpointStore(str(tmp_path))
    for seq in (1, 2):
        commit(store, seq, {"ingest-0": b"dedupe memory", "scorer-0": b"model bytes"})
        _flip_one_byte(tmp_path / checkpoint_id(seq) / "scorer-0.pkl")
    with pytest.raises(DamagedCheckpoint) as raised:
        resume_point(store)
    message = str(raised.value)
    assert isinstance(raised.value, RiffleError) and "\n" not in message
    assert "checkpoint ckpt-000002: part scorer-0 (ckpt-000002/scorer-0.pkl)" in message
    assert "1 older checkpoint damaged too" in message


def test_schedule_by_time_waits_for_moved_positions() -> None:
    s = CheckpointSchedule(CheckpointConfig(interval_s=2.0), now=0.0)
    assert not s.wants_progress(1.9)  # no count to look at before the interval
    assert s.wants_progress(2.0) and not s.due(2.0, events=0, moved=False)
    assert not s.wants_progress(3.0)  # an idle pipeline: the next look is an interval on
    assert s.wants_progress(4.0) and s.due(4.0, events=10, moved=True)
    s.taken(4.5, events_read=None)  # abandoned: time counts from its end all the same
    assert not s.wants_progress(6.0) and s.wants_progress(6.5)


def test_schedule_by_events_counts_from_the_last_committed_checkpoint() -> None:
    s = CheckpointSchedule(CheckpointConfig(interval_s=None, every_events=100), now=0.0,
                           events_read=1_000)  # resumed from a checkpoint at 1,000 events
    assert s.wants_progress(0.0) and not s.due(0.0, events=1_099, moved=True)
    assert not s.wants_progress(0.4)  # polled at most every 0.5 s
    assert s.wants_progress(0.5) and s.due(0.5, events=1_100, moved=True)
    s.taken(0.6, events_read=1_150)
    assert s.wants_progress(1.0) and not s.due(1.0, events=1_249, moved=True)
    assert s.due(1.5, events=1_250, moved=True)
    assert not s.due(1e9, events=1_200, moved=True)  # no interval: never on time alone


def test_prune_keeps_the_newest_and_drops_abandoned_folders(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    for seq in (1, 2):
        commit(store, seq, {"s": b"x"})
    store.write_part(checkpoint_id(3), "s", b"abandoned")
    for seq in (4, 5):
        commit(store, seq, {"s": b"x"})
    store.write_part(checkpoint_id(6), "s", b"in progress: newer than the newest committed")
    assert store.prune(keep=2) == ["ckpt-000001", "ckpt-000002", "ckpt-000003"]
    assert [m.id for m in store.manifests()] == ["ckpt-000004", "ckpt-000005"]
    assert (tmp_path / "ckpt-000006").exists()


def test_the_store_takes_a_filesystem_url(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/nested")
    commit(store, 1, {"s": b"x"})
    assert CheckpointStore(str(tmp_path / "nested")).latest() is not None


def _stream(n: int, seed: int = 5) -> list[tuple[dict[str, float], bool]]:
    return list(itertools.islice(synth.Agrawal(seed=seed), n))


def _batches(rows: list[tuple[dict[str, float], bool]], start: int, size: int
             ) -> list[Batch]:
    """Each event, then the label of the event 3 before it (labels come later)."""
    out, items = [], []
    for i in range(start, start + len(rows)):
        x, _ = rows[i - start]
        items.append(Event(f"r{i}", f"k{i % 7}", 0.0, x, 0, i, 0.0))
        if i - 3 >= start:
            items.append(Feedback(f"r{i - 3}", f"k{(i - 3) % 7}", rows[i - 3 - start][1], 0.0,
                                  0, i, 0.0))
        if len(items) >= size:
            out.append(Batch(len(out), items))
            items = []
    if items:
        out.append(Batch(len(out), items))
    return out


def test_a_scorer_restored_from_its_snapshot_continues_exactly() -> None:
    """Snapshot mid-stream (with labels pending), restore in a fresh core: the rest of
    the stream gives the same predictions, model and metrics as without the break."""
    rows = _stream(600)
    batches = _batches(rows, 0, 50)
    whole = ScorerCore(ScoringConfig(), name="scorer-0")
    broken = ScorerCore(ScoringConfig(), name="scorer-0")
    for b in batches[:5]:
        broken.process(b)
    blob = dumps_state(broken.snapshot())
    assert broken.labels.n_pending == 3  # the snapshot holds records awaiting labels
    resumed = ScorerCore(ScoringConfig(), name="scorer-0")
    resumed.restore(loads_state(blob))
    got, want = [], []
    for i, b in enumerate(batches):
        out = whole.process(b)
        if i >= 5:
            want += [line.split(b'"scored_at"')[0] for line in out.predictions]
            got += [line.split(b'"scored_at"')[0]
                    for line in resumed.process(b).predictions]
    assert got == want
    lr_a, lr_b = whole.model["LogisticRegression"], resumed.model["LogisticRegression"]
    assert dict(lr_a.weights) == dict(lr_b.weights) and lr_a.intercept == lr_b.intercept
    assert whole.stats()["metrics"] == resumed.stats()["metrics"]
    assert whole.stats()["learned"] == resumed.stats()["learned"] == 597


def test_label_buffer_carries_ages_not_clock_readings() -> None:
    """Restored elsewhere (another process's monotonic clock), what was pending keeps its
    age, so it expires when it would have."""
    now = [1000.0]
    buf: LabelBuffer[str] = LabelBuffer(max_pending=10, ttl_s=60.0, clock=lambda: now[0])
    buf.add("old", "x")
    now[0] = 1050.0
    buf.add("new", "y")
    restored: LabelBuffer[str] = loads_state(dumps_state(buf))
    here = time.monotonic()
    ages = {rid: here - t for rid, (t, _) in restored._pending.items()}
    assert ages["old"] == pytest.approx(50.0, abs=1.0)
    assert ages["new"] == pytest.approx(0.0, abs=1.0)
    assert restored.match("new", True) == "y"


def test_ingest_core_restores_its_dedupe_memory() -> None:
    cfg = PipelineConfig.model_validate({"name": "t", "source": {"kind": "synthetic"},
                                         "ingest": {"dedupe_window": 3}})
    core = IngestCore(cfg, task="binary")

    def msg(rid: str) -> SourceMessage:
        return SourceMessage("t", 0, 0, "event", {"record_id": rid, "key": "k",
                                                   "features": {"x": 1.0}}, b"", None, 0.0)

    core.route([msg(r) for r in ("a", "b", "c", "d")])
    restored = IngestCore(cfg, task="binary")
    restored.restore(loads_state(dumps_state(core.snapshot())))
    _, dead = restored.route([msg("b"), msg("a")])  # b is remembered, a fell out
    assert [d.record_id for d in dead] == ["b"]
    assert restored.counts["events"] == 6


def test_fault_drills_parse_or_explain() -> None:
    assert parse_drill("scorer-0@checkpoint#2") == ("scorer-0", "checkpoint", 2)
    with pytest.raises(ValueError, match="expected <actor>@<point>"):
        parse_drill("scorer-0@lunch")
    assert not Drills(["scorer-0@checkpoint#2"], "scorer-0").armed("start")
    with pytest.raises(ValueError, match="fault drill"):
        PipelineConfig.model_validate({"name": "t", "source": {"kind": "synthetic"},
                                       "runtime": {"fault_drills": ["nope"]}})
