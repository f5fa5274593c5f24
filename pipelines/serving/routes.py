"""The HTTP API of the scoring service (FastAPI), over a :class:`ServingCore`.

``make_api(core)`` is the whole application; Ray Serve runs it in each replica
(``actors.serving``) and the tests run it as it is. The OpenAPI document is at
``/openapi.json`` (``/docs`` renders it).

- An API key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``) names the principal;
  missing or unknown: 401; a role without the right: 403. ``/healthz`` and ``/readyz``
  are open (probes).
- A body that does not match its schema: 422 naming the field; a body larger than
  ``serving.max_body_bytes``: 413; more than ``serving.max_batch`` records: 422.
- Unknown versions and records: 404; no deployment loaded yet or a feedback stream
  down: 503; a command the pipeline refused: 409 (it did not answer in time: 202).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from pipelines.errors import AuditError, CommandError, RegistryError, RiffleError, SourceError
from pipelines.serving.api import (
    CommandOut,
    DeployRequest,
    ExplainBody,
    FeedbackRequest,
    FeedbackResponse,
    ForgetBody,
    Health,
    ModelsOut,
    PredictRequest,
    PredictResponse,
    PromoteRequest,
    RetireRequest,
    RollbackRequest,
    TrafficRequest,
    VersionOut,
)
from pipelines.serving.auth import Principal
from pipelines.serving.service import NotReady, ServingCore

__all__ = ["BodyLimit", "FastPredict", "make_api"]

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class _Problem(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


_ERR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {}}, "required": ["detail"]}}}}
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: _ERR, 403: _ERR, 413: _ERR, 503: _ERR}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {**_AUTH_ERRORS, 404: _ERR, 409: _ERR}


_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def _role(action: str) -> Any:
    """The principal of a request's key, if it may do ``action`` (else 401 or 403).
    A coroutine: FastAPI runs a plain function in its thread pool, and the hand-off there
    and back cost more than the whole check (a digest looked up in a dict)."""
    async def check(request: Request, key: Annotated[str | None, Depends(_api_key)],
              token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> Principal:
        core: ServingCore = request.app.state.core
        given = key or (token.credentials if token is not None else None)
        principal = core.principal(given)
        if principal is None:
            core.denied("(anonymous)" if not given else "(unknown key)", action)
            raise _Problem(401, "missing or unknown API key", {"WWW-Authenticate": "Bearer"})
        if not principal.may(action):
            core.denied(principal.name, action)
            raise _Problem(403, f"{principal.name} ({principal.role}) may not {action}")
        return principal
    return Depends(check)


Scorer = Annotated[Principal, _role("predict")]
Labeller = Annotated[Principal, _role("feedback")]
Reader = Annotated[Principal, _role("read")]
Admin = Annotated[Principal, _role("deploy")]
Eraser = Annotated[Principal, _role("forget")]


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is refused with 413 before it is read
    whole (by its Content-Length, or as it streams in)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        limit = self.max_bytes

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # FastAPI answers its own HTTPException (any other: 400)
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        response = _error(413, f"request body over {self.max_bytes} bytes")
        await response(scope, receive, send)


class FastPredict:
    """ASGI: a valid ``POST /v1/predict`` answered without FastAPI's machinery (its
    dependency solving, middleware stack and thread hand-offs cost about as much as the
    rest of a single-record request together).

    Only the success path is here, and it is the route's own: the key looked up as the
    route's dependency does, the body parsed and validated with the same pydantic model,
    the answer from the same function (``scored``). Anything else goes to the FastAPI
    app with the body replayed, which answers it exactly as without this: another route,
    a body of unknown length or not JSON, a key missing or without the role (401/403, and
    their tally), a body that does not validate (422), no model loaded (503)."""

    def __init__(self, app: Any, core: ServingCore,
                 scored: Callable[[PredictRequest, Principal], bytes]) -> None:
        self.app, self.core, self.scored = app, core, scored
        self.headers = [(b"content-type", b"application/json"),
                        (b"x-riffle-replica", core.replica.encode())]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["path"] != "/v1/predict"
                or scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        api_key: bytes | None = None
        bearer: bytes | None = None
        json = length = False
        for name, value in scope["headers"]:  # the first of each, as Starlette reads them
            if name == b"x-api-key" and api_key is None:
                api_key = value
            elif name == b"authorization" and bearer is None:
                scheme, _, param = value.partition(b" ")  # as FastAPI's HTTPBearer
                bearer = param.strip() if scheme.lower() == b"bearer" else b""
            elif name == b"content-type":
                json = value.split(b";")[0].strip().lower() == b"application/json"
            elif name == b"content-length":
                length = True
        key = api_key or bearer
        if not (json and length):
            await self.app(scope, receive, send)
            return
        chunks, message = [], {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
        body = b"".join(chunks)
        answer = self._answer(key, body)
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            *self.headers, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def _answer(self, key: bytes | None, body: bytes) -> bytes | None:
        """The answer of a valid request by a principal who may predict; else None."""
        principal = self.core.principal(key.decode("latin-1")) if key else None
        if principal is None or not principal.may("predict"):
            return None
        try:
            request = PredictRequest.model_validate(orjson.loads(body))
            return self.scored(request, principal)
        except (ValueError, RequestValidationError, RiffleError):  # pydantic's, orjson's
            return None


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``body`` once, then what the connection sends."""
    sent = False

    async def again() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


