"""Open a registry database and bring its schema to the head revision.

The migrations ship inside the package (``migrations/``), so an installed riffle can
upgrade a registry in place. A database whose revision this code does not know (it
was written by a newer riffle) is refused rather than touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

# RegistryError is re-exported (pipelines.registry.RegistryError): it was defined here first.
from pipelines.errors import RegistryError, first_line

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MIGRATIONS", "VERSION_TABLE", "RegistryError", "alembic_config", "head_revision",
           "make_engine", "upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "riffle_registry_version"
"""Alembic's bookkeeping table, named so that it cannot clash with another application's
``alembic_version`` in a shared PostgreSQL database."""

# Any constant shared by every riffle: taken with pg_advisory_xact_lock while migrating.
_PG_MIGRATION_LOCK = 0x726966666C65


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations (``url`` only for Alembic's own CLI use)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def newest_file_revision() -> str:
    """The head by the migrations' naming rule (a revision's id is its file's number:
    ``0004_access_log.py`` is ``0004``, each revising the one before), read without
    Alembic; a test holds it equal to :func:`head_revision`."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _at(engine: Engine, head: str) -> bool:
    """Whether the database is exactly at ``head`` (one plain query, no Alembic: most
    opens are of an up-to-date registry, and importing Alembic costs a cold command
    ~0.2 s)."""
    try:
        with engine.connect() as conn:
            current = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except SQLAlchemyError:
        return False  # no version table yet, or unreadable: Alembic decides
    return [r[0] for r in current] == [head]


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; for SQLite, one that serialises writers correctly.

    SQLite: ``BEGIN IMMEDIATE`` for every transaction (the write lock is taken up
    front, so two writers wait for each other instead of failing on a lock upgrade),
    a 30 s busy timeout, and foreign keys enforced.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise RegistryError(f"registry URL {url!r} is not a database URL: {e}") from None
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except (ArgumentError, ImportError) as e:
            raise RegistryError(f"registry {_safe(url)}: {e}") from None
    db = parsed.database
    if db and db != ":memory:":
        path = Path(db)
        if not path.exists() and not create:
            raise RegistryError(f"no registry at {path} (nothing was registered yet?)")
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def upgrade(engine: Engine) -> str:
    """Bring the database to the head revision (creating it if empty); returns the head.

    Raises :class:`RegistryError` if the database is at a revision this riffle does not
    have (written by a newer one).
    """
    known_head = newest_file_revision()
    if _at(engine, known_head):
        return known_head
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            current = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
            known = {rev.revision for rev in script.walk_revisions()}
            unknown = [rev for rev in current if rev not in known]
            if unknown:
                raise RegistryError(
                    f"registry {_safe(str(engine.url))} is at schema revision "
                    f"{', '.join(unknown)}, newer than this riffle knows (head {head}): "
                    "upgrade riffle to read it")
            if tuple(current) != (head,):
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    except SQLAlchemyError as e:
        raise RegistryError(f"registry {_safe(str(engine.url))}: cannot open or upgrade: "
                            f"{first_line(e)}") from None
    assert head is not None
    return head


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url

