"""Alembic's environment for the registry: runs on the connection riffle hands over.

riffle calls ``alembic.command.upgrade`` with ``config.attributes["connection"]`` set,
inside a transaction it already holds (and, on PostgreSQL, under an advisory lock), so
two processes opening one registry never migrate it at the same time. Without a
connection (the ``alembic`` command line) the URL comes from ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from pipelines.registry.migrate import VERSION_TABLE, make_engine
from pipelines.registry.schema import Base


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      version_table=VERSION_TABLE, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: set sqlalchemy.url to the registry's URL")
    with make_engine(url).begin() as conn:
        _run(conn)


# Alembic runs this file with its context set up; anything else (pytest's doctest
# collection) merely imports it, and then there is nothing to run.
if getattr(context, "config", None) is not None:
    run_migrations()
