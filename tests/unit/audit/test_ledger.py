"""The access log's Merkle tree against RFC 9162: roots, inclusion and consistency proofs
for every tree up to 64 entries, and the damage check_log names."""

from __future__ import annotations

import pytest

from pipelines.audit.ledger import (
    EMPTY_ROOT,
    ConsistencyProof,
    Frontier,
    InclusionProof,
    StoredEntry,
    TreeHead,
    check_log,
    consistency_proof,
    entry_bytes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

# The leaves of the Certificate Transparency reference test vectors, and the roots of
# their first n (n = 0..8) as published with them (a third-party implementation, pymerkle
# 7.0, gives the same roots).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
N_MAX = 64
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(N_MAX)]


def flipped(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def test_ledger_roots_equal_the_ct_reference_vectors() -> None:
    leaves = [leaf_hash(d) for d in CT_LEAVES]
    assert [tree_root(leaves[:n]).hex() for n in range(9)] == CT_ROOTS
    assert tree_root([]) == EMPTY_ROOT


def test_ledger_proofs_are_the_rfc_6962_worked_examples() -> None:
    # RFC 6962 2.1.3's tree of 7 leaves a..g (d0..d6): k, l are subtree roots.
    d = [leaf_hash(bytes([i])) for i in range(7)]
    g, h, i = node_hash(d[0], d[1]), node_hash(d[2], d[3]), node_hash(d[4], d[5])
    k, l_ = node_hash(g, h), node_hash(i, d[6])
    assert inclusion_proof(d, 0) == [d[1], h, l_]          # a: [b, h, l]
    assert inclusion_proof(d, 3) == [d[2], g, l_]          # d: [c, g, l]
    assert inclusion_proof(d, 4) == [d[5], d[6], k]        # e: [f, j, k]
    assert inclusion_proof(d, 6) == [i, k]                 # g: [i, k]
    assert consistency_proof(d, 3) == [d[2], d[3], g, l_]  # PROOF(3, D[7]) = [c, d, g, l]
    assert consistency_proof(d, 4) == [l_]                 # PROOF(4, D[7]) = [l]
    assert consistency_proof(d, 6) == [i, d[6], k]         # PROOF(6, D[7]) = [i, j, k]
    assert tree_root(d) == node_hash(k, l_)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162's MTH as the RFC writes it (recursive), the reference for the frontier."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def test_ledger_frontier_root_equals_the_rfcs_recursive_root_at_every_size() -> None:
    frontier = Frontier()
    assert frontier.root() == _mth([])
    for n, leaf in enumerate(LEAVES, start=1):
        frontier = frontier.append(leaf)
        assert frontier.size == n and len(frontier.nodes) == bin(n).count("1")
        assert frontier.root() == _mth(LEAVES[:n]) == tree_root(LEAVES[:n]), n


def test_ledger_inclusion_proofs_verify_for_every_entry_and_fail_with_any_hash_flipped(
        ) -> None:
    for n in range(1, N_MAX + 1):
        root = tree_root(LEAVES[:n])
        for index in range(n):
            proof = inclusion_proof(LEAVES, index, n)
            assert len(proof) <= (n - 1).bit_length()
            assert verify_inclusion(LEAVES[index], index, n, proof, root), (index, n)
            assert not verify_inclusion(flipped(LEAVES[index]), index, n, proof, root)
            assert not verify_inclusion(LEAVES[index], index, n, proof, flipped(root, 7))
            for j in range(len(proof)):
                bad = [flipped(p) if j == q else p for q, p in enumerate(proof)]
                assert not verify_inclusion(LEAVES[index], index, n, bad, root), (index, n, j)
            # The same proof does not pass for another place, a shorter or longer proof.
            if n > 1:
                other = (index + 1) % n
                assert not verify_inclusion(LEAVES[index], other, n, proof, root)
                assert not verify_inclusion(LEAVES[index], index, n, proof[:-1], root)
            assert not verify_inclusion(LEAVES[index], index, n, [*proof, root], root)
            assert not verify_inclusion(LEAVES[index], n, n, proof, root)


def test_ledger_consistency_proofs_verify_for_every_prefix_and_fail_with_any_hash_flipped(
        ) -> None:
    roots = [tree_root(LEAVES[:n]) for n in range(N_MAX + 1)]
    for n in range(N_MAX + 1):
        for m in range(n + 1):
            proof = consistency_proof(LEAVES, m, n)
            assert len(proof) <= 2 * max(n.bit_length(), 1)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            for j in range(len(proof)):
                bad = [flipped(p) if j == q else p for q, p in enumerate(proof)]
                assert not verify_consistency(m, n, roots[m], roots[n], bad), (m, n, j)
            if m > 0:  # the empty tree is consistent with any tree: only its root is checked
                assert not verify_consistency(m, n, roots[m], flipped(roots[n]), proof)
            assert not verify_consistency(m, n, flipped(roots[m]), roots[n], proof), (m, n)
            if 0 < m < n:  # a proof for another pair of sizes does not pass
                assert not verify_consistency(m, n, roots[m], roots[n], proof[:-1])
                if m + 1 < n:
                    assert not verify_consistency(m + 1, n, roots[m + 1], roots[n], proof)


def test_ledger_consistency_fails_when_the_old_tree_is_not_a_prefix() -> None:
    n, m = 13, 6
    edited = list(LEAVES[:n])
    edited[2] = leaf_hash(b"edited")
    proof = consistency_proof(edited, m, n)
    assert not verify_consistency(m, n, tree_root(LEAVES[:m]), tree_root(edited), proof)


def test_ledger_proofs_of_entries_or_sizes_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="no entry 5 in a tree of 5"):
        inclusion_proof(LEAVES[:5], 5)
    with pytest.raises(ValueError, match="no consistency proof from 6 to 5"):
        consistency_proof(LEAVES[:8], 6, 5)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES[:4], 2, 9)


