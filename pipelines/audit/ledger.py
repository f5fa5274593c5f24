"""The access and decision log's Merkle tree, built as Certificate Transparency builds its
logs (RFC 9162 section 2.1, RFC 6962's hashing): a tree head (size, root) commits to
every entry and to their order, and proofs of a few hashes show what it commits to.

- leaf = SHA-256(0x00 || entry bytes), node = SHA-256(0x01 || left || right) (the prefixes
  keep a leaf from passing for a node); the tree over n leaves splits at the largest
  power of two below n; the empty tree's root is SHA-256 of nothing;
- an **inclusion proof** (RFC 9162's audit path) shows that a leaf is entry ``index`` of
  the tree of ``size`` entries with a given root: about log2(size) hashes;
- a **consistency proof** shows that the tree of ``m`` entries is a prefix of the tree of
  ``n``: nothing before ``m`` was edited, deleted, inserted or reordered since the head
  (m, root_m) was recorded;
- :func:`check_log` goes further for a log whose entries are at hand: it names the first
  entry that was edited, deleted, inserted or moved, or a truncated tail.

Indexes count from 0. The proofs are RFC 9162's own lists of hashes, so any CT verifier
can check them; nothing here knows SQL or Ray.

Why not pymerkle 7, which has inclusion and consistency proofs and SQLite-backed trees:
its trees own their storage (a leaf is committed in the tree's own transaction, in its
own table), whereas an entry must be written in the same transaction as the lifecycle
write it records, in the registry's table, on PostgreSQL as well as SQLite, with
appenders in several processes serialised by the database (pymerkle's lock is one
process's); a storage subclass would leave it only the hashing, and its subroot cache,
keyed by position, would keep serving a subtree's old root after the rows under it were
edited, which is what a verifier must not trust. Its proofs are its own format too
(1-based, with its own rule bits), not the RFC's audit paths. The RFC's hashing is a few
dozen lines: here, checked against the reference roots of the CT test vectors.

>>> entries = [b"deploy", b"promote", b"rollback"]
>>> leaves = [leaf_hash(e) for e in entries]
>>> head = tree_root(leaves)
>>> proof = inclusion_proof(leaves, 1)
>>> len(proof), verify_inclusion(leaf_hash(b"promote"), 1, 3, proof, head)
(2, True)
>>> verify_inclusion(leaf_hash(b"promote!"), 1, 3, proof, head)
False
>>> first = tree_root(leaves[:2])
>>> verify_consistency(2, 3, first, head, consistency_proof(leaves, 2))
True
>>> verify_consistency(2, 3, tree_root([leaves[1], leaves[0]]), head,
...                    consistency_proof(leaves, 2))
False
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EMPTY_ROOT", "ConsistencyProof", "Finding", "Frontier", "InclusionProof",
           "Problem", "StoredEntry", "TreeHead", "Verification", "check_log",
           "consistency_proof", "entry_bytes", "inclusion_proof", "leaf_hash", "node_hash",
           "tree_root", "verify_consistency", "verify_inclusion"]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def entry_bytes(index: int, fields: Mapping[str, Any]) -> bytes:
    """What entry ``index`` is hashed as: its fields and its index as JSON with sorted
    keys, no spaces, ASCII (the same bytes from any database that stored the fields).

    The index is part of the leaf, so an entry moved to another place no longer matches
    its leaf hash there (and :func:`check_log` can tell where it came from).

    >>> entry_bytes(7, {"actor": "ann", "details": {"p": 0.5, "n": 3}})
    b'{"actor":"ann","details":{"n":3,"p":0.5},"index":7}'
    """
    return json.dumps({**fields, "index": index}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("ascii")


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n >= 2): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) for ``lo < hi``."""
    if hi - lo == 1:
        return leaves[lo]
    k = _split(hi - lo)
    return node_hash(_subtree(leaves, lo, lo + k), _subtree(leaves, lo + k, hi))


@dataclass(frozen=True)
class Frontier:
    """The roots of the perfect subtrees a tree of ``size`` leaves is made of, largest
    first (one per 1-bit of ``size``): enough to append a leaf and to compute the root,
    each in O(log n) hashes, without the leaves before.

    >>> f = Frontier()
    >>> for i in range(5):
    ...     f = f.append(leaf_hash(bytes([i])))
    >>> f.size, len(f.nodes), f.root() == tree_root([leaf_hash(bytes([i])) for i in range(5)])
    (5, 2, True)
    """

    size: int = 0
    nodes: tuple[bytes, ...] = ()

    def append(self, leaf: bytes) -> Frontier:
        nodes = [*self.nodes, leaf]
        carry = self.size
        while carry & 1:  # two perfect subtrees of one height are now siblings: merge them
            right = nodes.pop()
            nodes.append(node_hash(nodes.pop(), right))
            carry >>= 1
        return Frontier(self.size + 1, tuple(nodes))

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            acc = node_hash(node, acc)
        return acc


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The root (MTH) of the tree over these leaf hashes."""
    frontier = Frontier()
    for leaf in leaves:
        frontier = frontier.append(leaf)
    return frontier.root()


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None
                    ) -> list[bytes]:
    """RFC 9162's PATH(index, D[size]): the sibling hashes from the leaf up to the root."""
    n = len(leaves) if size is None else size
    if not 0 <= index < n <= len(leaves):
        raise ValueError(f"no entry {index} in a tree of {n} (of {len(leaves)} leaves)")
    path: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:  # top-down; the RFC lists the path bottom-up
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_subtree(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree(leaves, lo, lo + k))
            lo += k
    return path[::-1]


