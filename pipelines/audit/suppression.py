"""Erased subjects whose later events are refused: ``riffle forget --suppress``.

The list lives in the checkpoint store, ``erasure/suppressed.json``: subject hashes only
(:func:`~pipelines.audit.subjects.subject_hash`), never keys. Ingest actors load it when
they start; when it is empty (the usual case) nothing is loaded and the hot path does no
work at all. When it is not, each event's and label's key is hashed once (an HMAC of a few
dozen bytes, ~1 us) and looked up in a set; a match becomes a dead letter,
"erased subject", carrying the hash instead of the record (the dead letters would
otherwise hold the subject's data again).

The ingest actors must hash with the registry's salt: they read the same salt file
(``RIFFLE_AUDIT_SALT_FILE`` in their environment, else the default).

>>> import tempfile
>>> from pipelines.audit.subjects import subject_hash
>>> url = tempfile.mkdtemp()
>>> salt = bytes(32)
>>> add_suppressed(url, subject_hash("applicant-7", salt=salt))
True
>>> s = Suppression.load(url, salt=salt)
>>> s.matches("applicant-7"), s.matches("applicant-8"), len(s)
(True, False, 1)
>>> Suppression.load(tempfile.mkdtemp()) is None     # nothing suppressed: no check at all
True
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from pyarrow import fs

from pipelines.audit.subjects import is_subject_hash, load_salt
from pipelines.errors import AuditError
from pipelines.storage import resolve

__all__ = ["SUPPRESSED", "Suppression", "add_suppressed", "read_suppressed"]

SUPPRESSED = "erasure/suppressed.json"
"""Relative to the checkpoint store's root."""


def _path(store_url: str) -> tuple[fs.FileSystem, str]:
    filesystem, root = resolve(store_url)
    return filesystem, f"{root.rstrip('/')}/{SUPPRESSED}"


def read_suppressed(store_url: str) -> list[str]:
    """The subject hashes suppressed in the store at ``store_url`` (empty if none)."""
    filesystem, path = _path(store_url)
    try:
        with filesystem.open_input_stream(path) as f:
            raw: Any = orjson.loads(f.read())
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError) as e:
        raise AuditError(f"suppression list {path}: unreadable: {e}") from None
    subjects = raw.get("subjects") if isinstance(raw, dict) else None
    if not isinstance(subjects, list) or not all(is_subject_hash(s) for s in subjects):
        raise AuditError(f"suppression list {path}: expected "
                         '{"subjects": [subject hashes]}')
    return list(subjects)


def add_suppressed(store_url: str, hashed: str) -> bool:
    """Add a subject hash to the list (written whole, then moved in); False if it was
    there already."""
    if not is_subject_hash(hashed):
        raise AuditError("the suppression list holds subject hashes only")
    subjects = read_suppressed(store_url)
    if hashed in subjects:
        return False
    filesystem, path = _path(store_url)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = f"{path}.tmp"
    with filesystem.open_output_stream(tmp) as out:
        out.write(orjson.dumps({"subjects": [*subjects, hashed]}, option=orjson.OPT_INDENT_2))
    filesystem.move(tmp, path)
    return True


class Suppression:
    """A set of subject hashes and the salt to hash keys with (see the module)."""

    __slots__ = ("_hashes", "_mac")

    def __init__(self, hashes: list[str], salt: bytes) -> None:
        self._hashes = frozenset(hashes)
        self._mac = hmac.new(salt, digestmod=hashlib.sha256)

    @classmethod
    def load(cls, store_url: str | None, *, salt: bytes | None = None) -> Suppression | None:
        """The store's list, or None when it is empty (then nothing is checked)."""
        if store_url is None:
            return None
        hashes = read_suppressed(store_url)
        if not hashes:
            return None
        return cls(hashes, load_salt() if salt is None else salt)

    def hash_of(self, key: str) -> str:
        mac = self._mac.copy()  # the keyed state is set up once; a copy per key
        mac.update(key.encode("utf-8"))
        return mac.hexdigest()

    def matches(self, key: str) -> bool:
        return self.hash_of(key) in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

