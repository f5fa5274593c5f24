"""The checkpoint store: parts first, the manifest last; no manifest, no checkpoint.

A checkpoint is a folder ``ckpt-<seq>`` holding one part per actor (a scorer's model
and pending labels, an ingest actor's dedupe memory) and ``MANIFEST.json``: its id,
time, source positions, each part's path, size and SHA-256, and the config hash. The
manifest is written last, so a crash while parts are written leaves a folder that
:meth:`CheckpointStore.latest` never returns. Parts are checked against their hashes
when read back.

The store is a local folder or any pyarrow filesystem URL (``s3://``, ``gs://``,
``hdfs://``), so a cluster's actors can share it.

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> part = store.write_part("ckpt-000001", "scorer-0", b"model bytes")
>>> store.latest() is None                      # parts alone are not a checkpoint
True
>>> m = store.commit(Manifest(id="ckpt-000001", seq=1, created_at=0.0, pipeline="p",
...                           config_hash="c", positions={"loans[0]": 7},
...                           parts={"scorer-0": part}))
>>> store.latest().positions, store.read_part(store.latest(), "scorer-0")
({'loans[0]': 7}, b'model bytes')
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import orjson
from pyarrow import fs
from pydantic import BaseModel, ConfigDict

from pipelines.errors import PipelineError

__all__ = ["CheckpointError", "CheckpointStore", "Manifest", "Part", "checkpoint_id",
           "dumps_state", "loads_state"]

MANIFEST = "MANIFEST.json"


class CheckpointError(PipelineError):
    """A checkpoint cannot be written, or one read back is damaged."""


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """Relative to the store's root."""
    bytes: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    seq: int
    created_at: float
    pipeline: str
    config_hash: str
    positions: dict[str, int]
    """Per source partition, the offset of the first message the checkpoint does not reflect."""
    parts: dict[str, Part]
    events_read: int = 0
    final: bool = False
    """Taken when the source was exhausted and everything was drained."""
    deployment: dict[str, Any] | None = None
    """The model deployment in force (arms, previous version) when it was taken."""
    control_position: int | None = None
    """The control stream's position after the last command applied before it."""


def checkpoint_id(seq: int) -> str:
    return f"ckpt-{seq:06d}"


def dumps_state(state: Any) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def loads_state(blob: bytes) -> Any:
    # Only our own checkpoint parts are unpickled, after their hash matched the manifest.
    return pickle.loads(blob)


class CheckpointStore:
    """Checkpoints under ``url`` (a local folder or a pyarrow filesystem URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._fs, self._root = fs.FileSystem.from_uri(url)
        except (ValueError, TypeError):  # a plain relative or absolute local path
            self._fs, self._root = fs.LocalFileSystem(), url
        except Exception as e:
            raise CheckpointError(f"checkpoint store {url}: {e}") from None
        self._root = self._root.rstrip("/")
        self._fs.create_dir(self._root, recursive=True)

    def _path(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    def write_part(self, ckpt: str, name: str, blob: bytes) -> Part:
        rel = f"{ckpt}/{name}.pkl"
        self._fs.create_dir(self._path(ckpt), recursive=True)
        self._write(self._path(rel), blob)
        return Part(path=rel, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())

    def commit(self, manifest: Manifest) -> Manifest:
        """Write the manifest: from now on the checkpoint exists."""
        for name, part in manifest.parts.items():
            info = self._fs.get_file_info(self._path(part.path))
            if info.type != fs.FileType.File or info.size != part.bytes:
                raise CheckpointError(f"checkpoint {manifest.id}: part {name} is missing "
                                      f"or incomplete at {part.path}")
        blob = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
        # Written under a temporary name and moved: readers never see half a manifest.
        tmp = self._path(manifest.id, f".{MANIFEST}.tmp")
        self._write(tmp, blob)
        self._fs.move(tmp, self._path(manifest.id, MANIFEST))
        return manifest

    def _write(self, path: str, blob: bytes) -> None:
        with self._fs.open_output_stream(path) as out:
            out.write(blob)

    def manifests(self) -> list[Manifest]:
        """The committed checkpoints, oldest first (folders without a manifest are skipped)."""
        out = []
        for info in self._fs.get_file_info(fs.FileSelector(self._root, allow_not_found=True)):
            if info.type != fs.FileType.Directory or not info.base_name.startswith("ckpt-"):
                continue
            path = self._path(info.base_name, MANIFEST)
            if self._fs.get_file_info(path).type != fs.FileType.File:
                continue
            with self._fs.open_input_stream(path) as f:
                try:
                    out.append(Manifest.model_validate(orjson.loads(f.read())))
                except ValueError as e:
                    raise CheckpointError(f"checkpoint manifest {path} is damaged: {e}") from None
        return sorted(out, key=lambda m: m.seq)

    def latest(self) -> Manifest | None:
        manifests = self.manifests()
        return manifests[-1] if manifests else None

    def next_seq(self) -> int:
        """One past the highest checkpoint number ever started here (committed or not)."""
        seqs = [int(i.base_name.removeprefix("ckpt-"))
                for i in self._fs.get_file_info(fs.FileSelector(self._root,
                                                                allow_not_found=True))
                if i.base_name.startswith("ckpt-") and i.base_name[5:].isdigit()]
        return max(seqs, default=0) + 1

    def read_part(self, manifest: Manifest, name: str) -> bytes:
        part = manifest.parts[name]
        with self._fs.open_input_stream(self._path(part.path)) as f:
            blob = f.read()
        if hashlib.sha256(blob).hexdigest() != part.sha256:
            raise CheckpointError(f"checkpoint {manifest.id}: part {name} does not match "
                                  "its hash in the manifest")
        return bytes(blob)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` committed checkpoints, and any uncommitted
        folder older than the newest committed one. Returns what was deleted."""
        manifests = self.manifests()
        if not manifests:
            return []
        kept = {m.id for m in manifests[-keep:]}
        newest = manifests[-1].seq
        gone = []
        for info in self._fs.get_file_info(fs.FileSelector(self._root, allow_not_found=True)):
            name = info.base_name
            if info.type != fs.FileType.Directory or not name.startswith("ckpt-"):
                continue
            seq = int(name[5:]) if name[5:].isdigit() else newest + 1
            if name not in kept and seq < newest:
                self._fs.delete_dir(self._path(name))
                gone.append(name)
        return sorted(gone)
