"""``riffle forget`` against a running pipeline, through its control stream.

A rate-limited file stream (one partition, immediate labels) through 2 scorers runs for
about 10 s; mid-stream 3 subjects are forgotten one after another (``--suppress``), each
while the pipeline runs. Its final models equal, to 1e-12, those of a run over the same
file without the subjects' lines from the start, and no file under its output folder
holds their keys or record ids. A request for an unknown key is refused and the run
goes on; a ``kill -9`` of a scorer while the rebuilt models are swapped in is recovered
from, and the result is still exact. A Hoeffding tree is unlearned exactly too (a
stopped pipeline): the same structure, leaf statistics and
splitter statistics, bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from actors.driver import run_pipeline
from pipelines.audit.forget import Forgetter
from pipelines.audit.forget_request import send_forget
from pipelines.audit.query import AuditQuery
from pipelines.config import PipelineConfig
from pipelines.errors import AuditError
from pipelines.registry import Registry
from pipelines.sources.sample import sample_rows
from tests.actors.test_forget import (
    _config,
    _final_models,
    _params,
    _write,
)
from tests.actors.test_forget import (
    test_forget_leaves_no_row_of_the_subjects_in_any_store_riffle_owns as _no_row_left,
)
from tests.faults.test_supervision import Run, supervision_log

N_EVENTS = 3000
RATE = 150.0  # 3,000 lines: about 10 s once running, with the forgets


def _running_config(name: str, data: Path, out: Path, rate: float | None) -> PipelineConfig:
    cfg = _config(name, data, out, rate)
    return cfg.model_copy(update={"supervision": cfg.supervision.model_copy(update={
        "scorer": cfg.supervision.scorer.model_copy(update={
            "backoff_initial_s": 0.1, "backoff_jitter": 0.0})})})


def _subjects(rows: list[dict[str, Any]]) -> list[str]:
    """3 keys seen before the first checkpoint that come back after 2/3 of the stream
    (so they are learned before each forget and suppressed after it)."""
    early = list(dict.fromkeys(r["key"] for r in rows[:250]))
    late = {r["key"] for r in rows[2 * N_EVENTS // 3:]}
    keys = [k for k in early if k in late][:3]
    assert len(keys) == 3
    return keys


def _forget_mid_stream(root: Path, *, kill: bool) -> dict[str, Any]:
    rows = sample_rows(N_EVENTS, seed=13, n_keys=400)
    keys = _subjects(rows)
    cfg = _running_config("fr", _write(root / "loans.jsonl", rows), root / "a", RATE)
    run = Run(cfg)
    run.until(lambda: run.checkpoints() >= 2, "2 checkpoints")
    with pytest.raises(AuditError, match="unknown key"):  # refused; the run reads on
        send_forget(cfg, "nobody-at-all", actor="test", timeout_s=60)
    certs = []
    killed = None
    for i, key in enumerate(keys):
        if kill and i == 1:
            done: dict[str, Any] = {}
            sender = threading.Thread(target=lambda k=key, d=done: d.update(cert=send_forget(
                cfg, k, actor="test", reason="GDPR", suppress=True, timeout_s=90)))
            sender.start()
            # the unknown key's and the first subject's rebuilds came before
            run.until(lambda: _rebuilds(cfg.out_dir) == 3, "the second rebuild",
                      timeout_s=60)
            killed = run.pid("scorer-1")
            os.kill(killed, signal.SIGKILL)
            sender.join(120)
            certs.append(done["cert"])
            continue
        certs.append(send_forget(cfg, key, actor="test", reason="GDPR", suppress=True,
                                 timeout_s=90))
    assert all(c is not None for c in certs)
    summary = run.result(180)
    events = [r["key"] for r in rows]
    assert summary["supervision"]["restarts"] == (1 if kill else 0)
    ref = _config("fr", _write(root / "without.jsonl",
                               [r for r in rows if r["key"] not in keys]), root / "b", None)
    run_pipeline(ref)
    return {"cfg": cfg, "ref": ref, "keys": keys, "certs": certs, "rows": rows,
            "events": events, "killed": killed, "summary": summary}


def _rebuilds(out: Path) -> int:
    return sum(e["kind"] == "forget" and e["reason"] == "rebuilding"
               for e in supervision_log(out))


def _assert_exact(result: dict[str, Any]) -> None:
    got, want = _final_models(result["cfg"]), _final_models(result["ref"])
    for scorer in got:
        a, b = _params(got[scorer]), _params(want[scorer])
        assert len(a) == len(b)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-12, scorer


@pytest.fixture(scope="module")
def forgotten_running(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _forget_mid_stream(tmp_path_factory.mktemp("forget-running"), kill=False)


def test_forget_while_running_equals_a_run_that_never_saw_the_subjects(
        forgotten_running: dict[str, Any]) -> None:
    _assert_exact(forgotten_running)
    log = supervision_log(forgotten_running["cfg"].out_dir)
    swaps = [e for e in log if e["kind"] == "forget" and e["reason"] != "rebuilding"]
    assert len(swaps) == 3
    for cert in forgotten_running["certs"]:
        assert cert["models"]["skipped"] > 0 and cert["models"]["replayed"] > 0
    with Registry(forgotten_running["cfg"].registry_url()) as reg:
        assert len(reg.access_entries(action="forget")) == 3
    # Every prediction written is in the file but the subjects' (nothing read twice: the
    # sink wrote each record once, and kept counting across the swaps).
    out = forgotten_running["cfg"].out_dir
    lines = len((out / "predictions.jsonl").read_bytes().splitlines())
    removed = sum(c["removed"]["predictions.jsonl"] for c in forgotten_running["certs"])
    assert forgotten_running["summary"]["predictions_written"] == lines + removed


def test_forget_while_running_leaves_no_row_of_the_subjects(
        forgotten_running: dict[str, Any]) -> None:
    _no_row_left(forgotten_running)
    with AuditQuery(forgotten_running["cfg"].checkpoint_store_url()) as q:
        assert not q.rows("SELECT key FROM training WHERE key IN (?, ?, ?)",
                          forgotten_running["keys"])


def test_forget_while_running_with_a_kill_9_of_a_scorer_during_the_swap_is_still_exact(
        tmp_path: Path) -> None:
    result = _forget_mid_stream(tmp_path, kill=True)
    _assert_exact(result)
    log = supervision_log(result["cfg"].out_dir)
    [restart] = [e for e in log if e["kind"] == "restart"]
    # recovered from the rebuilt checkpoint: the subject stays unlearned
    assert restart["actor"] == "scorer-1"
    assert restart["checkpoint"] == result["certs"][1]["models"]["rebuilt_checkpoint"]
    _no_row_left(result)


# -- a Hoeffding tree, on a stopped pipeline ---------------------------------------------
TREE = {"steps": [{"name": "tree.HoeffdingTreeClassifier",
                   "params": {"grace_period": 50, "leaf_prediction": "mc"}}]}


def _tree_config(name: str, data: Path, out: Path) -> PipelineConfig:
    cfg = _config(name, data, out, None)
    return PipelineConfig.model_validate({**cfg.model_dump(mode="json"), "scoring": {
        **cfg.scoring.model_dump(mode="json"), "model": TREE}})


def test_forget_unlearns_a_hoeffding_tree_exactly(tmp_path: Path) -> None:
    rows = sample_rows(N_EVENTS, seed=17, n_keys=400)
    keys = _subjects(rows)
    stop = threading.Event()
    cfg = _tree_config("ft", _write(tmp_path / "loans.jsonl", rows), tmp_path / "a")
    from pipelines.checkpoint import CheckpointStore

    store = CheckpointStore(cfg.checkpoint_store_url())

    def stop_after_checkpoints() -> None:
        deadline = time.monotonic() + 120
        while len(store.manifests()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()

    slow = cfg.model_copy(update={"source": cfg.source.model_copy(update={"rate_per_s": 600})})
    threading.Thread(target=stop_after_checkpoints, daemon=True).start()
    run_pipeline(slow, stop=stop)
    with Registry(cfg.registry_url()) as reg:
        for key in keys:
            Forgetter(cfg, registry=reg).forget(key, suppress=True)
    run_pipeline(cfg, resume=True)
    ref = _tree_config("ft", _write(tmp_path / "without.jsonl",
                                    [r for r in rows if r["key"] not in keys]), tmp_path / "b")
    run_pipeline(ref)
    got, want = _final_models(cfg), _final_models(ref)
    for scorer in got:
        a, b = _tree(got[scorer]), _tree(want[scorer])
        assert a[0] > 1, "the tree must have split for the test to mean something"
        assert a == b, scorer
        # every statistic the tree holds (its splitters' too), bit for bit; the pickled
        # bytes differ only by the unseeded random.Random of the Gaussian estimators
        assert _state(got[scorer]) == _state(want[scorer]), scorer


def _state(obj: Any, seen: frozenset[int] = frozenset()) -> Any:
    """Everything an object holds, as plain values (random generators left out)."""
    if isinstance(obj, random.Random):
        return "<rng>"
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if id(obj) in seen:
        return "<cycle>"
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        return sorted((repr(k), _state(v, seen)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [_state(v, seen) for v in obj]
    if hasattr(obj, "__dict__"):
        return (type(obj).__name__, _state(vars(obj), seen))
    return repr(obj)


def _tree(model: Any) -> tuple[int, list[Any]]:
    """A tree's structure and every leaf's statistics, in a canonical form."""
    tree = model if hasattr(model, "_root") else next(
        s for s in model.steps.values() if hasattr(s, "_root"))
    nodes: list[Any] = []

    def walk(node: Any, depth: int) -> None:
        children = getattr(node, "children", None)
        if children:
            feature = getattr(node, "feature", None)
            threshold = getattr(node, "threshold", None)
            nodes.append(("split", depth, feature, threshold))
            for child in children:
                walk(child, depth + 1)
        else:
            nodes.append(("leaf", depth, orjson.dumps(dict(sorted(node.stats.items())),
                                                      option=orjson.OPT_NON_STR_KEYS)))

    walk(tree._root, 0)
    return sum(1 for n in nodes if n[0] == "leaf"), nodes
