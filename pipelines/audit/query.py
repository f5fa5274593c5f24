"""Queries over the committed audit trail and training log, through DuckDB.

Only the segments a committed checkpoint lists are read (:mod:`pipelines.audit.trail`),
each row with the checkpoint that committed it (``committed_in``, ``commit_seq``). Two
views: ``trail`` and ``training`` (their columns are :data:`~pipelines.audit.trail.TRAIL`
and :data:`~pipelines.audit.trail.TRAINING` plus those two). Any SQL DuckDB takes runs
over them; a user at scale points Spark, Trino or DuckDB at the same Parquet files.

A record or key is found by a scan that Parquet's row-group statistics (min/max per
column) narrow; record ids of one partition are written in order, so a record's row
groups are few.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
from pyarrow import fs

from pipelines.audit.trail import TRAIL, TRAINING, AuditStore, Kind

__all__ = ["AuditQuery"]


class AuditQuery:
    """The committed audit data of the checkpoint store at ``store_url`` (a snapshot:
    commits made after it was opened are not seen)."""

    def __init__(self, store_url: str) -> None:
        self.store = AuditStore(store_url)
        if not isinstance(self.store.filesystem, fs.LocalFileSystem):
            raise NotImplementedError(
                f"audit queries read local stores; for {store_url} point DuckDB, Spark or "
                "Trino at its audit/ folder")
        self.commits = self.store.commits()
        self.con = duckdb.connect()
        self.con.execute("SET preserve_insertion_order = true")
        self._view("trail", TRAIL)
        self._view("training", TRAINING)

    def _view(self, kind: Kind, schema: pa.Schema) -> None:
        files = [(self.store.path(s.path), c.checkpoint, c.seq)
                 for c in self.commits for s in c.segments if s.kind == kind]
        if not files:  # an empty view with the right columns
            if kind == "trail":
                schema = schema.append(pa.field("score", pa.string())).append(
                    pa.field("prediction", pa.string()))
            empty = schema.empty_table().append_column(
                "committed_in", pa.array([], pa.string())).append_column(
                "commit_seq", pa.array([], pa.int64()))
            self.con.register(f"_{kind}_empty", empty)
            self.con.execute(f"CREATE VIEW {kind} AS SELECT * FROM _{kind}_empty")
            return
        index = pa.table({"filename": [f[0] for f in files],
                          "committed_in": [f[1] for f in files],
                          "commit_seq": pa.array([f[2] for f in files], pa.int64())})
        self.con.register(f"_{kind}_commits", index)
        listed = ", ".join("'" + f[0].replace("'", "''") + "'" for f in files)
        source = f"read_parquet([{listed}], filename = true, union_by_name = true)"
        # A column that segments written by an older riffle lack reads as NULL.
        present = {row[0] for row in self.con.execute(
            f"DESCRIBE SELECT * FROM {source}").fetchall()}
        columns = ", ".join(
            f's."{f.name}"' if f.name in present else f'NULL::VARCHAR AS "{f.name}"'
            for f in schema)
        if kind == "trail":  # what it said, out of the record it emitted
            columns += (", json_extract(s.output, '$.score') AS score, "
                        "json_extract(s.output, '$.prediction') AS prediction"
                        if "output" in present else
                        ", NULL::JSON AS score, NULL::JSON AS prediction")
        self.con.execute(
            f"CREATE VIEW {kind} AS SELECT {columns}, c.committed_in, c.commit_seq "
            f"FROM {source} s JOIN _{kind}_commits c USING (filename)")

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """``sql``'s result as dicts (column name to value)."""
        cur = self.con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> AuditQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
