"""Fixtures of the registry tests: the database each runs on (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pipelines.registry import Registry


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty registry database: a SQLite file where the CLI looks by default
    (``<out_dir>/registry.db``), or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'out' / 'registry.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"riffle_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def make_registry(db_url: str) -> Iterator[Callable[[], Registry]]:
    """Factory: a Registry on the test's database (each call a separate one, as two
    processes would have); all closed at the end."""
    opened: list[Registry] = []

    def make() -> Registry:
        opened.append(Registry(db_url))
        return opened[-1]

    yield make
    for registry in opened:
        registry.close()