def make_api(core: ServingCore) -> Any:
    """The ASGI application of ``core``'s service (FastAPI, inside the body limit)."""
    cfg = core.config
    serving = cfg.serving
    api = FastAPI(title=f"riffle scoring service: {cfg.name}", version="1",
                  description="Scores records with the model versions the stream serves; "
                              "feedback goes to the stream, which learns.")
    api.state.core = core

    @api.exception_handler(_Problem)
    async def problem(_: Request, exc: _Problem) -> Response:
        return _error(exc.status, exc.detail, exc.headers)

    @api.exception_handler(RiffleError)
    async def riffle_error(_: Request, exc: RiffleError) -> Response:
        return _error(_status_of(exc), str(exc))

    categorical = frozenset(cfg.ingest.categorical_features)
    max_abs = cfg.ingest.max_abs_value

    @api.post("/v1/predict", response_model=PredictResponse, responses=_AUTH_ERRORS,
              tags=["scoring"])
    async def predict(body: PredictRequest,
                      principal: Scorer) -> Response:
        """Score one record (``record``) or a batch (``records``): each by its key's arm
        (the stream's canary/A-B routing), all of one request by one deployment."""
        return Response(scored(body, principal), media_type="application/json",
                        headers={"x-riffle-replica": core.replica})

    def scored(body: PredictRequest, principal: Principal) -> bytes:
        """The answer to a valid predict request (the route's, and the fast path's)."""
        rows = body.rows()
        if len(rows) > serving.max_batch:
            raise RequestValidationError([{
                "loc": ("body", "records"), "type": "too_long",
                "msg": f"at most {serving.max_batch} records per request, got {len(rows)}"}])
        _check_features(rows, body.record is not None, categorical, max_abs)
        serial, predictions = core.predict(
            principal, [(r.record_id, r.key, r.features) for r in rows])
        return orjson.dumps({"predictions": predictions, "deployment": serial}, option=_JSON)

    @api.post("/v1/feedback", response_model=FeedbackResponse, responses=_AUTH_ERRORS,
              tags=["scoring"])
    def feedback(body: FeedbackRequest, principal: Labeller) -> Any:
        """Labels to the stream's feedback stream (the stream learns; the service never)."""
        if len(body.labels) > serving.max_batch:
            raise RequestValidationError([{
                "loc": ("body", "labels"), "type": "too_long",
                "msg": f"at most {serving.max_batch} labels per request"}])
        labels = [label.model_dump(exclude_none=True) for label in body.labels]
        stream = core.feedback(principal, labels)
        return {"accepted": len(labels), "stream": stream}

    @api.get("/v1/models", response_model=ModelsOut, responses=_AUTH_ERRORS, tags=["models"])
    def models(principal: Reader) -> Any:
        """The pipeline's versions, and the deployment this replica serves."""
        return core.models(principal)

    @api.get("/v1/models/{version:path}", response_model=VersionOut,
             responses=_READ_ERRORS, tags=["models"])
    def model(version: str, principal: Reader) -> Any:
        """One version (a full id or local to the pipeline) and its lifecycle."""
        return core.version(principal, version)

    @api.get("/healthz", response_model=Health, responses={503: _ERR}, tags=["health"])
    def healthz() -> Any:
        if not core.alive():
            raise _Problem(503, "the registry follower stopped")
        return {"status": "ok"}

    @api.get("/readyz", response_model=Health, responses={503: _ERR}, tags=["health"])
    def readyz() -> Any:
        ok, detail = core.ready()
        if not ok:
            raise _Problem(503, detail or "not ready")
        return {"status": "ready", "detail": detail}

    @api.get("/v1/audit/records/{record_id}", response_model=dict[str, Any],
             responses=_READ_ERRORS, tags=["audit"])
    def audit_record(record_id: str, principal: Reader) -> Any:
        """The audit trail's rows of a record the stream scored, and its label's fate."""
        return _plain(core.audit_record(principal, record_id))

    @api.post("/v1/explain", response_model=dict[str, Any],
              responses=_READ_ERRORS, tags=["audit"])
    def explain(body: ExplainBody, principal: Reader) -> Any:
        """A record's score explained with the model exactly as it was (``riffle explain``)."""
        return _plain(core.explain(principal, body.record_id, body.arm))

    @api.post("/v1/forget", response_model=dict[str, Any],
              responses=_READ_ERRORS, tags=["admin"])
    def forget(body: ForgetBody, principal: Eraser) -> Any:
        """Erase a data subject and unlearn it (``riffle forget``); the certificate."""
        return _plain(core.forget(principal, body.key, reason=body.reason,
                                  suppress=body.suppress))

    def command(principal: Principal, **fields: Any) -> Response:
        outcome = core.command(principal, **fields)
        doc = CommandOut(command_id=outcome.command.id, op=outcome.command.op,
                         status=outcome.status,  # type: ignore[arg-type]
                         error=outcome.error, details=outcome.details)
        status = {"applied": 200, "rejected": 409, "pending": 202}[outcome.status]
        return Response(doc.model_dump_json(), status_code=status,
                        media_type="application/json")

    admin = {**_AUTH_ERRORS, 202: {"model": CommandOut}, 409: {"model": CommandOut},
             404: _ERR}

    @api.post("/v1/admin/deploy", response_model=CommandOut, responses=admin, tags=["admin"])
    def deploy(body: DeployRequest, principal: Admin) -> Response:
        """Deploy a version to the running pipeline (live, shadow, canary or A/B)."""
        weights = dict(body.weights or {})
        if body.mode == "ab":
            weights.setdefault(body.version, weights.pop(body.version, 1.0))
        return command(principal, op="deploy", version=body.version, mode=body.mode,
                       share=body.share, weights=weights or None, reason=body.reason)

    @api.post("/v1/admin/promote", response_model=CommandOut, responses=admin,
              tags=["admin"])
    def promote(body: PromoteRequest, principal: Admin) -> Response:
        return command(principal, op="promote", version=body.version, reason=body.reason)

    @api.post("/v1/admin/rollback", response_model=CommandOut, responses=admin,
              tags=["admin"])
    def rollback(body: RollbackRequest, principal: Admin) -> Response:
        return command(principal, op="rollback", reason=body.reason)

    @api.post("/v1/admin/retire", response_model=CommandOut, responses=admin, tags=["admin"])
    def retire(body: RetireRequest, principal: Admin) -> Response:
        return command(principal, op="retire", version=body.version, reason=body.reason)

    @api.post("/v1/admin/traffic", response_model=CommandOut, responses=admin,
              tags=["admin"])
    def traffic(body: TrafficRequest, principal: Admin) -> Response:
        return command(principal, op="set_traffic", share=body.share,
                       weights=body.weights, reason=body.reason)

    return BodyLimit(FastPredict(api, core, scored), serving.max_body_bytes)


