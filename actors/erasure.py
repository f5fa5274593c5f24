"""Forgetting a data subject while the pipeline runs: the Supervisor's side of
``riffle forget`` (the request and its answer: :mod:`pipelines.audit.forget_request`).

A forget request arrives on the control stream and is applied like a lifecycle command,
under the control path's lock: no command and no checkpoint runs beside it.

1. **Hold at a checkpoint.** An aligned checkpoint C is taken with reading held: each
   ingest actor sends out what it routed, waits until the sink has written all of it,
   passes its barrier to the scorers, then reads nothing. Once C is committed no batch
   is in flight anywhere: every record before C's positions is scored, learned and
   written; none after them has been read.
2. **Rebuild**, Ray-free, in an executor thread (the event loop stays free; the watch
   loop looks away until the swap is done, and an actor lost meanwhile is found by the
   swap): :class:`~pipelines.audit.forget.Forgetter` against C,
   exactly as on a stopped pipeline. The models are replayed without the subject from
   the newest retained checkpoint before its first record and committed as a new
   checkpoint C' with C's positions; the subject's rows leave every store; the
   certificate is logged. C' is committed only once it is whole: if the rebuild fails
   before, C stays the last checkpoint and reading resumes where it was held.
3. **Swap.** C' becomes the last checkpoint, then the data path is rewound to it as a
   new generation, the way a restart rewinds it: every scorer resets in place from C'
   (the rebuilt models), every ingest actor from C' (the same positions as C, so nothing
   is read twice or skipped; the dedupe memory without the subject; the suppression
   list reloaded); the sink, idle, reopens the output files the forget rewrote (its
   counts go on). Reading resumes.

Batches in flight: none. The hold drained them before C, and nothing is read between
C and the swap, so the swap discards no work. An actor that dies during the rebuild or
the swap (a ``kill -9``) is handed to the supervision loop: its restart restores from
C', already the last checkpoint, so the rebuilt models are what the pipeline continues
from. The answer is written once C' is the last checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ray

from actors.checkpointer import Checkpointer, resume_reading
from actors.topology import Topology
from pipelines.audit.forget_request import (
    ForgetRequest,
    drop_request,
    take_request,
    write_reply,
)
from pipelines.audit.subjects import subject_hash
from pipelines.checkpoint import CheckpointStore, Manifest
from pipelines.config import PipelineConfig
from pipelines.errors import ActorFailed, cause_line
from pipelines.supervision import SupervisionLog

Rewind = Callable[[], Awaitable[None]]
"""Rewind the data path in place to the last checkpoint, as a new generation."""


class Erasure:
    """Forget requests applied to the running pipeline, one at a time."""

    def __init__(self, config: PipelineConfig, *, out_dir: Path, store_url: str,
                 log: SupervisionLog, checkpoints: Checkpointer | None,
                 data_path: Callable[[], Topology], rewind: Rewind) -> None:
        self._config = config
        self._out_dir = out_dir
        self._store_url = store_url
        self._log = log
        self._checkpoints = checkpoints
        self._data_path = data_path
        self._rewind = rewind

    async def forget(self, request_id: str) -> None:
        """Apply request ``request_id`` (the caller holds the control lock). An actor
        failure raises :class:`~pipelines.errors.ActorFailed`, for the supervisor."""
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(None, take_request, self._store_url, request_id)
        if request is None:
            self._log.record("forget_rejected", "supervisor", "no such request",
                             request=request_id)
            return
        refusal = self._refusal(request)
        if refusal is not None:
            await self._answer(request, {"ok": False, "error": refusal})
            return
        assert self._checkpoints is not None
        actors = self._data_path()
        ingest = actors.ingest
        try:
            held = await self._checkpoints.aligned(ingest, actors.scorers, held=True)
        except Exception as e:
            await self._answer(request, {"ok": False, "error": "a failure while taking the "
                                         f"checkpoint to forget from: {cause_line(e)}"})
            raise
        if held is None:
            await self._answer(request, {"ok": False, "error": "no checkpoint could be taken "
                                         "(the source is finishing): forget once it stopped"})
            return
        self._log.record("forget", "supervisor", "rebuilding", checkpoint=held.id,
                         subject=subject_hash(request.key), request=request.id)
        try:
            cert = await loop.run_in_executor(None, self._rebuild, request)
        except Exception as e:
            await self._recover(held, ingest)
            await self._answer(request, {"ok": False, "error": cause_line(e)})
            self._log.record("forget_failed", "supervisor", cause_line(e), request=request.id)
            return
        store = CheckpointStore(self._store_url)
        latest = await loop.run_in_executor(None, store.latest)
        assert latest is not None
        self._checkpoints.adopt(latest)
        await self._answer(request, {"ok": True, "certificate": cert})
        self._log.record("forget", "supervisor", "rebuilt; swapping", checkpoint=latest.id,
                         request=request.id, duration_s=cert["duration_s"])
        await self._swap(actors)

    def _refusal(self, request: ForgetRequest) -> str | None:
        if request.pipeline != self._config.name:
            return (f"request for pipeline {request.pipeline!r}, this is "
                    f"{self._config.name!r}")
        if self._checkpoints is None:
            return "forget on a running pipeline needs checkpoints (checkpoint.enabled)"
        return None

    def _rebuild(self, request: ForgetRequest) -> dict[str, Any]:
        from pipelines.audit.forget import Forgetter

        registry = None
        if self._config.registry.enabled:
            from pipelines.registry import Registry

            registry = Registry(self._config.registry_url(self._out_dir))
        try:
            return Forgetter(self._config, out_dir=self._out_dir, registry=registry,
                             actor=request.actor).forget(
                request.key, reason=request.reason, suppress=request.suppress, held=True)
        finally:
            if registry is not None:
                registry.close()

    async def _recover(self, held: Manifest, ingest: list[Any]) -> None:
        """After a failed rebuild: on C if nothing was committed since, else on what was
        (the rebuilt checkpoint, committed whole before the failure came)."""
        assert self._checkpoints is not None
        store = CheckpointStore(self._store_url)
        latest = await asyncio.get_running_loop().run_in_executor(None, store.latest)
        if latest is None or latest.seq <= held.seq:
            await resume_reading(ingest)
            return
        self._checkpoints.adopt(latest)
        await self._swap(self._data_path())

    async def _swap(self, actors: Topology) -> None:
        """Onto the last checkpoint (the rebuilt one): the sink reopens its files, then
        every actor rewinds in place."""
        try:
            await actors.sink.reopen.remote()
        except ray.exceptions.RayError as e:
            raise ActorFailed("sink", f"reopening its files: {cause_line(e)}") from None
        await self._rewind()

    async def _answer(self, request: ForgetRequest, reply: dict[str, Any]) -> None:
        def write() -> None:
            drop_request(self._store_url, request.id)  # the key goes with the request
            write_reply(self._store_url, request.id, reply)

        await asyncio.get_running_loop().run_in_executor(None, write)
