"""``riffle explain CONFIG RECORD_ID [--json] [--arm ARM]``: why the model said what it
said about one record, of the model exactly as it was when it scored it.

The model is rebuilt from a checkpoint and the training log
(:mod:`pipelines.audit.explain`); the check of exactness is always shown: the rebuilt
model's score of the record equals the audited one to 1e-9, else the command says so and
exits 1 (an explanation of another model is worse than none). An unknown record, a
record whose model cannot be rebuilt (its checkpoint pruned and nothing retained before
it), or a model that needs SHAP without the ``shap`` package: one line, exit 2. Each
question is logged in the access log (``explain``, the version as target, the key only as
its subject hash), answered or not, before anything is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import Failed, logged, one_line, print_json, print_table
from pipelines.config import load_config

__all__ = ["explain"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("record_id")
@click.option("--arm", help="The arm whose decision to explain (default: the served one; "
                            "a shadow arm's by its name).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--registry", "registry_url", metavar="URL",
              help="Registry database (default sqlite:///<out_dir>/registry.db).")
@click.option("--out", type=click.Path(path_type=Path),
              help="The run's output folder, if not CONFIG's.")
def explain(config: Path, record_id: str, arm: str | None, as_json: bool,
            registry_url: str | None, out: Path | None) -> None:
    """Explain RECORD_ID's score with the model exactly as it was when it scored it."""
    from pipelines.lazy import AUDIT_COLD, AUDIT_COLD_PACKAGES, defer

    # a cold command: River's unused families load only if read
    defer(*AUDIT_COLD, packages=AUDIT_COLD_PACKAGES)
    from pipelines.audit.explain import Explainer
    from pipelines.audit.subjects import subject_hash
    from pipelines.registry import Registry

    with one_line():
        cfg = load_config(config)
        registry = Registry(registry_url or cfg.registry_url(out), create=False)
    def ask() -> dict[str, Any]:
        with Explainer(cfg, store_url=cfg.checkpoint_store_url(out),
                       registry=registry) as explainer:
            return explainer.explain(record_id, arm)

    def entry(doc: dict[str, Any] | None) -> dict[str, Any]:
        about = ({"target": doc["model_version"], "subject": subject_hash(doc["key"]),
                  "exact": doc["exact"]} if doc is not None else {})
        return {"pipeline": cfg.name, "record": record_id, "arm": arm, **about}

    with registry:
        doc = logged(registry, "explain", ask, entry)
    if as_json:
        print_json(doc)
    else:
        _show(doc)
    if not doc["exact"]:
        raise Failed(f"record {record_id}: the rebuilt model scores it {doc['rebuilt_score']}, "
                     f"the audit trail says {doc['audited_score']} (off by "
                     f"{doc['max_error']:.3g}): this is not the model that scored it")


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _score(score: Any) -> str:
    if isinstance(score, dict):
        return "  ".join(f"{c}: {_num(p)}" for c, p in score.items())
    return _num(score)


def _show(doc: dict[str, Any]) -> None:
    from rich.table import Table

    echo = click.echo
    echo(f"record {doc['record_id']} (key {doc['key']}), scored by {doc['model_version']} "
         f"(arm {doc['arm']}) on {doc['scorer']}")
    echo(f"  prediction {_num(doc['prediction'])}; score {_score(doc['audited_score'])}")
    echo(f"  model rebuilt from {doc['rebuilt_from']} + {doc['replayed']} examples "
         f"replayed (the {doc['examples_before']} learned before it)")
    if doc["fallback"]:
        echo(f"  {doc['fallback']}")
    for note in doc["notes"]:
        echo(f"  {note}")
    verdict = ("yes: the rebuilt model's score equals the audited score"
               if doc["exact"] else "NO: the rebuilt model's score differs from the audit")
    echo(f"  exact: {verdict} (largest difference {doc['max_error']:.3g}, tolerance "
         f"{doc['tolerance']:g})")
    method = doc["method"]
    if method == "linear":
        lin = doc["linear"]
        kind = "log-odds" if lin["link"] == "logistic" else "value"
        echo(f"linear: raw score ({kind}) {_num(lin['raw_score'])} = intercept "
             f"{_num(lin['intercept'])} + the contributions below (sum off by "
             f"{abs(lin['residual']):.2g})")
        columns = ["feature", "value", "scaled", "weight", "contribution"]
        if lin["scaler"]:
            columns += ["mean", "variance"]
        table = Table(*columns)
        for c in lin["contributions"]:
            table.add_row(*(_num(c[k]) for k in columns))
        print_table(table)
    elif method == "tree":
        why = doc["tree"]
        table = Table("depth", "test", "record's value")
        for step in why["path"]:
            value = "missing (most common branch)" if step["missing"] else _num(step["value"])
            table.add_row(str(step["depth"]), step["test"], value)
        echo("tree: the decision path")
        print_table(table)
        for leaf in why["leaves"]:
            stats = (f"class counts {_score(leaf['class_counts'])}" if "class_counts" in leaf
                     else f"mean {_num(leaf['mean'])} of {_num(leaf['n'])} (variance "
                          f"{_num(leaf['variance'])})")
            echo(f"  leaf at depth {leaf['depth']}: {stats}; predicts "
                 f"{_score(leaf['prediction'])}")
        echo(f"  the leaves give the score: {'yes' if why['leaf_gives_score'] else 'no'}")
    else:
        shap = doc["shap"]
        echo(f"SHAP ({shap['method']}, {shap['background']} background examples) of the "
             f"{shap['explains']}: base {_num(shap['base_value'])} + values = "
             f"{_num(shap['output'])} (off by {abs(shap['residual']):.2g})")
        echo(f"  {shap['error_note']}")
        table = Table("feature", "value", "SHAP value")
        for v in shap["values"]:
            table.add_row(v["feature"], _num(v["value"]), _num(v["shap"]))
        print_table(table)
