"""The real PostgreSQL that the registry tests run against (scripts/postgres.sh).

Environment:
    RIFFLE_PG_URL         use an already running server at this SQLAlchemy URL (only if it
                          answers; otherwise one is started)
    RIFFLE_PG_TEST_PORT   port of the test server (default: the first free one from 15432)
    RIFFLE_PG_TEST_STATE  its state dir (default ~/.cache/riffle/pg-test-state), apart from a
                          developer's server, so a test session's wipe never touches dev data

If no server can be had, the tests that need one FAIL with the tail of its log: they
are never skipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import port_free

__all__ = ["postgres_url"]

REPO_ROOT = Path(__file__).resolve().parents[1]
POSTGRES_SH = REPO_ROOT / "scripts" / "postgres.sh"
HOST = "127.0.0.1"
DEFAULT_TEST_PORT = 15432
_TIMEOUT_S = 120
# Throwaway data: durability only costs time here.
_FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def _state_dir() -> Path:
    default = Path.home() / ".cache" / "riffle" / "pg-test-state"
    return Path(os.environ.get("RIFFLE_PG_TEST_STATE", default))


def _choose_port() -> int:
    configured = os.environ.get("RIFFLE_PG_TEST_PORT")
    if configured:
        return int(configured)
    for port in range(DEFAULT_TEST_PORT, DEFAULT_TEST_PORT + 100):
        if port_free(HOST, port):
            return port
    pytest.fail(f"no free port in {DEFAULT_TEST_PORT}-{DEFAULT_TEST_PORT + 100} on {HOST}",
                pytrace=False)


def _answers(url: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _log_tail(lines: int = 40) -> str:
    log = _state_dir() / "postgres.log"
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no server log at {log}: {e})"


def _postgres_sh(command: str, port: int) -> str:
    env = dict(os.environ, RIFFLE_PG_PORT=str(port), RIFFLE_PG_STATE=str(_state_dir()),
               RIFFLE_PG_FRESH="1" if command == "start" else "0", RIFFLE_PG_OPTIONS=_FAST)
    try:
        proc = subprocess.run(["bash", str(POSTGRES_SH), command], env=env, capture_output=True,
                              text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/postgres.sh {command} took over {_TIMEOUT_S}s\n--- server log "
                    f"---\n{_log_tail()}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/postgres.sh {command} failed (exit {proc.returncode}) on port "
                    f"{port}\n--- output ---\n{proc.stdout}{proc.stderr}--- server log ---\n"
                    f"{_log_tail()}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL server that answers, for the whole session (a
    superuser connection to its ``riffle`` database; tests make databases of their own)."""
    external = os.environ.get("RIFFLE_PG_URL")
    if external and _answers(external):
        yield external
        return
    port = _choose_port()
    url = _postgres_sh("start", port)
    try:
        if not _answers(url):
            pytest.fail(f"PostgreSQL started on port {port} but does not answer at {url}\n"
                        f"--- server log ---\n{_log_tail()}", pytrace=False)
        yield url
    finally:
        _postgres_sh("stop", port)
