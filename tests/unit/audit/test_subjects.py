"""Subject hashes: salted (the salt outside the log, made once, 0600), stable, no key in clear."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from pipelines.audit import subjects
from pipelines.audit.subjects import SALT_ENV, is_subject_hash, load_salt, subject_hash
from pipelines.errors import AuditError


def test_subject_hash_makes_the_salt_once_private_and_hashes_stably(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    salt_file = tmp_path / "conf" / "audit-salt"
    monkeypatch.setenv(SALT_ENV, str(salt_file))
    first = subject_hash("customer-42")
    assert salt_file.exists() and stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert len(salt_file.read_bytes()) == subjects.SALT_BYTES
    subjects._salt.cache_clear()  # as a new process would: the salt is read back
    assert subject_hash("customer-42") == first
    assert is_subject_hash(first) and "customer-42" not in first
    assert subject_hash("customer-43") != first
    # Another salt (another deployment), another hash: not guessable from the key alone.
    monkeypatch.setenv(SALT_ENV, str(tmp_path / "other-salt"))
    assert subject_hash("customer-42") != first


def test_subject_hash_refuses_a_salt_too_short(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    short = tmp_path / "short-salt"
    short.write_bytes(b"abc")
    monkeypatch.setenv(SALT_ENV, str(short))
    with pytest.raises(AuditError, match="holds 3 bytes, expected at least 16"):
        subject_hash("k")


def _salt_of(path: str) -> bytes:
    return load_salt(Path(path))


def test_subject_hash_salt_made_by_racing_processes_is_one_salt(tmp_path: Path) -> None:
    path = str(tmp_path / "raced" / "audit-salt")
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        salts = pool.map(_salt_of, [path] * 12)
    assert len(set(salts)) == 1 and len(salts[0]) == subjects.SALT_BYTES
    assert sorted(p.name for p in (tmp_path / "raced").iterdir()) == ["audit-salt"]
