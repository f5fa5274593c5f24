"""Configs: strict, with errors that name the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local.yaml", "file.yaml"])
def test_shipped_configs_load(name: str) -> None:
    assert load_config(ROOT / "configs" / name).name


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nsource: {kind: synthetic, colour: red}\n", "source.synthetic.colour: Extra inputs"),
    ("name: x\nsource: {kind: synthetic, partitions: 0}\n",
     "source.synthetic.partitions: Input should be greater than or equal to 1"),
    ("name: x\nsource: {kind: s3}\n", "source: Input tag 's3' found using 'kind'"),
    ("name: x\nsource: {kind: kafka}\nkafka: {session_timeout_ms: 3000}\n",
     "heartbeat_interval_ms (2000) must be at most a third of session_timeout_ms (3000)"),
    ("name: x\nsource: {kind: synthetic, partitions: 2}\ningest: {n_actors: 3}\n",
     "ingest.n_actors (3) must be <= source.partitions (2)"),
    ("name: x\nsource: {kind: synthetic, label_delay_events: 5, label_delay_s: 1.0}\n",
     "label_delay_events (5) and label_delay_s (1.0) are exclusive"),
    ("name: x\nsource: {kind: synthetic}\ningest: {batch_size: '500'}\n",
     "ingest.batch_size: Input should be a valid integer"),
    ("name: x\nsource: {kind: file, path: a.txt}\n", "cannot infer the format"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML (line"),
])
def test_load_config_bad_value_one_line_with_dotted_path(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_load_config_unknown_model_names_the_step(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nsource: {kind: synthetic}\nscoring:\n  model:\n"
                            "    steps: [{name: linear_model.Nope}]\n")
    with pytest.raises(ModelError, match=r"scoring.model.steps.0: unknown River estimator"):
        load_config(path)


def test_load_config_model_params_nested_objects_built(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nsource: {kind: synthetic}\nscoring:\n  model:\n"
                            "    steps:\n      - name: linear_model.LogisticRegression\n"
                            "        params: {optimizer: {name: optim.SGD, params: {lr: 0.05}}}\n")
    config = load_config(path)
    from pipelines.models import build_model

    model = build_model(config.scoring.model)
    assert type(model.optimizer).__name__ == "SGD"


def test_load_config_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_config_hash_stable_and_sensitive(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path, "name: x\nsource: {kind: synthetic, seed: 1}\n"))
    b = load_config(_write(tmp_path, "source: {seed: 1, kind: synthetic}\nname: x\n"))
    c = load_config(_write(tmp_path, "name: x\nsource: {kind: synthetic, seed: 2}\n"))
    assert a.config_hash() == b.config_hash() != c.config_hash()
