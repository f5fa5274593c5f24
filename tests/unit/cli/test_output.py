"""The command's own code without Ray: progress text for every status the driver can
poll (including one taken mid-restart), one-line errors and their exit codes."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.cli.output import Fail, Failed, one_line
from pipelines.cli.run import progress_line
from pipelines.errors import ConfigError, RunFailed


@pytest.mark.parametrize("status", [
    {"pipeline": "local", "restarting": True, "supervision": {"restarts": 1}},
    {"pipeline": "local", "restarting": True},
    {"events": 10, "events_per_s": 5.0, "dead_letters": 0},          # no metrics yet
    {"events": 10, "events_per_s": 5.0, "dead_letters": 0, "metrics": {}},
    {"events": 10, "metrics": {"accuracy": None}},
    {"events": 10, "events_per_s": 5.0, "dead_letters": 1, "metrics": {"mae": 0.25}},
    {},
])
def test_progress_line_any_status_gives_one_line(status: dict) -> None:
    line = progress_line(status)
    assert line and "\n" not in line


def test_progress_line_mid_restart_says_so() -> None:
    line = progress_line({"pipeline": "p", "restarting": True, "supervision": {"restarts": 2}})
    assert line == "restarting an actor (restarts so far: 2)..."


def test_progress_line_regression_shows_mae() -> None:
    line = progress_line({"events": 2000, "events_per_s": 1000.0, "dead_letters": 0,
                          "metrics": {"mae": 0.123456}})
    assert line == "2,000 events  1,000/s  mae 0.1235  dead letters 0"


@pytest.mark.parametrize(("error", "kind", "code"), [
    (ConfigError("c.yaml: bad"), Fail, 2), (RunFailed("scorer-0: crash loop"), Failed, 1)])
def test_one_line_maps_riffle_errors_to_exit_codes(error: Exception, kind: type, code: int
                                                   ) -> None:
    with pytest.raises(click.ClickException) as caught, one_line():
        raise error
    assert type(caught.value) is kind and caught.value.exit_code == code
    assert caught.value.format_message() == str(error)


def test_run_missing_sample_file_says_how_to_make_one(tmp_path: Path) -> None:
    data = tmp_path / "data" / "loans.jsonl"
    config = tmp_path / "file.yaml"
    config.write_text(f"name: f\nsource: {{kind: file, path: {data}, label_column: label}}\n")
    result = CliRunner().invoke(cli, ["run", str(config)])
    assert result.exit_code == 2
    assert f"{data}: no such file" in result.output
    assert f"riffle sample {data} --events 50000" in result.output
