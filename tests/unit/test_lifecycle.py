"""The control path's core: planning deployments, and checking commands against a registry."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from river import linear_model

from pipelines.lifecycle import Lifecycle, LifecycleError, plan
from pipelines.protocol import Applied, Command, Deployment
from pipelines.registry import Registry


def _cmd(op: str, **kw: Any) -> Command:
    return Command(op=op, pipeline="p", actor="ann", **kw)  # type: ignore[arg-type]


def test_plan_ab_weights_normalised_and_set_traffic_reweighs() -> None:
    d = plan(Deployment.single("p/v0"), _cmd("deploy", version="p/b", mode="ab",
                                            weights={"live": 2.0, "p/b": 1.0, "p/c": 1.0}))
    assert [(a.name, a.version, a.role, a.weight) for a in d.arms] == [
        ("live", "p/v0", "live", 0.5), ("arm-b", "p/b", "ab", 0.25), ("arm-c", "p/c", "ab", 0.25)]
    d2 = plan(d, _cmd("set_traffic", weights={"live": 1.0, "p/b": 3.0, "p/c": 0.0001}))
    assert [round(a.weight, 3) for a in d2.arms] == [0.25, 0.75, 0.0]
    with pytest.raises(LifecycleError, match="not deployed"):
        plan(d, _cmd("set_traffic", weights={"p/zzz": 1.0}))


def test_plan_canary_share_retire_and_refusals() -> None:
    live = Deployment.single("p/v0")
    canary = plan(live, _cmd("deploy", version="p/c", mode="canary", share=0.1))
    assert [a.weight for a in plan(canary, _cmd("set_traffic", share=0.4)).arms] == [0.6, 0.4]
    assert plan(canary, _cmd("retire", version="p/c")) == live
    with pytest.raises(LifecycleError, match="is live"):
        plan(canary, _cmd("retire", version="p/v0"))
    with pytest.raises(LifecycleError, match="already live"):
        plan(live, _cmd("deploy", version="p/v0"))
    with pytest.raises(LifecycleError, match="0 candidates"):
        plan(live, _cmd("promote"))
    with pytest.raises(LifecycleError, match="not deployed as a candidate"):
        plan(canary, _cmd("promote", version="p/other"))
    with pytest.raises(LifecycleError, match="share is for a canary"):
        plan(live, _cmd("set_traffic", share=0.2))
    promoted = plan(canary, _cmd("promote"))
    assert promoted.arms[0].version == "p/c" and promoted.previous == "p/v0"
    # A retired previous version is no longer kept warm.
    assert plan(promoted, _cmd("retire", version="p/v0")).previous is None


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    model = linear_model.LogisticRegression()
    blob = pickle.dumps(model)
    art = tmp_path / "m.pkl"
    art.write_bytes(blob)
    import hashlib

    for vid in ("p/sk-a", "p/sk-b"):
        reg.register(pipeline="p", kind="sklearn", version_id=vid, model_class="LR", params={},
                     artifact_uri=str(art), artifact_sha256=hashlib.sha256(blob).hexdigest(),
                     actor="ci", code=None)
    return reg


def test_lifecycle_refusals_are_recorded_and_change_nothing(registry: Registry) -> None:
    lc = Lifecycle(pipeline="p", live_version="v0", scorers=["scorer-0", "scorer-1"],
                   task="binary", registry=registry)
    before = lc.deployment
    registry.record("p/sk-b", "retired", actor="ci")
    for raw, error in [
        (b"not json", "malformed command: not JSON"),
        (_cmd("deploy", version="p/nope").to_json(), "unknown model version p/nope"),
        (_cmd("deploy", version="p/sk-b", mode="shadow").to_json(), "p/sk-b is retired"),
        (_cmd("rollback").to_json(), "no previous version"),
        (Command(op="rollback", pipeline="q", actor="x").to_json(), "for pipeline 'q'"),
    ]:
        with pytest.raises(LifecycleError, match=error):
            lc.prepare(raw, "file:test@0")
    assert lc.deployment == before and lc.n_rejected == 5
    log = registry.commands()
    assert [c.status for c in log] == ["rejected"] * 5
    assert log[0].pipeline is None and log[0].raw == "not json"
    assert registry.events("p/sk-b")[-1].kind == "rejected"


def test_lifecycle_prepare_loads_verified_artifacts_then_records_what_applied(
        registry: Registry) -> None:
    lc = Lifecycle(pipeline="p", live_version="v0", scorers=["scorer-0", "scorer-1"],
                   task="binary", registry=registry)
    prepared = lc.prepare(_cmd("deploy", version="sk-a", mode="canary", share=0.2).to_json(),
                          "file:test@0")
    assert prepared.command.version == "p/sk-a"  # a local name resolved in the pipeline
    assert set(prepared.artifacts["p/sk-a"]) == {"scorer-0", "scorer-1"}
    lc.applied(prepared, [Applied("scorer-0", scored=10, pause_s=0.001, generation=0),
                          Applied("scorer-1", scored=12, pause_s=0.002, generation=0)])
    assert lc.deployment.mode == "canary"
    assert set(lc.artifacts_for("scorer-1")) == {"p/sk-a"}
    applied = registry.commands()[-1]
    assert applied.status == "applied" and applied.details["scored_before"] == {
        "scorer-0": 10, "scorer-1": 12}
    assert applied.details["pause_ms_max"] == 2.0
    assert [e.kind for e in registry.events("p/sk-a")][-1] == "canaried"
    # A regressor cannot serve a classifier's pipeline.
    reg_lc = Lifecycle(pipeline="p", live_version="v0", scorers=["scorer-0"],
                       task="regression", registry=registry)
    with pytest.raises(LifecycleError, match="is a binary model"):
        reg_lc.prepare(_cmd("deploy", version="p/sk-a", mode="shadow").to_json(), "t")
