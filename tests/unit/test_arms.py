"""Arms in a scorer: key routing, shadow outputs, hot swaps and exact rollback (no Ray)."""

from __future__ import annotations

import pickle
from typing import Any

import orjson
from river.datasets import synth

from pipelines.config import ModelSpec, ScoringConfig, StepSpec
from pipelines.lifecycle import plan
from pipelines.models import build_model
from pipelines.protocol import Batch, Command, Deployment, Event, Feedback
from pipelines.scoring import ScorerCore


def _stream(n: int, *, seed: int = 3, delay: int = 20, n_keys: int = 400) -> list[Any]:
    """Events of Agrawal with each label ``delay`` events later, as one partition."""
    items: list[Any] = []
    pending: list[tuple[str, bool]] = []
    for i, (x, y) in enumerate(synth.Agrawal(seed=seed).take(n)):
        rid = f"r{i}"
        items.append(Event(rid, f"k{i % n_keys}", 0.0, x, 0, i, 0.0))
        pending.append((rid, y))
        if len(pending) > delay:
            done, label = pending.pop(0)
            items.append(Feedback(done, "k", label, 0.0, 0, i, 0.0))
    return items


def _run(core: ScorerCore, items: list[Any]) -> tuple[list[dict[str, Any]], list[bytes]]:
    preds: list[dict[str, Any]] = []
    shadow: list[bytes] = []
    for start in range(0, len(items), 250):
        out = core.process(Batch(start, items[start:start + 250]))
        preds += [orjson.loads(p) for p in out.predictions]
        shadow += out.shadow
    return preds, shadow


def _candidate() -> Any:
    return build_model(ModelSpec(steps=[
        StepSpec(name="preprocessing.StandardScaler"),
        StepSpec(name="linear_model.LogisticRegression",
                 params={"optimizer": {"name": "optim.SGD", "params": {"lr": 0.3}}})]))


def _cmd(op: str, **kw: Any) -> Command:
    return Command(op=op, pipeline="p", actor="test", **kw)  # type: ignore[arg-type]


def test_scorer_canary_share_within_one_point_over_100k_keys_and_sticky() -> None:
    core = ScorerCore(ScoringConfig(), name="scorer-0")
    d = plan(core.deployment, _cmd("deploy", version="p/c", mode="canary", share=0.2))
    core.apply(d, {"p/c": _candidate()})
    x = {"salary": 1.0, "age": 30.0}
    events = [Event(f"r{i}", f"key-{i}", 0.0, x, 0, i, 0.0) for i in range(100_000)]
    preds, _ = _run(core, events)
    arm_of = {p["key"]: p["arm"] for p in preds}
    share = sum(a == "candidate" for a in arm_of.values()) / len(arm_of)
    assert abs(share - 0.2) <= 0.01, share
    # The same keys again, in another scorer process's core: every key in the same arm.
    other = ScorerCore(ScoringConfig(), name="scorer-1")
    other.apply(d, {"p/c": _candidate()})
    again, _ = _run(other, [e._replace(record_id=e.record_id + "b") for e in events[:20_000]])
    assert all(arm_of[p["key"]] == p["arm"] for p in again)
    assert {p["model_version"] for p in preds if p["arm"] == "candidate"} == {"p/c"}


def test_scorer_shadow_outputs_never_reach_the_predictions() -> None:
    core = ScorerCore(ScoringConfig(), name="scorer-0")
    core.apply(plan(core.deployment, _cmd("deploy", version="p/c", mode="shadow")),
               {"p/c": _candidate()})
    items = _stream(3000)
    preds, shadow = _run(core, items)
    assert len(preds) == 3000 and {p["arm"] for p in preds} == {"live"}
    assert {p["model_version"] for p in preds} == {"v0"}
    dark = [orjson.loads(s) for s in shadow]
    assert [s["record_id"] for s in dark] == [p["record_id"] for p in preds]
    assert {s["arm"] for s in dark} == {"candidate"}
    arms = {a["name"]: a for a in core.stats()["arms"]}
    # Both evaluated on the same labels; the paired differences are counted.
    assert arms["live"]["labeled"] == arms["candidate"]["labeled"] == 3000 - 20
    assert arms["candidate"]["paired"][0] == 3000 - 20
    assert arms["candidate"]["scored"] == 3000


def test_scorer_rollback_restores_the_previous_versions_predictions_exactly() -> None:
    items = _stream(9000)
    thirds = [items[: len(items) // 3], items[len(items) // 3: 2 * len(items) // 3],
              items[2 * len(items) // 3:]]
    never = ScorerCore(ScoringConfig(), name="scorer-0")
    swapped = ScorerCore(ScoringConfig(), name="scorer-0")
    _run(never, thirds[0])
    _run(swapped, thirds[0])
    # Hot swap to a candidate: the live version is kept warm, learning, for rollback.
    d = plan(swapped.deployment, _cmd("deploy", version="p/c", mode="live"))
    swapped.apply(d, {"p/c": _candidate()})
    mid_never, _ = _run(never, thirds[1])
    mid_swapped, _ = _run(swapped, thirds[1])
    assert {p["model_version"] for p in mid_swapped} == {"p/c"}
    assert [p["score"] for p in mid_swapped] != [p["score"] for p in mid_never]
    swapped.apply(plan(swapped.deployment, _cmd("rollback")), {})
    end_never, _ = _run(never, thirds[2])
    end_swapped, _ = _run(swapped, thirds[2])
    assert {p["model_version"] for p in end_swapped} == {"v0"}
    assert [p["score"] for p in end_swapped] == [p["score"] for p in end_never]
    assert pickle.dumps(swapped.model) == pickle.dumps(never.model)


def test_scorer_arms_survive_a_snapshot_and_restore() -> None:
    core = ScorerCore(ScoringConfig(), name="scorer-0")
    core.apply(plan(core.deployment, _cmd("deploy", version="p/c", mode="canary", share=0.5)),
               {"p/c": _candidate()})
    items = _stream(4000)
    _run(core, items[:3000])
    restored = ScorerCore(ScoringConfig(), name="scorer-0")
    restored.restore(pickle.loads(pickle.dumps(core.snapshot())))
    assert restored.deployment == core.deployment
    a, _ = _run(core, items[3000:])
    b, _ = _run(restored, items[3000:])
    assert [(p["arm"], p["score"]) for p in a] == [(p["arm"], p["score"]) for p in b]


def test_scorer_apply_refuses_a_model_of_another_task() -> None:
    from river import linear_model

    core = ScorerCore(ScoringConfig(), name="scorer-0")
    d = plan(core.deployment, _cmd("deploy", version="p/reg", mode="shadow"))
    try:
        core.apply(d, {"p/reg": linear_model.LinearRegression()})
    except ValueError as e:
        assert "regression" in str(e)
    else:
        raise AssertionError("a regressor was deployed beside a classifier")
    assert core.deployment == Deployment.single("v0")
