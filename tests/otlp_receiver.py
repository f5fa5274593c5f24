"""A real OTLP/HTTP receiver for tests: what a collector would get, decoded with the
OpenTelemetry protobuf package (``opentelemetry-proto``)."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    """Serves ``/v1/traces`` and ``/v1/metrics`` on a free port of 127.0.0.1 (a context
    manager). ``spans``: one dict per span; ``points``: one dict per number data point."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver._spans(ExportTraceServiceRequest.FromString(body))
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver._metrics(ExportMetricsServiceRequest.FromString(body))
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _spans(self, request: ExportTraceServiceRequest) -> None:
        got = []
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    got.append({
                        "name": span.name, "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "kind": span.kind, "attributes": _attrs(span.attributes),
                        "links": [(link.trace_id.hex(), link.span_id.hex())
                                  for link in span.links],
                        "actor": resource.get("service.instance.id")})
        with self._lock:
            self.spans.extend(got)

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        got = []
        for rm in request.resource_metrics:
            resource = _attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    for p in data.data_points:
                        value = (p.count if kind in ("histogram", "exponential_histogram")
                                 else _value_of_number(p))
                        got.append({"name": metric.name, "kind": kind, "value": value,
                                    "attributes": _attrs(p.attributes),
                                    "actor": resource.get("service.instance.id")})
        with self._lock:
            self.points.extend(got)

    def latest(self, name: str) -> dict[str, float]:
        """Per actor, the last value received of metric ``name`` (one with a single point
        per actor)."""
        with self._lock:
            points = [p for p in self.points if p["name"] == name]
        out: dict[str, float] = {}
        for p in points:  # cumulative: a later export of an actor replaces an earlier one
            out[p["actor"]] = p["value"]
        return out


def _value_of_number(p: Any) -> float:
    return p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
