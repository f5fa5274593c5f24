"""``riffle audit reproduce CONFIG VERSION [--json]``: rebuild a registered version from
what it was made of and prove it equal to its artifact.

A River version (``ckpt-N``, or ``<pipeline>/ckpt-N``) is rebuilt per scorer from its
parent checkpoint and the training log; a scikit-learn version is retrained from its
data manifest with its recorded parameters (:mod:`pipelines.audit.reproduce`). Every
parameter is compared, to 1e-12. The answer (equal or not, per scorer, with the hashes
of the artifact and of the rebuilt model) is logged in the access log (``reproduce``,
the version as target) before it is shown. Reproduced: exit 0; not: exit 1, naming the
first parameter that differs; an unknown version, a checkpoint or training log that is
missing: one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import Failed, logged, one_line, print_json, print_table
from pipelines.config import load_config

__all__ = ["reproduce"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--out", type=click.Path(path_type=Path),
              help="The run's output folder, if not CONFIG's (where its registry is; the "
                   "checkpoints are read where the registry says).")
@click.option("--registry", "registry_url", metavar="URL",
              help="Registry database (default sqlite:///<out_dir>/registry.db).")
def reproduce(config: Path, version: str, as_json: bool, out: Path | None,
              registry_url: str | None) -> None:
    """Rebuild VERSION from its parent and training data; prove it equal to its artifact."""
    from pipelines.audit.reproduce import Reproducer
    from pipelines.registry import Registry

    with one_line():
        cfg = load_config(config)
        registry = Registry(registry_url or cfg.registry_url(out), create=False)
    reproducer = Reproducer(cfg, registry=registry)
    target = version

    def ask() -> dict[str, Any]:
        nonlocal target
        target = reproducer.resolve(version)
        return reproducer.reproduce(target)

    with registry:
        doc = logged(registry, "reproduce", ask, lambda doc: {
            "pipeline": cfg.name, "target": target, **(_logged(doc) if doc else {})})
    if as_json:
        print_json(doc)
    else:
        _show(doc)
    if not doc["reproduced"]:
        raise Failed(f"{doc['version']} is not reproduced: {doc['first_difference']}")


def _logged(doc: dict[str, Any]) -> dict[str, Any]:
    """What the access log keeps: the verdict and, per scorer, the hashes."""
    keep = ("model_version", "equal", "max_error", "same_bytes", "part_sha256",
            "model_sha256", "rebuilt_sha256", "rebuilt_from", "replayed")
    return {"reproduced": doc["reproduced"], "first_difference": doc["first_difference"],
            "artifact_sha256": doc["artifact_sha256"], "tolerance": doc["tolerance"],
            "scorers": {name: {k: p[k] for k in keep}
                        for name, p in doc["scorers"].items()}}


def _show(doc: dict[str, Any]) -> None:
    from rich.table import Table

    verdict = "REPRODUCED" if doc["reproduced"] else "NOT REPRODUCED"
    click.echo(f"{doc['version']} ({doc['kind']}, {doc['model_class']}): {verdict}")
    click.echo(f"  parent {doc['parent'] or '-'}; artifact sha256 {doc['artifact_sha256']}")
    click.echo(f"  {doc['method']} (tolerance {doc['tolerance']:g})")
    table = Table("scorer", "version", "rebuilt from", "replayed", "equal", "max diff",
                  "same bytes", "artifact model sha256", "rebuilt sha256")
    for name, p in doc["scorers"].items():
        table.add_row(name, p["model_version"], p["rebuilt_from"], f"{p['replayed']:,}",
                      "yes" if p["equal"] else "NO", f"{p['max_error']:.3g}",
                      "yes" if p["same_bytes"] else "no", p["model_sha256"][:16],
                      p["rebuilt_sha256"][:16])
    print_table(table)
    for name, p in doc["scorers"].items():
        for note in p["notes"]:
            click.echo(f"  {name}: {note}")
