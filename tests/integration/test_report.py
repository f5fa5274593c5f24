"""The monitoring story end to end, through the real CLI: a run with a concept change and a
shadow deployed mid-run; its summary, status and time series show the quality per arm
against registration, the change and the recovery; ``riffle report`` draws it all, and
a real headless Chromium (Debian's) shows every plot, with no console error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
from playwright.sync_api import sync_playwright

from pipelines.monitoring.series import read_series
from pipelines.registry import Registry
from tests.integration.test_cli import RIFFLE, ROOT, riffle, run_env, wait_until

CONFIG = """\
name: rep
source:
  kind: synthetic
  partitions: 2
  n_events: 50000
  rate_per_s: 2500
  seed: 5
  drift: {{position: 25000, width: 500, to_function: 2}}
  n_keys: 5000
  label_delay_events: 20
ingest: {{n_actors: 1, num_cpus: 0, batch_size: 250}}
scoring:
  n_actors: 2
  num_cpus: 0
  model:
    steps:
      - {{name: tree.HoeffdingAdaptiveTreeClassifier, params: {{leaf_prediction: mc, seed: 1}}}}
  quality:
    window_events: 500
    window_s: 2
    groups: [{{name: age_band, feature: age, edges: [40, 60]}}]
checkpoint: {{interval_s: 2, keep: 100}}
runtime: {{progress_interval_s: 0.2, series_interval_s: 0.25}}
output: {{out_dir: {out}}}
"""


def _versions(out: Path) -> list[str]:
    if not (out / "registry.db").exists():
        return []
    try:
        with Registry(f"sqlite:///{out / 'registry.db'}", create=False) as reg:
            return [v.id for v in reg.versions("rep")]
    except Exception:  # the run is creating it
        return []


def _browse(page_path: Path, shot: Path) -> dict[str, Any]:
    """What Chromium shows of the page: console errors, per plot its drawn marks and
    its annotations, the summary table's text; and a screenshot."""
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is not installed (make test-deps installs it)"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0"
                                   " && [...document.querySelectorAll('.js-plotly-plot')]"
                                   ".every(d => d.querySelector('.main-svg'))", timeout=30_000)
            plots = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
                .map(d => ({
                  title: (d.querySelector('.gtitle') || {}).textContent || '',
                  lines: [...d.querySelectorAll('.scatterlayer path.js-line')]
                      .filter(p => (p.getAttribute('d') || '').length > 20).length,
                  bars: [...d.querySelectorAll('.barlayer path')]
                      .filter(p => p.getBBox().width > 0).length,
                  notes: [...d.querySelectorAll('.annotation-text')].map(t => t.textContent),
                  traces: d.querySelectorAll('.trace').length,
                  xticks: [...d.querySelectorAll('.xtick text')].map(t => t.textContent),
                  width: d.querySelector('.main-svg').getBoundingClientRect().width,
                }))""")
            table = page.inner_text("table.summary")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "plots": plots, "table": table}


def test_report_of_a_drifting_run_with_a_shadow_renders_every_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = tmp_path / "rep.yaml"
    config.write_text(CONFIG.format(out=out))
    proc = subprocess.Popen([*RIFFLE, "run", str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=run_env())
    try:
        wait_until(lambda: _versions(out), 120, "a checkpoint registered as a version")
        candidate = _versions(out)[-1]
        deployed = riffle("models", "deploy", str(config), candidate, "--mode", "shadow",
                          timeout=120)
        assert deployed.returncode == 0, deployed.stderr
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr

    summary = orjson.loads((out / "summary.json").read_bytes())
    arms = {a["arm"]: a for a in summary["quality"]["arms"]}
    assert set(arms) == {"live", "candidate"}
    shadow = arms["candidate"]
    assert shadow["version"] == shadow["reference"] == candidate
    assert shadow["registered"]["accuracy"] > 0.5  # what it was registered with...
    assert shadow["gap"]["accuracy"] == shadow["window"]["accuracy"] - \
        shadow["registered"]["accuracy"]  # ...and serving minus that
    # Every label learned counts, but for the tree's first empty predictions.
    assert summary["learned"] - 50 <= arms["live"]["labeled"] <= summary["learned"]
    assert summary["quality"]["fairness"]["age_band"]["gap"]["positive_rate"] > 0

    # The change and the recovery, in the live arm's window over time.
    live = [(r["events"], a["window"]["accuracy"]) for r in read_series(out / "metrics.jsonl")
            for a in r["arms"] if a["arm"] == "live" and a["window"].get("accuracy")]
    before = [acc for events, acc in live if 15_000 < events < 24_000]
    after = [acc for events, acc in live if events > 25_000]
    assert before and min(before) > 0.9
    assert min(after) < min(before) - 0.1  # the change shows...
    assert after[-1] > min(after) + 0.1    # ...and so does the recovery

    status = riffle("status", str(config), "--log", "0", timeout=60)
    assert status.returncode == 0, status.stderr
    assert "quality candidate" in status.stdout and "fairness age_band" in status.stdout

    page = tmp_path / "report.html"
    made = riffle("report", str(config), "--out", str(page), timeout=120)
    assert made.returncode == 0, made.stderr
    seen = _browse(page, tmp_path / "report.png")
    assert seen["errors"] == []
    assert len(seen["plots"]) == 10
    by_title = {p["title"]: p for p in seen["plots"]}
    for plot in seen["plots"]:
        assert plot["width"] > 300 and plot["traces"] and plot["xticks"], plot
        if plot["title"] != "Dead letters by reason":  # none in this run: zero bars
            assert plot["lines"] + plot["bars"] > 0, f"nothing drawn in {plot['title']!r}"
    assert by_title["Dead letters by reason"]["xticks"] == [
        "invalid event", "invalid feedback", "duplicate", "model error"]
    quality = by_title["Serving accuracy per version and arm"]
    assert quality["lines"] >= 4  # live and candidate, by count and by time
    assert "shadowed" in quality["notes"]
    assert "arm candidate" in seen["table"]
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_report_of_a_folder_without_a_run_exits_2_with_one_line(tmp_path: Path) -> None:
    result = riffle("report", "configs/local.yaml", "--dir", str(tmp_path), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"riffle: error: {tmp_path}: no metrics.jsonl or summary.json (has the pipeline run?)"]
    assert not (tmp_path / "report.html").exists()
