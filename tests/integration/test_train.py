"""``riffle train`` as a subprocess: history in JSONL, CSV and Parquet becomes a registered
scikit-learn version equal to one fitted by hand; bad input is one line and exit code 2."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from river.datasets import synth
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.batch_models import SklearnModel, loads_model
from pipelines.config import load_config
from pipelines.registry import Registry, RegistryError

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 3000
TEST_FRACTION = 0.25
N_TRAIN = N_ROWS - math.floor(N_ROWS * TEST_FRACTION)
RIFFLE = [sys.executable, "-m", "pipelines.cli"]


def riffle(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``riffle ARGS``; returns the result and the process id (Ray's session names it)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([*RIFFLE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"riffle {' '.join(args)} timed out; stderr: "
                             f"{err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def ray_processes_of(pid: int) -> list[str]:
    """Ray processes (GCS, raylet, agents) of the local Ray that process ``pid`` started."""
    out = subprocess.run(["pgrep", "-af", f"session_[0-9_-]+_{pid}/"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Agrawal loan applications as flat rows, written as JSONL, CSV and Parquet."""
    folder = tmp_path_factory.mktemp("history")
    rows = [{"record_id": f"r-{i}", "key": f"k-{i % 97}", "event_time": 1_700_000_000 + i,
             **x, "label": y}
            for i, (x, y) in enumerate(synth.Agrawal(seed=11).take(N_ROWS))]
    paths = {"jsonl": folder / "loans.jsonl", "csv": folder / "loans.csv",
             "parquet": folder / "loans.parquet"}
    paths["jsonl"].write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pd.DataFrame(rows).to_parquet(paths["parquet"], index=False)
    features = [c for c in rows[0] if c not in ("record_id", "key", "event_time", "label")]
    return {"rows": rows, "paths": paths, "features": features}


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a pipeline YAML with a lean local Ray (1 CPU) and the given training."""

    def make(training: str = "") -> Path:
        path = tmp_path / "train.yaml"
        path.write_text(
            "name: hist\n"
            "source: {kind: synthetic}\n"
            f"output: {{out_dir: {tmp_path / 'out'}}}\n"
            "runtime: {num_cpus: 1}\n"
            f"training: {{test_fraction: {TEST_FRACTION}{', ' + training if training else ''}}}\n")
        return path

    return make


def _reference(history: dict[str, Any]) -> tuple[Any, np.ndarray, np.ndarray]:
    """The same model fitted by hand: scaled LogisticRegression on the first rows."""
    X = np.array([[r[f] for f in history["features"]] for r in history["rows"]],
                 dtype=np.float64)
    y = np.array([r["label"] for r in history["rows"]])
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[:N_TRAIN], y[:N_TRAIN])
    return model, X, y


def test_train_reads_jsonl_csv_and_parquet_alike_in_file_order(history, ray_session) -> None:
    """The three formats give the same rows, in file order (on the session's Ray: each
    CLI call would start its own, ~15 s here)."""
    from pipelines.training import history_format, read_history

    frames = {fmt: read_history(str(path), history_format(str(path)))
              for fmt, path in history["paths"].items()}
    ids = [r["record_id"] for r in history["rows"]]
    for fmt, frame in frames.items():
        assert list(frame["record_id"]) == ids, fmt
        for f in history["features"]:
            np.testing.assert_allclose(frame[f].to_numpy(dtype=float),
                                       [r[f] for r in history["rows"]], rtol=1e-12,
                                       err_msg=f"{fmt}: {f}")


@pytest.mark.parametrize("fmt", ["parquet"])
def test_train_cli_history_registers_the_model_sklearn_fits(history, make_config,
                                                            fmt: str) -> None:
    config = make_config()
    path = history["paths"][fmt]
    result, pid = riffle("train", str(config), "--from", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # one summary on stdout, nothing else
    version_id = result.stdout.split()[1]
    assert version_id.startswith("hist/sk-"), result.stdout
    wait_until(lambda: not ray_processes_of(pid), 30, "the command's Ray processes to exit")

    cfg = load_config(config)
    with Registry(f"sqlite:///{cfg.out_dir / 'registry.db'}", create=False) as registry:
        version = registry.get(version_id)
        blob = registry.load_artifact(version_id)  # verified against the registered sha256
        created = registry.events(version_id)[0]
    assert (version.kind, version.model_class) == (
        "sklearn", "sklearn.linear_model.LogisticRegression")
    assert version.status == "created" and version.config_hash == cfg.config_hash()
    assert version.data.sources == {str(path.resolve()): (0, N_ROWS)}
    assert version.data.n_learned == N_TRAIN
    assert version.params["C"] == 1.0
    assert version.artifact_uri == str(cfg.out_dir.resolve() / "checkpoints" / "models"
                                       / f"{version_id.split('/')[1]}.pkl")
    assert created.kind == "created"
    assert {k: created.details[k] for k in ("rows", "holdout_rows", "features", "label_column",
                                            "reader", "task")} == {
        "rows": N_ROWS, "holdout_rows": N_ROWS - N_TRAIN, "features": history["features"],
        "label_column": "label", "reader": "ray.data", "task": "binary"}

    # The artifact predicts as the model sklearn fits on the same rows.
    model = loads_model(blob)
    assert isinstance(model, SklearnModel) and model.features == history["features"]
    reference, X, y = _reference(history)
    expected = reference.predict_proba(X)
    got = np.array([list(model.predict_proba_one(r).values()) for r in history["rows"]])
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert list(model.predict_proba_one(history["rows"][0])) == [0, 1]

    # Its metrics are the reference's on the held-out (last) rows.
    held = expected[N_TRAIN:]
    assert version.metrics.keys() == {"accuracy", "log_loss"}
    assert math.isclose(version.metrics["accuracy"],
                        accuracy_score(y[N_TRAIN:], held.argmax(axis=1)), rel_tol=1e-9)
    assert math.isclose(version.metrics["log_loss"], log_loss(y[N_TRAIN:], held),
                        rel_tol=1e-9)
    assert version_id in result.stdout and "accuracy" in result.stdout

    # A changed artifact is refused.
    Path(version.artifact_uri).write_bytes(blob + b"x")
    with Registry(f"sqlite:///{cfg.out_dir / 'registry.db'}", create=False) as registry, \
            pytest.raises(RegistryError, match="does not match its registered sha256"):
        registry.load_artifact(version_id)


@pytest.mark.parametrize(("case", "fragment"), [
    ("missing file", "no such file or folder"),
    ("missing label column", "no label column 'outcome'"),
    ("text feature", "feature 'note' is not numeric"),
    ("unknown estimator", "unknown scikit-learn estimator 'linear_model.Nope'"),
])
def test_train_cli_bad_input_exit_2_one_line(history, make_config, tmp_path: Path, case: str,
                                             fragment: str) -> None:
    path = history["paths"]["jsonl"]
    training = ""
    if case == "missing file":
        path = tmp_path / "nowhere.jsonl"
    elif case == "missing label column":
        training = "label_column: outcome"
    elif case == "text feature":
        path = tmp_path / "notes.jsonl"
        path.write_bytes(b"".join(orjson.dumps({**r, "note": "n/a"}) + b"\n"
                                  for r in history["rows"][:100]))
    else:
        training = "estimator: linear_model.Nope"
    config = make_config(training)
    result, pid = riffle("train", str(config), "--from", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("riffle: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    wait_until(lambda: not ray_processes_of(pid), 30, "the command's Ray processes to exit")
    assert not (load_config(config).out_dir / "registry.db").exists()  # nothing registered
