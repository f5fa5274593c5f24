"""A forget request to a running pipeline, and its answer: the exchange between
``riffle forget`` and the Supervisor (Ray-free; the Supervisor side is
:mod:`actors.erasure`).

The subject's key must not travel on the control stream: the stream is a log (a file
in the output folder, or a Kafka topic) that keeps its messages, and a forget request
whose key stayed there would leave the subject in it. So the key is written to the
checkpoint store as ``erasure/requests/<id>.json`` (a store riffle owns and scrubs),
and the control message carries only the request id and the subject's hash::

    {"op": "forget", "id": "...", "pipeline": "...", "subject": "<hmac>"}

The Supervisor reads the request, forgets, deletes the request file and writes the
answer to ``erasure/replies/<id>.json`` (the certificate, or the one-line reason it
failed), where the CLI waits for it.

>>> import tempfile
>>> store = tempfile.mkdtemp()
>>> req = ForgetRequest(pipeline="p", key="ann", actor="me")
>>> write_request(store, req)
>>> msg = req.message()
>>> forget_id(msg) == req.id, forget_id(b'{"op": "deploy"}'), b"ann" in msg
(True, None, False)
>>> take_request(store, req.id).key
'ann'
>>> write_reply(store, req.id, {"ok": True}); read_reply(store, req.id)
{'ok': True}
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from pipelines.audit.subjects import subject_hash
from pipelines.config import PipelineConfig
from pipelines.errors import AuditError
from pipelines.storage import resolve

__all__ = ["ForgetRequest", "drop_request", "forget_id", "read_reply", "send_forget",
           "take_request", "write_reply", "write_request"]

_REQUESTS = "erasure/requests"
_REPLIES = "erasure/replies"


class ForgetRequest(BaseModel):
    """What ``riffle forget`` asks of a running pipeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    pipeline: str
    key: str
    reason: str | None = None
    suppress: bool = False
    actor: str
    sent_at: float = Field(default_factory=time.time)

    def message(self) -> bytes:
        """The control message: the id and the subject's hash, never the key."""
        return orjson.dumps({"op": "forget", "id": self.id, "pipeline": self.pipeline,
                             "subject": subject_hash(self.key)})


def forget_id(raw: bytes) -> str | None:
    """The request id if ``raw`` is a forget message, else None (a lifecycle command)."""
    if b'"forget"' not in raw:  # the control path's lifecycle commands pass at once
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and doc.get("op") == "forget" and isinstance(doc.get("id"), str):
        return str(doc["id"])
    return None


def _write(store_url: str, rel: str, doc: bytes) -> None:
    fs, root = resolve(store_url)
    path = f"{root.rstrip('/')}/{rel}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(f"{path}.tmp") as out:
        out.write(doc)
    fs.move(f"{path}.tmp", path)


def _read(store_url: str, rel: str) -> bytes | None:
    fs, root = resolve(store_url)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{rel}") as f:
            return bytes(f.read())
    except FileNotFoundError:
        return None


def write_request(store_url: str, request: ForgetRequest) -> None:
    _write(store_url, f"{_REQUESTS}/{request.id}.json", request.model_dump_json().encode())


def take_request(store_url: str, request_id: str) -> ForgetRequest | None:
    """The request ``request_id`` (None if it is not there: sent by hand, or already done)."""
    raw = _read(store_url, f"{_REQUESTS}/{request_id}.json")
    return ForgetRequest.model_validate_json(raw) if raw is not None else None


def drop_request(store_url: str, request_id: str) -> None:
    """The request is answered: the key it held goes with it."""
    fs, root = resolve(store_url)
    try:
        fs.delete_file(f"{root.rstrip('/')}/{_REQUESTS}/{request_id}.json")
    except FileNotFoundError:
        pass


def write_reply(store_url: str, request_id: str, reply: dict[str, Any]) -> None:
    _write(store_url, f"{_REPLIES}/{request_id}.json", orjson.dumps(reply))


def read_reply(store_url: str, request_id: str) -> dict[str, Any] | None:
    raw = _read(store_url, f"{_REPLIES}/{request_id}.json")
    if raw is None:
        return None
    doc: dict[str, Any] = orjson.loads(raw)
    return doc


def send_forget(config: PipelineConfig, key: str, *, actor: str, out_dir: Path | None = None,
                reason: str | None = None, suppress: bool = False, timeout_s: float = 300.0,
                poll_s: float = 0.1) -> dict[str, Any] | None:
    """Ask the running pipeline ``config`` to forget ``key`` and wait for its answer:
    the certificate, or None if none came within ``timeout_s``. A refusal or a failed
    rebuild raises :class:`~pipelines.errors.AuditError` with the pipeline's reason."""
    from pipelines.control import open_control

    store_url = config.checkpoint_store_url(out_dir)
    request = ForgetRequest(pipeline=config.name, key=key, reason=reason,
                            suppress=suppress, actor=actor)
    write_request(store_url, request)
    channel = open_control(config, out_dir=out_dir)
    try:
        channel.send(request.message())
    finally:
        channel.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = read_reply(store_url, request.id)
        if reply is not None:
            if not reply.get("ok"):
                raise AuditError(f"pipeline {config.name} did not forget: {reply['error']}")
            cert: dict[str, Any] = reply["certificate"]
            return cert
        time.sleep(poll_s)
    drop_request(store_url, request.id)  # not applied yet: it would be refused later
    return None
