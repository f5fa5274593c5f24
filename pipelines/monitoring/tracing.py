"""W3C trace context across riffle's hops: batch envelopes and Kafka headers.

A batch carries the ``traceparent`` of the span that sent it, sampled or not (an
unsampled one still names its trace, for the predictions' Kafka headers); the next
actor opens a span only when the sampled flag is set, so an unsampled batch costs a
string copy and nothing more.

>>> tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
>>> sampled(tp), sampled(tp[:-2] + "00"), sampled("")
(True, False, False)
>>> context_of(tp) is not None, context_of("") is None
(True, True)
>>> header_trace([("riffle.x", b"1"), ("traceparent", tp.encode())]) == tp
True
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["MAX_LINKS", "context_of", "header_trace", "links_of", "sampled", "traceparent_of"]

_PROPAGATOR = TraceContextTextMapPropagator()
MAX_LINKS = 16
"""A batch read from Kafka links to at most this many of its messages' other traces."""


def sampled(traceparent: str) -> bool:
    """The sampled flag of a ``traceparent`` (``00-<trace>-<span>-<flags>``)."""
    return len(traceparent) == 55 and int(traceparent[53:], 16) & 1 == 1


def context_of(traceparent: str) -> Context | None:
    """The remote parent a ``traceparent`` names, or None (absent or malformed)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def traceparent_of(span: Span) -> str:
    """The ``traceparent`` of ``span`` ("" for an invalid, no-op span): W3C version 00,
    formatted here (the propagator's inject costs ~10x more, on every batch).

    >>> from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    >>> traceparent_of(NonRecordingSpan(SpanContext(1, 2, False, TraceFlags(1))))
    '00-00000000000000000000000000000001-0000000000000002-01'
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def header_trace(headers: list[tuple[str, bytes]] | None) -> str:
    """The ``traceparent`` among a Kafka message's headers ("" if none)."""
    if headers:
        for name, value in headers:
            if name == "traceparent" and value:
                try:
                    return value.decode("ascii")
                except UnicodeDecodeError:
                    return ""
    return ""


def links_of(traces: list[str], parent: str) -> list[Link]:
    """Links to the other producers' traces of a batch (its first is the parent)."""
    links: list[Link] = []
    seen = {parent}
    for tp in traces:
        if tp in seen:
            continue
        seen.add(tp)
        ctx = context_of(tp)
        if ctx is not None:
            links.append(Link(trace.get_current_span(ctx).get_span_context()))
            if len(links) >= MAX_LINKS:
                break
    return links


def messaging(system: str, operation: str, destination: str, n: int,
              **extra: Any) -> dict[str, Any]:
    """Messaging semantic-convention attributes of a batch operation.

    >>> messaging("kafka", "receive", "events", 3)["messaging.batch.message_count"]
    3
    """
    return {"messaging.system": system, "messaging.operation.type": operation,
            "messaging.operation.name": operation, "messaging.destination.name": destination,
            "messaging.batch.message_count": n, **extra}


class IngestSpans:
    """``ingest.read`` (the read from the source, continuing a producer's trace when its
    first message has one) and ``ingest.route`` (decode, validate, dedupe, route) of each
    sampled chunk read; :meth:`routed` gives the ``traceparent`` its batches carry (of an
    unsampled chunk: its read's, which only names the trace)."""

    def __init__(self, tracer: trace.Tracer, *, system: str, consumer_group: str | None,
                 from_headers: bool) -> None:
        self._tracer = tracer
        self._system = system
        self._group = consumer_group
        self._from_headers = from_headers

    def route(self, messages: list[Any], read_ns: tuple[int, int]) -> Span:
        """Open the chunk's spans (the read one is over already); returns the route span."""
        parent_tp = ""
        links: list[Link] = []
        if self._from_headers:
            traces = [m.trace for m in messages if m.trace]
            if traces:
                parent_tp = traces[0]
                links = links_of(traces, parent_tp)
        extra: dict[str, Any] = {}
        if self._group is not None:
            extra["messaging.consumer.group.name"] = self._group
        first = messages[0]
        read = self._tracer.start_span(
            "ingest.read", context=context_of(parent_tp), kind=trace.SpanKind.CONSUMER,
            links=links, start_time=read_ns[0],
            attributes=messaging(self._system, "receive", first.topic, len(messages), **extra))
        read.end(read_ns[1])
        if not read.is_recording() and not read.get_span_context().trace_flags.sampled:
            return read  # unsampled: its context names the trace; no route span to make
        return self._tracer.start_span(
            "ingest.route", context=trace.set_span_in_context(read),
            kind=trace.SpanKind.PRODUCER,
            attributes=messaging(self._system, "send", "scorers", len(messages)))

    @staticmethod
    def routed(span: Span, n_dead: int) -> str:
        """End the route span (of a sampled chunk); the ``traceparent`` its batches carry."""
        if span.is_recording():
            span.set_attribute("riffle.dead_letters", n_dead)
            span.end()
        return traceparent_of(span)
