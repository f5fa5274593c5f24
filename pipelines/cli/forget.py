"""``riffle forget CONFIG --key KEY``: erase a data subject and unlearn it exactly
(:mod:`pipelines.audit.forget`), on a stopped pipeline here, or on a running one through
its control stream (:mod:`pipelines.audit.forget_request`, applied by the Supervisor:
:mod:`actors.erasure`); the certificate is printed and kept in the access log
(``riffle audit verify`` checks it with the rest of the log)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from pipelines.cli.output import Failed, one_line, print_json, print_table
from pipelines.config import load_config

__all__ = ["forget"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--key", "subject", required=True, help="The data subject's key.")
@click.option("--reason", help="Why (kept in the certificate), e.g. a request's ticket.")
@click.option("--suppress", is_flag=True,
              help="Also dead-letter the key's later events as 'erased subject'.")
@click.option("--out", type=click.Path(path_type=Path),
              help="The run's output folder, if not CONFIG's.")
@click.option("--registry", "registry_url", metavar="URL",
              help="Registry database (default sqlite:///<out_dir>/registry.db).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=300.0, show_default=True,
              help="Seconds to wait for a running pipeline's certificate.")
@click.option("--json", "as_json", is_flag=True, help="The certificate as one JSON document.")
def forget(config: Path, subject: str, reason: str | None, suppress: bool, out: Path | None,
           registry_url: str | None, timeout_s: float, as_json: bool) -> None:
    """Remove KEY's data from every store riffle owns and rebuild the models without it.
    A running pipeline does it between batches (no record lost or learned twice) and
    goes on from the rebuilt models; a stopped one continues from them on --resume."""
    import time

    from pipelines.audit.forget import Forgetter, running_since
    from pipelines.audit.forget_request import send_forget
    from pipelines.registry import Registry, default_actor

    with one_line():
        cfg = load_config(config, check_model=False)
    if running_since(Path(out or cfg.out_dir), time.time()) is not None:
        with one_line():
            sent = send_forget(cfg, subject, actor=default_actor(), out_dir=out,
                               reason=reason, suppress=suppress, timeout_s=timeout_s)
        if sent is None:
            raise Failed(f"no certificate from running pipeline {cfg.name} within "
                         f"{timeout_s:g} s (withdrawn, unless it was already taken up)")
        cert = sent
    else:
        with one_line():
            registry = (Registry(registry_url or cfg.registry_url(out))
                        if cfg.registry.enabled or registry_url else None)
        try:
            with one_line():
                cert = Forgetter(cfg, out_dir=out, registry=registry).forget(
                    subject, reason=reason, suppress=suppress)
        finally:
            if registry is not None:
                registry.close()
    if as_json:
        print_json(cert)
        return
    table = Table(title=f"forgotten: subject {cert['subject'][:16]}… "
                        f"({cert['n_records']} records)", show_header=False)
    for store, n in cert["removed"].items():
        table.add_row(f"removed from {store}", f"{n:,}")
    models = cert["models"]
    if models:
        table.add_row("models rebuilt", f"{models['rebuilt_checkpoint']} from {models['from']} "
                      f"({models['replayed']:,} examples replayed, {models['skipped']:,} "
                      "of the subject skipped)")
        table.add_row("checkpoints deleted", ", ".join(models["deleted_checkpoints"]) or "-")
        table.add_row("versions retired", ", ".join(models["retired_versions"]) or "-")
        table.add_row("tainted (learned from it)", ", ".join(models["tainted"]) or "-")
    table.add_row("later events", "dead-lettered (suppressed)" if cert["suppressed"]
                  else "learned as usual (use --suppress to refuse them)")
    table.add_row("certificate", f"access log entry {cert.get('log_index', '-')}, "
                  f"by {cert['actor']}")
    outside = Table(title="not owned by riffle: not deleted here")
    outside.add_column("store")
    outside.add_column("what would remove the data there")
    for row in cert["not_owned"]:
        outside.add_row(row["store"], row["action"])
    print_table(table, outside)