def test_ledger_hex_proofs_round_trip_and_verify_against_a_recorded_root() -> None:
    n = 11
    root = tree_root(LEAVES[:n]).hex()
    proof = InclusionProof(7, n, LEAVES[7].hex(),
                           tuple(h.hex() for h in inclusion_proof(LEAVES, 7, n)), root)
    assert proof.verify() and proof.verify(root)
    assert not proof.verify(tree_root(LEAVES[:n - 1]).hex())
    assert proof.to_json()["path"] == list(proof.path)
    cons = ConsistencyProof(4, n, tree_root(LEAVES[:4]).hex(), root,
                            tuple(h.hex() for h in consistency_proof(LEAVES, 4, n)))
    assert cons.verify() and not cons.verify(first_root=tree_root(LEAVES[:5]).hex())


# -- check_log ------------------------------------------------------------------------

def _log(n: int) -> list[StoredEntry]:
    out = []
    for i in range(n):
        fields = {"action": "deploy", "actor": f"user{i}", "details": {"n": i}}
        out.append(StoredEntry(i, fields, leaf_hash(entry_bytes(i, fields)).hex()))
    return out


def _renumbered(rows: list[StoredEntry]) -> list[StoredEntry]:
    """Rows moved to positions 0..n-1, each keeping its fields and stored hash."""
    return [StoredEntry(i, r.fields, r.leaf_hash) for i, r in enumerate(rows)]


def _head(rows: list[StoredEntry], n: int, source: str = "ckpt") -> TreeHead:
    return TreeHead(n, tree_root([bytes.fromhex(r.leaf_hash) for r in rows[:n]]).hex(), source)


def test_check_log_passes_an_intact_log_against_every_head() -> None:
    rows = _log(20)
    result = check_log(rows, [_head(rows, n) for n in (0, 1, 7, 20)])
    assert result.ok and result.size == 20
    assert result.root == _head(rows, 20).root
    assert check_log([]).ok and check_log([]).root == EMPTY_ROOT.hex()


