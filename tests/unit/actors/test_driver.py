"""The driver's Ray-free part: a progress display that raises never stops the run."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from actors.driver import _observe


def test_observe_a_failing_display_logs_one_line_and_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    def display(status: dict[str, Any]) -> None:
        status["metrics"]  # the KeyError of a status taken mid-restart

    with caplog.at_level(logging.WARNING, logger="actors.driver"):
        _observe(display, {"pipeline": "p", "restarting": True})
    assert [r.getMessage() for r in caplog.records] == [
        "progress display failed (the run goes on): KeyError: 'metrics'"]


def test_observe_a_working_display_sees_the_status() -> None:
    seen: list[dict[str, Any]] = []
    _observe(seen.append, {"events": 1})
    assert seen == [{"events": 1}]
