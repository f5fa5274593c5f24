"""``riffle audit``: answers for auditors. Here, the access and decision log's tamper
evidence: ``verify`` and ``prove`` (``--json`` on each).

- ``riffle audit verify CONFIG`` recomputes the log from CONFIG's registry and checks it
  against every tree head (size, root) recorded in the checkpoints' manifests (their
  ``access_log``), and against the registry's own head row: it names the first entry
  edited, deleted, inserted or reordered, or a truncated tail, and exits 1. Without a
  recorded head it can only recompute and print the head.
- ``riffle audit prove CONFIG ENTRY [--size N]``: an inclusion proof of ENTRY in the tree
  of the first N entries (default: the newest recorded head that holds it, else all).
- ``riffle audit prove CONFIG --consistency M N``: a consistency proof that the first M
  entries are a prefix of the first N.

A proof is checked before it is printed: against the recorded root when a head of that
size was recorded (a failure exits 1), else only against the root recomputed now. Each
command is itself logged (``audit.verify``, ``audit.prove``), after it answered. The
group is :data:`audit`; other modules add their commands to it
(``audit.add_command(...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipelines.cli.models import open_registry, registry_options
from pipelines.cli.output import Fail, Failed, one_line, print_json
from pipelines.errors import RiffleError

if TYPE_CHECKING:
    from pipelines.audit.ledger import TreeHead, Verification

__all__ = ["audit"]

_json_option = click.option("--json", "as_json", is_flag=True,
                            help="One JSON document on stdout (for scripts).")


@click.group()
def audit() -> None:
    """Answers for auditors: the access and decision log, verified and proven."""


def _head_json(head: TreeHead) -> dict[str, Any]:
    return {"size": head.size, "root": head.root, "source": head.source}


def _heads(store_url: str) -> list[TreeHead]:
    from pipelines.registry.access import recorded_heads

    with one_line():
        return recorded_heads(store_url)


@audit.command()
@registry_options
@_json_option
def verify(config: Path, registry_url: str | None, as_json: bool) -> None:
    """Recompute CONFIG's access log and check it against the recorded tree heads."""
    cfg, registry = open_registry(config, registry_url)
    heads = _heads(cfg.checkpoint_store_url())
    with registry:
        with one_line():
            result = registry.verify_access(heads=heads)
        finding = result.finding
        try:
            registry.log_access("audit.verify", pipeline=cfg.name, ok=result.ok,
                                size=result.size, root=result.root, n_heads=len(heads),
                                finding=finding.message if finding else None)
        except RiffleError as e:
            if finding is None:  # a damaged log's finding matters more than this failure
                raise Fail(str(e)) from None
    if as_json:
        print_json({"ok": result.ok, "size": result.size, "root": result.root,
                    "heads": [_head_json(h) for h in result.heads],
                    "finding": None if finding is None else {
                        "problem": finding.problem, "index": finding.index,
                        "message": finding.message}})
    else:
        _print_verification(result, heads)
    if finding is not None:
        raise Failed(f"access log: {finding.message}")


def _print_verification(result: Verification, recorded: list[TreeHead]) -> None:
    click.echo(f"access log: {result.size} entries, root {result.root}")
    if result.finding is not None:
        return
    if recorded:
        newest = recorded[-1]
        click.echo(f"intact: matches the {len(recorded)} tree heads recorded in checkpoints "
                   f"(newest: {newest.source}, {newest.size} entries)")
    else:
        click.echo("intact as far as the entries show: no checkpoint recorded a tree head, "
                   "so a rewrite of the whole log would not be seen")


@audit.command()
@registry_options
@click.argument("entry", type=int, required=False)
@click.option("--size", type=int, help="Prove ENTRY in the tree of the first N entries.")
@click.option("--consistency", nargs=2, type=int, metavar="M N",
              help="Prove that the first M entries are a prefix of the first N.")
@_json_option
def prove(config: Path, registry_url: str | None, entry: int | None, size: int | None,
          consistency: tuple[int, int] | None, as_json: bool) -> None:
    """An inclusion proof of ENTRY, or (--consistency M N) a consistency proof."""
    if (entry is None) == (consistency is None):
        raise Fail("name an ENTRY to prove, or --consistency M N (not both)")
    if consistency is not None and size is not None:
        raise Fail("--size is for an inclusion proof of an ENTRY")
    cfg, registry = open_registry(config, registry_url)
    heads = {h.size: h for h in _heads(cfg.checkpoint_store_url())}
    with registry, one_line():
        if entry is not None:
            if size is None:  # the newest recorded head that holds the entry, else all
                size = max((n for n in heads if n > entry), default=None)
            document, ok, line = _inclusion(registry, entry, size, heads)
            registry.log_access("audit.prove", pipeline=cfg.name, entry=entry,
                                size=document["size"], verified=ok)
        else:
            assert consistency is not None
            document, ok, line = _consistency(registry, *consistency, heads)
            registry.log_access("audit.prove", pipeline=cfg.name,
                                consistency=list(consistency), verified=ok)
    if as_json:
        print_json(document)
    else:
        click.echo(line)
        for i, h in enumerate(document["path"]):
            click.echo(f"  {i:>2} {h}")
    if not ok:
        raise Failed(f"access log: the proof does not verify against the recorded root: "
                     f"{document['against']}")


def _against(heads: dict[int, TreeHead], size: int, root: str) -> tuple[str, str, bool]:
    """The root to verify against, where it comes from, and whether it was recorded."""
    recorded = heads.get(size)
    if recorded is None:
        return root, "the root recomputed now (no head of this size was recorded)", False
    return recorded.root, f"the root recorded by {recorded.source}", True


def _inclusion(registry: Any, entry: int, size: int | None, heads: dict[int, TreeHead]
               ) -> tuple[dict[str, Any], bool, str]:
    proof = registry.inclusion_proof(entry, size)
    root, where, _ = _against(heads, proof.size, proof.root)
    ok = proof.verify(root)
    line = (f"entry {proof.index} is in the tree of the first {proof.size} entries "
            f"(leaf {proof.leaf}): {'verified' if ok else 'DOES NOT VERIFY'} against "
            f"{where}, {root}; path, leaf to root:")
    return {**proof.to_json(), "against": where, "verified": ok}, ok, line


def _consistency(registry: Any, m: int, n: int, heads: dict[int, TreeHead]
                 ) -> tuple[dict[str, Any], bool, str]:
    proof = registry.consistency_proof(m, n)
    root_m, where_m, _ = _against(heads, m, proof.first_root)
    root_n, where_n, _ = _against(heads, n, proof.second_root)
    ok = proof.verify(root_m, root_n)
    where = f"first: {where_m}; second: {where_n}"
    line = (f"the first {m} entries are a prefix of the first {n}: "
            f"{'verified' if ok else 'DOES NOT VERIFY'} ({where}); path:")
    return {**proof.to_json(), "against": where, "verified": ok}, ok, line
