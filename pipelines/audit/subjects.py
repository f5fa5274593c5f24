"""A data subject's key as the access log may hold it: a salted hash, never the key.

``subject_hash(key)`` is HMAC-SHA256 of the key under a secret salt kept *outside* the
log: the file ``$RIFFLE_AUDIT_SALT_FILE``, by default ``~/.config/riffle/audit-salt``,
made on first use with 32 random bytes and mode 0600. Without the salt, a hash cannot be
traced back to a key by trying likely keys; with it, an auditor finds a subject's entries
by hashing the key again. Erasing a subject later leaves the log (and every proof over
it) as it is: its entries never held the key.

Everyone who hashes subjects for one registry must share its salt file; lose the salt
and old hashes can no longer be matched to keys (they still verify).

>>> salt = bytes(32)
>>> h = subject_hash("customer-42", salt=salt)
>>> len(h), h == subject_hash("customer-42", salt=salt), h == subject_hash("customer-43",
...                                                                           salt=salt)
(64, True, False)
>>> is_subject_hash(h), is_subject_hash("customer-42")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from functools import lru_cache
from pathlib import Path

from pipelines.errors import AuditError

__all__ = ["SALT_BYTES", "SALT_ENV", "is_subject_hash", "load_salt", "salt_path",
           "subject_hash"]

SALT_ENV = "RIFFLE_AUDIT_SALT_FILE"
SALT_BYTES = 32
_DEFAULT = Path("~/.config/riffle/audit-salt")
_HASH = re.compile(r"[0-9a-f]{64}")


def salt_path() -> Path:
    return Path(os.environ.get(SALT_ENV) or _DEFAULT).expanduser()


def load_salt(path: Path | None = None) -> bytes:
    """The salt at ``path`` (default :func:`salt_path`), made on first use (0600)."""
    return _salt(str((path or salt_path()).resolve()))


@lru_cache(maxsize=8)
def _salt(path: str) -> bytes:
    where = Path(path)
    if not where.exists():
        try:
            where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Written whole under a private name, then linked in: a process that loses the
            # race to make it reads the winner's salt, never a half-written one.
            tmp = where.with_name(f".{where.name}.{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SALT_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, where)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        except OSError as e:
            raise AuditError(f"audit salt {where}: cannot create it: {e}") from None
    try:
        salt = where.read_bytes()
    except OSError as e:
        raise AuditError(f"audit salt {where}: cannot read it: {e}") from None
    if len(salt) < 16:  # a short salt would make the hashes guessable: refused, never used
        raise AuditError(f"audit salt {where} holds {len(salt)} bytes, expected at least 16 "
                         f"(set {SALT_ENV} to the registry's salt file)")
    return salt


def subject_hash(key: str, *, salt: bytes | None = None) -> str:
    """The key as the log may hold it: HMAC-SHA256(salt, key) in hex."""
    return hmac.new(load_salt() if salt is None else salt, key.encode("utf-8"),
                    hashlib.sha256).hexdigest()


def is_subject_hash(value: object) -> bool:
    """Whether ``value`` looks like :func:`subject_hash`'s output (64 lowercase hex)."""
    return isinstance(value, str) and _HASH.fullmatch(value) is not None