def _check_features(rows: list[Any], single: bool, categorical: frozenset[str],
                    max_abs: float) -> None:
    """The stream's record rules the schema cannot hold (they depend on the config):
    strings only for categorical features, numbers within ``ingest.max_abs_value``."""
    try:  # the common case in one pass in C: numbers only, none too large
        values = chain.from_iterable(row.features.values() for row in rows)
        if max(map(abs, values), default=0) <= max_abs:
            return
    except TypeError:  # a string among them: see which, below
        pass
    errors = []
    for i, row in enumerate(rows):
        where = ("body", "record") if single else ("body", "records", i)
        for name, value in row.features.items():
            if isinstance(value, str):
                if name not in categorical:
                    errors.append({"loc": (*where, "features", name), "type": "float_type",
                                   "msg": "Input should be a finite number (not a "
                                          "categorical feature)"})
            elif not (isinstance(value, int) or math.isfinite(value)) or abs(value) > max_abs:
                errors.append({"loc": (*where, "features", name), "type": "less_than_equal",
                               "msg": f"Input should be a number of magnitude at most "
                                      f"{max_abs:g}"})
    if errors:
        raise RequestValidationError(errors)


def _status_of(exc: RiffleError) -> int:
    if isinstance(exc, NotReady | SourceError):
        return 503
    if isinstance(exc, CommandError):
        return 422
    if isinstance(exc, RegistryError | AuditError) and "unknown" in str(exc).lower():
        return 404
    if isinstance(exc, AuditError):  # a record or subject not there; else a refusal
        text = str(exc).lower()
        return 404 if any(w in text for w in ("not in", "no ", "unknown")) else 409
    return 409


def _plain(doc: Any) -> Any:
    """A document with datetimes and numpy values as JSON does them."""
    return orjson.loads(orjson.dumps(doc, option=_JSON, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
