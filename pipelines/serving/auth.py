"""API keys: who is asking (a principal) and what they may do (a role).

Keys come from the environment (``RIFFLE_SERVE_KEYS``: ``name:role:key`` entries
separated by commas) or a secrets file (``serving.keys_file`` or
``RIFFLE_SERVE_KEYS_FILE``: YAML or JSON, ``principals: [{name, role, key}]``, or
``key_sha256`` instead of the key), never from the pipeline config. Only the SHA-256 of
each key is held; a presented key is compared in constant time.

Roles: ``scorer`` predicts and sends feedback; ``reader`` reads models and the audit
trail, and explains; ``admin`` may do all of that, and deploys, promotes, rolls back,
retires and forgets.

>>> ring = KeyRing.parse("web:scorer:s3cret,ops:admin:t0p")
>>> ring.principal("s3cret").name, ring.principal("nope")
('web', None)
>>> ring.principal("t0p").may("deploy"), ring.principal("s3cret").may("deploy")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import orjson
import yaml

from pipelines.errors import ConfigError

__all__ = ["KEYS_ENV", "KEYS_FILE_ENV", "ROLES", "KeyRing", "Principal", "Role", "load_keys"]

KEYS_ENV = "RIFFLE_SERVE_KEYS"
KEYS_FILE_ENV = "RIFFLE_SERVE_KEYS_FILE"

Role = Literal["scorer", "reader", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

Action = Literal["predict", "feedback", "read", "deploy", "forget"]
_ALLOWED: dict[str, frozenset[str]] = {
    "scorer": frozenset({"predict", "feedback"}),
    "reader": frozenset({"read"}),
    "admin": frozenset({"predict", "feedback", "read", "deploy", "forget"}),
}


class Principal(NamedTuple):
    name: str
    role: str

    def may(self, action: str) -> bool:
        return action in _ALLOWED[self.role]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The principals, by the SHA-256 of their keys."""

    def __init__(self, entries: list[tuple[str, str, bytes]]) -> None:
        self._entries: list[tuple[bytes, Principal]] = []
        for name, role, digest in entries:
            if role not in ROLES:
                raise ConfigError(f"API key of {name!r}: role must be one of "
                                  f"{', '.join(ROLES)}, not {role!r}")
            if not name:
                raise ConfigError("an API key needs a principal name")
            for held, other in self._entries:
                if hmac.compare_digest(held, digest):
                    raise ConfigError(f"principals {other.name!r} and {name!r} have the same "
                                      "API key")
            self._entries.append((digest, Principal(name, role)))

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``name:role:key`` entries separated by commas (the environment's form)."""
        entries = []
        for i, item in enumerate(p.strip() for p in text.split(",")):
            if not item:
                continue
            parts = item.split(":", 2)
            if len(parts) != 3 or not parts[2]:
                raise ConfigError(f"{KEYS_ENV} entry {i}: expected name:role:key")
            entries.append((parts[0], parts[1], _digest(parts[2])))
        return cls(entries)

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"API keys file {path}: cannot read: {e.strerror}") from None
        try:
            doc = orjson.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        except (orjson.JSONDecodeError, yaml.YAMLError):
            raise ConfigError(f"API keys file {path}: not valid JSON or YAML") from None
        rows = doc.get("principals") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise ConfigError(f"API keys file {path}: expected 'principals: [...]'")
        entries = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not ({"key", "key_sha256"} & set(row)):
                raise ConfigError(f"API keys file {path}: principals.{i}: expected name, "
                                  "role and key (or key_sha256)")
            try:
                digest = (bytes.fromhex(row["key_sha256"]) if "key_sha256" in row
                          else _digest(str(row["key"])))
            except ValueError:
                raise ConfigError(f"API keys file {path}: principals.{i}.key_sha256: not "
                                  "hex") from None
            entries.append((str(row.get("name", "")), str(row.get("role", "")), digest))
        return cls(entries)

    def principal(self, key: str | None) -> Principal | None:
        """Who holds ``key`` (None: nobody). Every entry is compared, in constant time."""
        if not key:
            return None
        digest = _digest(key)
        found = None
        for held, principal in self._entries:
            if hmac.compare_digest(held, digest):
                found = principal
        return found


def load_keys(keys_file: Path | None) -> KeyRing:
    """The service's keys: the environment's and the secrets file's together; none at
    all is a mistake (a service nobody may call, or anybody: refused)."""
    rings = []
    text = os.environ.get(KEYS_ENV)
    if text:
        rings.append(KeyRing.parse(text))
    path = keys_file or (Path(os.environ[KEYS_FILE_ENV]) if os.environ.get(KEYS_FILE_ENV)
                         else None)
    if path is not None:
        rings.append(KeyRing.from_file(path))
    ring = KeyRing([(p.name, p.role, digest) for r in rings for digest, p in r._entries])
    if not len(ring):
        raise ConfigError(f"no API keys: set {KEYS_ENV} (name:role:key,...) or a keys file "
                          f"(serving.keys_file or {KEYS_FILE_ENV})")
    return ring