def consistency_proof(leaves: Sequence[bytes], m: int, n: int | None = None) -> list[bytes]:
    """RFC 9162's PROOF(m, D[n]): the hashes that take the root of the first ``m``
    leaves to the root of the first ``n``; empty when ``m`` is 0 or ``n``."""
    n = len(leaves) if n is None else n
    if not 0 <= m <= n <= len(leaves):
        raise ValueError(f"no consistency proof from {m} to {n} entries "
                         f"(of {len(leaves)} leaves)")
    if m in (0, n):
        return []
    path: list[bytes] = []
    lo, hi, whole = 0, n, True  # SUBPROOF(m - lo, D[lo:hi], whole), unrolled top-down
    while m != hi:
        k = _split(hi - lo)
        if m <= lo + k:
            path.append(_subtree(leaves, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree(leaves, lo, lo + k))
            lo += k
            whole = False
    if not whole:  # the old tree is a proper subtree here: its root is part of the proof
        path.append(_subtree(leaves, lo, hi))
    return path[::-1]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` take ``leaf`` at ``index`` to ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree (m, root_m) a prefix of the tree (n, root_n)?

    The cases the RFC leaves aside: a tree is consistent with itself (same root, empty
    proof), and the empty tree with every tree (its root is :data:`EMPTY_ROOT`).
    """
    if not 0 <= m <= n:
        return False
    if m == n:
        return not proof and hmac.compare_digest(root_m, root_n)
    if m == 0:
        return not proof and hmac.compare_digest(root_m, EMPTY_ROOT)
    path = list(proof)
    if m & (m - 1) == 0:  # the old tree is a perfect subtree: its root starts the path
        path.insert(0, root_m)
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, root_m) and hmac.compare_digest(sr, root_n)


# -- proofs and heads as they travel (hex) ------------------------------------------------

@dataclass(frozen=True)
class TreeHead:
    """A recorded (size, root): where it was recorded is ``source`` (a checkpoint's
    manifest, an operator's note)."""

    size: int
    root: str
    source: str = ""


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``index`` (whose leaf hash is ``leaf``) is in the tree (``size``, ``root``)."""

    index: int
    size: int
    leaf: str
    path: tuple[str, ...]
    root: str

    def verify(self, root: str | None = None) -> bool:
        """Against ``root`` (a recorded one), else the root the proof was made for."""
        return verify_inclusion(bytes.fromhex(self.leaf), self.index, self.size,
                                [bytes.fromhex(h) for h in self.path],
                                bytes.fromhex(root or self.root))

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "leaf_hash": self.leaf,
                "path": list(self.path), "root": self.root}


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree (``first``, ``first_root``) is a prefix of (``second``, ``second_root``)."""

    first: int
    second: int
    first_root: str
    second_root: str
    path: tuple[str, ...]

    def verify(self, first_root: str | None = None, second_root: str | None = None) -> bool:
        """Against recorded roots, else the roots the proof was made for."""
        return verify_consistency(self.first, self.second,
                                  bytes.fromhex(first_root or self.first_root),
                                  bytes.fromhex(second_root or self.second_root),
                                  [bytes.fromhex(h) for h in self.path])

    def to_json(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "first_root": self.first_root,
                "second_root": self.second_root, "path": list(self.path)}


# -- checking a whole log ----------------------------------------------------------------

Problem = Literal["edited", "deleted", "inserted", "reordered", "truncated", "rewritten"]


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the database holds it: its index, its hashed fields, and the leaf hash
    (hex) written beside it when it was appended."""

    index: int
    fields: Mapping[str, Any]
    leaf_hash: str

    def leaf_at(self, index: int) -> bytes:
        return leaf_hash(entry_bytes(index, self.fields))


@dataclass(frozen=True)
class Finding:
    """The first thing wrong with a log: what (``problem``), from which entry on, and one
    line saying so."""

    problem: Problem
    index: int
    message: str


@dataclass(frozen=True)
class Verification:
    """A log recomputed from its entries: ``size`` and ``root`` (hex) as it stands, the
    heads it was compared with, and the first thing wrong (None: nothing)."""

    size: int
    root: str
    heads: tuple[TreeHead, ...] = ()
    finding: Finding | None = None
    leaves: tuple[bytes, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.finding is None


def check_log(entries: Sequence[StoredEntry], heads: Iterable[TreeHead] = ()) -> Verification:
    """Recompute every entry's leaf hash and the tree over them, and compare with the
    leaf hashes stored beside the entries and with each recorded head.

    Entries are taken in index order, the n-th at position n. Found, the first of:

    - a gap in the indexes: entries **deleted**;
    - an entry that does not hash to its stored leaf hash: **edited**, or, when it
      hashes to it at another index, moved: **deleted** (the ones after it moved down),
      **inserted** (moved up), or **reordered** (two swapped);
    - a recorded head larger than the log: a **truncated** tail;
    - a recorded head whose root the first ``size`` entries no longer hash to, although
      each entry matches its stored hash: entries **rewritten** with their leaf hashes
      recomputed. The first bad entry is then only known to lie between the largest
      head that still matches and this one (so the more heads recorded, the closer).

    >>> stored = [StoredEntry(i, {"action": a}, leaf_hash(entry_bytes(i, {"action": a})).hex())
    ...           for i, a in enumerate(["deploy", "promote", "rollback", "retire"])]
    >>> check_log(stored).ok
    True
    >>> moved = [StoredEntry(1, stored[2].fields, stored[2].leaf_hash),
    ...          StoredEntry(2, stored[1].fields, stored[1].leaf_hash)]
    >>> swapped = [stored[0], *moved, stored[3]]
    >>> print(check_log(swapped).finding.message)
    entries 1 and 2 were swapped
    """
    rows = sorted(entries, key=lambda e: e.index)
    leaves = tuple(e.leaf_at(pos) for pos, e in enumerate(rows))
    recorded = tuple(sorted(heads, key=lambda h: h.size))
    bad_row = _first_bad_row(rows, leaves)
    # The heads within the entries that check out can still tell of a rewrite before them.
    upto = bad_row.index if bad_row is not None else len(rows)
    bad_head = _first_bad_head(leaves[:upto], recorded, len(rows))
    found = [f for f in (bad_row, bad_head) if f is not None]
    return Verification(len(rows), tree_root(leaves).hex(), recorded,
                        min(found, key=lambda f: f.index) if found else None, leaves)


def _first_bad_row(rows: Sequence[StoredEntry], leaves: Sequence[bytes]) -> Finding | None:
    for pos, (row, leaf) in enumerate(zip(rows, leaves, strict=True)):
        if row.index < pos:  # only possible for an index below 0: no entry was given it
            return Finding("inserted", pos, f"an entry with index {row.index} was inserted")
        if row.index != pos:
            gone = (f"entry {pos} is" if row.index == pos + 1
                    else f"entries {pos}..{row.index - 1} are")
            return Finding("deleted", pos, f"{gone} missing (deleted)")
        if leaf.hex() != row.leaf_hash:
            return _diagnose(rows, leaves, pos)
    return None


def _moved_from(row: StoredEntry, n: int) -> int | None:
    """The index at which ``row``'s fields hash to its stored leaf hash, if any."""
    for j in range(n + 1):
        if j != row.index and row.leaf_at(j).hex() == row.leaf_hash:
            return j
    return None


def _diagnose(rows: Sequence[StoredEntry], leaves: Sequence[bytes], pos: int) -> Finding:
    """What happened at ``pos``, the first entry that does not match its leaf hash."""
    n = len(rows)

    def moved(p: int) -> int | None:  # where a mismatched row's fields came from
        if p >= n or leaves[p].hex() == rows[p].leaf_hash:
            return None
        return _moved_from(rows[p], n)

    came_from = moved(pos)
    if came_from is not None and moved(came_from) == pos:
        return Finding("reordered", pos, f"entries {pos} and {came_from} were swapped")
    if came_from == pos - 1 or (came_from is None and moved(pos + 1) == pos):
        at = pos - 1 if came_from == pos - 1 else pos
        return Finding("inserted", at, f"entry {at} was inserted (the entries after it were "
                                       "moved up by one)")
    if came_from == pos + 1:
        return Finding("deleted", pos, f"entry {pos} was deleted (the entries after it were "
                                       "moved down by one)")
    if came_from is not None:
        return Finding("reordered", pos, f"entry {pos} holds what was entry {came_from} "
                                         "(entries were reordered)")
    return Finding("edited", pos, f"entry {pos} was edited: it does not hash to its "
                                  "recorded leaf hash")


def _first_bad_head(leaves: Sequence[bytes], heads: Sequence[TreeHead], n_rows: int
                    ) -> Finding | None:
    frontier = Frontier()
    good = 0  # the largest head size whose root still matches
    for head in heads:
        where = f" ({head.source})" if head.source else ""
        if head.size > n_rows:
            return Finding("truncated", n_rows,
                           f"the log ends after {n_rows} entries, but a head of {head.size} "
                           f"was recorded{where}: entries {n_rows}..{head.size - 1} are gone "
                           "(truncated)")
        if head.size > len(leaves):
            break  # beyond the first bad row: that one explains any mismatch
        while frontier.size < head.size:
            frontier = frontier.append(leaves[frontier.size])
        if frontier.root().hex() != head.root.lower():
            span = (f"entry {good}" if head.size - good == 1
                    else f"an entry in {good}..{head.size - 1}")
            return Finding("rewritten", good,
                           f"the first {head.size} entries do not hash to the root recorded"
                           f"{where}: {span} was changed and its leaf hash recomputed")
        good = head.size
    return None