@pytest.mark.parametrize(("damage", "problem", "index", "message"), [
    ("edit", "edited", 6, "entry 6 was edited"),
    ("delete-gap", "deleted", 6, "entry 6 is missing"),
    ("delete-two", "deleted", 6, "entries 6..7 are missing"),
    ("delete-renumber", "deleted", 6, "entry 6 was deleted"),
    ("insert-hashed", "inserted", 6, "entry 6 was inserted"),
    ("insert-garbage", "inserted", 6, "entry 6 was inserted"),
    ("swap-adjacent", "reordered", 6, "entries 6 and 7 were swapped"),
    ("swap-distant", "reordered", 6, "entries 6 and 15 were swapped"),
    ("truncate", "truncated", 17, "entries 17..19 are gone"),
    ("negative-index", "inserted", 0, "an entry with index -1 was inserted"),
])
def test_check_log_names_the_first_bad_entry(damage: str, problem: str, index: int,
                                              message: str) -> None:
    rows = _log(20)
    heads = [_head(rows, 5), _head(rows, 20)]
    extra = {"action": "deploy", "actor": "mallory", "details": {}}
    if damage == "edit":
        rows[6] = StoredEntry(6, {**rows[6].fields, "actor": "mallory"}, rows[6].leaf_hash)
        rows[12] = StoredEntry(12, {**rows[12].fields, "actor": "eve"}, rows[12].leaf_hash)
    elif damage == "delete-gap":
        del rows[6]
    elif damage == "delete-two":
        del rows[6:8]
    elif damage == "delete-renumber":
        del rows[6]
        rows = _renumbered(rows)
    elif damage.startswith("insert"):
        forged = (leaf_hash(entry_bytes(6, extra)).hex() if damage == "insert-hashed"
                  else "00" * 32)
        rows = _renumbered([*rows[:6], StoredEntry(6, extra, forged), *rows[6:]])
    elif damage == "swap-adjacent":
        rows[6], rows[7] = rows[7], rows[6]
        rows = _renumbered(rows)
    elif damage == "swap-distant":
        rows[6], rows[15] = rows[15], rows[6]
        rows = _renumbered(rows)
    elif damage == "truncate":
        del rows[17:]
    elif damage == "negative-index":
        rows.append(StoredEntry(-1, extra, leaf_hash(entry_bytes(-1, extra)).hex()))
    result = check_log(rows, heads)
    assert result.finding is not None, damage
    assert (result.finding.problem, result.finding.index) == (problem, index)
    assert message in result.finding.message


def test_check_log_localises_a_rewrite_with_recomputed_hashes_between_recorded_heads(
        ) -> None:
    rows = _log(40)
    heads = [_head(rows, n, f"ckpt-{n}") for n in (8, 16, 24, 25, 40)]
    forged = {**rows[24].fields, "actor": "mallory"}
    rows[24] = StoredEntry(24, forged, leaf_hash(entry_bytes(24, forged)).hex())
    assert all(r.leaf_at(r.index).hex() == r.leaf_hash for r in rows)  # each row passes
    finding = check_log(rows, heads).finding
    assert finding is not None
    assert (finding.problem, finding.index) == ("rewritten", 24)
    assert "do not hash to the root recorded (ckpt-25): entry 24 was changed" in \
        finding.message
    # With one head only, the rewrite is known to lie before it, no closer.
    finding = check_log(rows, heads[-1:]).finding
    assert finding is not None and finding.index == 0
    assert "an entry in 0..39 was changed" in finding.message
    # Without any recorded head, a consistent rewrite goes unseen: the limit of the scheme.
    assert check_log(rows).ok


def test_check_log_reports_the_earliest_of_two_damages() -> None:
    rows = _log(30)
    heads = [_head(rows, 10), _head(rows, 30)]
    forged = {**rows[3].fields, "actor": "mallory"}
    rows[3] = StoredEntry(3, forged, leaf_hash(entry_bytes(3, forged)).hex())  # rehashed
    rows[20] = StoredEntry(20, {**rows[20].fields, "actor": "eve"}, rows[20].leaf_hash)
    finding = check_log(rows, heads).finding
    assert finding is not None and (finding.problem, finding.index) == ("rewritten", 0)
