"""An OTLP trace receiver for tests: what a collector would get from the engine.

Both transports the engine can use: OTLP/HTTP (POST /v1/traces, binary
protobuf) and OTLP/gRPC (TraceService/Export), on 127.0.0.1 with a free port.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tsvc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsvc_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SPAN_KIND_INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
SPAN_KIND_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
STATUS_UNSET = trace_pb2.Status.STATUS_CODE_UNSET
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


def value_of(v: common_pb2.AnyValue) -> Any:
    """Returns the Python value of an OTLP AnyValue."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes_of(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


@dataclass(frozen=True)
class Event:
    name: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Span:
    """One received span, ids as lowercase hex."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[Event]
    resource: dict[str, Any]
    scope: str

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class Receiver:
    """Keeps every span exported to it; requests counts the export calls."""

    endpoint: str = ""
    requests: int = 0
    _spans: list[Span] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _close: Callable[[], None] = lambda: None

    def add(self, req: tsvc.ExportTraceServiceRequest) -> None:
        received = []
        for rs in req.resource_spans:
            resource = attributes_of(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            trace_state=s.trace_state,
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes=attributes_of(s.attributes),
                            status_code=s.status.code,
                            status_message=s.status.message,
                            events=[Event(e.name, attributes_of(e.attributes)) for e in s.events],
                            resource=resource,
                            scope=ss.scope.name,
                        )
                    )
        with self._cond:
            self.requests += 1
            self._spans.extend(received)
            self._cond.notify_all()

    def spans(self) -> list[Span]:
        with self._cond:
            return list(self._spans)

    def wait_for(self, pred: Callable[[list[Span]], bool], timeout: float = 20) -> list[Span]:
        """Waits until pred holds for the spans so far; returns them."""
        end = time.monotonic() + timeout
        with self._cond:
            while not pred(self._spans):
                left = end - time.monotonic()
                if left <= 0:
                    names = [(s.name, s.trace_id) for s in self._spans]
                    raise AssertionError(f"spans never arrived; have {names}")
                self._cond.wait(left)
            return list(self._spans)

    def trace(self, trace_id: str, count: int, timeout: float = 20) -> list[Span]:
        """Waits for count spans of trace_id; returns that trace's spans."""
        spans = self.wait_for(lambda ss: sum(s.trace_id == trace_id for s in ss) >= count, timeout)
        return [s for s in spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._close()


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def http_receiver() -> Receiver:
    """Starts an OTLP/HTTP receiver; its endpoint is the base URL (no /v1/traces)."""
    receiver = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = _decompress(self.rfile.read(length), self.headers.get("Content-Encoding", ""))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415)
                return
            receiver.add(tsvc.ExportTraceServiceRequest.FromString(body))
            out = tsvc.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    receiver.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    receiver._close = close
    return receiver


def grpc_receiver() -> Receiver:
    """Starts an OTLP/gRPC receiver; its endpoint is http://127.0.0.1:PORT (plaintext)."""
    receiver = Receiver()

    class Service(tsvc_grpc.TraceServiceServicer):
        def Export(  # noqa: N802
            self, request: tsvc.ExportTraceServiceRequest, context: grpc.ServicerContext
        ) -> tsvc.ExportTraceServiceResponse:
            receiver.add(request)
            return tsvc.ExportTraceServiceResponse()

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    tsvc_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    receiver._close = lambda: server.stop(0).wait()
    return receiver
