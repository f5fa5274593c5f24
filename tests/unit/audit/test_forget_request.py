"""``riffle forget`` against a running pipeline, from the CLI's side (no Ray): the
request goes on the control stream without the key, the certificate is printed when the
answer comes, and no answer is one line and exit code 1."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import orjson
import yaml
from click.testing import CliRunner

from pipelines.audit.forget_request import forget_id, take_request, write_reply
from pipelines.cli import cli
from pipelines.config import PipelineConfig
from pipelines.status import write_status


def _running(tmp_path: Path) -> tuple[PipelineConfig, Path]:
    cfg = PipelineConfig.model_validate({"name": "fq", "source": {"kind": "synthetic"},
                                         "output": {"out_dir": str(tmp_path / "out")}})
    cfg.out_dir.mkdir(parents=True)
    write_status(cfg.out_dir, {"pipeline": "fq"})  # written just now: it runs
    path = tmp_path / "fq.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return cfg, path


def test_forget_running_without_an_answer_is_one_line_exit_1(tmp_path: Path) -> None:
    cfg, path = _running(tmp_path)
    result = CliRunner().invoke(cli, ["forget", str(path), "--key", "ann", "--timeout", "0.3"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "no certificate" in result.output
    [line] = (cfg.out_dir / "control.jsonl").read_bytes().splitlines()
    request = forget_id(line)
    assert request is not None and b"ann" not in line
    assert take_request(cfg.checkpoint_store_url(), request) is None  # withdrawn


def test_forget_running_prints_the_certificate_the_pipeline_answers(tmp_path: Path) -> None:
    cfg, path = _running(tmp_path)
    cert = {"subject": "ab" * 32, "n_records": 2, "removed": {"audit_trail": 2},
            "models": None, "suppressed": False, "actor": "ops", "not_owned": []}

    def pipeline() -> None:  # what the Supervisor does (actors.erasure), by hand
        control = cfg.out_dir / "control.jsonl"
        deadline = time.monotonic() + 10
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        request = forget_id(control.read_bytes().splitlines()[0])
        assert request is not None
        got = take_request(cfg.checkpoint_store_url(), request)
        assert got is not None and got.key == "ann" and got.suppress
        write_reply(cfg.checkpoint_store_url(), request, {"ok": True, "certificate": cert})

    answer = threading.Thread(target=pipeline)
    answer.start()
    result = CliRunner().invoke(cli, ["forget", str(path), "--key", "ann", "--suppress",
                                      "--json", "--timeout", "10"])
    answer.join()
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == cert
    assert orjson.loads((cfg.out_dir / "control.jsonl").read_bytes())["op"] == "forget"
