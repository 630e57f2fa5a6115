"""OpenTelemetry traces: the exporter choice, and a job's place in its caller's trace.

Only OTEL_TRACES_EXPORTER (and the OTLP protocol it implies) is read here; the
SDK reads every other OTEL_* variable itself (endpoint, sampler, resource,
batching, timeouts) from the process environment, as its documentation says.
With the default exporter, none, no SDK is imported and no span is made: a job
only carries its caller's trace context, so that its log lines can name it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import traceback
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from . import errors
from ._proto import engine_pb2 as pb
from .config import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
# The specification's default, and the Go SDK's: the sidecar passes its own
# OTEL_* variables on, so one OTEL_EXPORTER_OTLP_ENDPOINT (a collector's
# port 4318) must mean the same protocol to both processes. The Python SDK's
# own auto-configuration would pick grpc here.
DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_SERVICE_NAME = "vstage-engine"
INSTRUMENTATION_NAME = "inference"

# The names gRPC tracing uses everywhere: the service's full name, and
# service/method for a server span.
RPC_SERVICE: str = pb.DESCRIPTOR.services_by_name["Engine"].full_name
STAGE_METHOD = "Stage"
STAGE_SPAN = f"{RPC_SERVICE}/{STAGE_METHOD}"

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclasses.dataclass(frozen=True)
class TraceSettings:
    """TraceSettings is where spans go: no exporters (off), otlp and/or console."""

    exporters: tuple[str, ...] = ()
    protocol: str = DEFAULT_PROTOCOL

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    def describe(self) -> str:
        """Names the exporters for the start-up log line."""
        if not self.exporters:
            return "none"
        return ",".join(f"otlp ({self.protocol})" if e == "otlp" else e for e in self.exporters)


def parse(environ: Mapping[str, str]) -> TraceSettings:
    """Reads the exporter choice; raises ConfigError naming the variable."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TraceSettings()
    raw = environ.get(EXPORTER_ENV, "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown or ("none" in names and len(names) > 1):
        raise ConfigError(
            f"{EXPORTER_ENV}: want one of {', '.join(EXPORTERS)} "
            f"(otlp and console may be combined, comma-separated), got {raw!r}"
        )
    exporters = tuple(dict.fromkeys(n for n in names if n != "none"))
    protocol = DEFAULT_PROTOCOL
    if "otlp" in exporters:
        for env in PROTOCOL_ENVS:
            value = environ.get(env, "").strip()
            if value:
                if value not in PROTOCOLS:
                    raise ConfigError(f"{env}: want one of {', '.join(PROTOCOLS)}, got {value!r}")
                protocol = value
                break
    return TraceSettings(exporters, protocol)


class JobTrace:
    """JobTrace is one job's place in a trace.

    context is what the job's threads run under: it holds the Stage span, or
    only the caller's span context when spans are not exported, so that log
    lines written inside the job name the trace either way.
    """

    def __init__(
        self,
        context: Context,
        tracer: trace.Tracer | None = None,
        span: trace.Span | None = None,
    ) -> None:
        self.context = context
        self._tracer = tracer
        self._span = span
        self._ended = False
        self._lock = threading.Lock()

    @property
    def recording(self) -> bool:
        """Whether the job's phases become spans."""
        return self._tracer is not None

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Makes the job's context current in this thread for the block."""
        token = otel_context.attach(self.context)
        try:
            yield
        finally:
            otel_context.detach(token)

    def start_phase(
        self, name: str, start_ns: int, attributes: Mapping[str, AttributeValue] | None
    ) -> trace.Span | None:
        """Opens a child span of the Stage span at start_ns (time.time_ns());
        None when spans are not exported."""
        if self._tracer is None:
            return None
        return self._tracer.start_span(
            name, context=self.context, start_time=start_ns, attributes=attributes
        )

    def end(self, err: errors.EngineError | None = None, exc: BaseException | None = None) -> None:
        """Ends the Stage span with the job's outcome: err is what the caller is
        told, exc what raised it. Only the first call counts."""
        span = self._span
        if span is None:
            return
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if err is None:
            span.set_attribute("rpc.grpc.status_code", 0)
        else:
            span.set_attribute("rpc.grpc.status_code", err.code.value[0])
            span.set_attribute("error.type", err.reason_name)
            span.set_status(Status(StatusCode.ERROR, describe(err)))
            if exc is not None:
                span.add_event("exception", exception_attributes(exc))
        span.end()


def end_phase(span: trace.Span, end_ns: int, exc: BaseException | None) -> None:
    """Ends a phase's span at end_ns; exc marks it failed (the Stage span
    records the exception itself)."""
    if exc is not None:
        span.set_status(Status(StatusCode.ERROR, describe(engine_error(exc))))
    span.end(end_time=end_ns)


# UNTRACED is the trace of a job nobody follows: warm-up jobs, benchmarks.
UNTRACED = JobTrace(Context())


def describe(err: errors.EngineError) -> str:
    """A failed span's status description: the failure reason's name, or
    "cancelled" for a job its caller stopped."""
    if err.reason == pb.FAILURE_REASON_CANCELLED:
        return "cancelled"
    return err.reason_name


def engine_error(exc: BaseException) -> errors.EngineError:
    """Returns what a caller is told about exc."""
    if isinstance(exc, errors.JobCancelled):
        return errors.stopped(exc.reason)
    if isinstance(exc, errors.EngineError):
        return exc
    return errors.internal()


def exception_attributes(exc: BaseException) -> dict[str, AttributeValue]:
    """Describes exc for a span event without its message where that could
    quote the input: only the engine's own messages, written for callers,
    are kept; an unexpected exception keeps its type and frames."""
    kind = type(exc)
    attrs: dict[str, AttributeValue] = {"exception.type": f"{kind.__module__}.{kind.__qualname__}"}
    if isinstance(exc, errors.EngineError):
        attrs["exception.message"] = exc.message
    elif isinstance(exc, errors.JobCancelled):
        attrs["exception.message"] = pb.FailureReason.Name(exc.reason)
    else:
        attrs["exception.stacktrace"] = "".join(traceback.format_tb(exc.__traceback__))
    return attrs


class Tracing:
    """Tracing starts each job's trace; provider is the SDK's, or None when off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start_job(self, metadata: Mapping[str, str], job_id: str) -> JobTrace:
        """Continues the caller's trace from the W3C traceparent and tracestate
        in the call's metadata, and opens the Stage span when exporting."""
        # An empty Context, not the current one: a handler thread's leftovers
        # must never become a job's parent.
        parent = _PROPAGATOR.extract(metadata, context=Context())
        if self._tracer is None:
            return JobTrace(parent)
        span = self._tracer.start_span(
            STAGE_SPAN,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": RPC_SERVICE,
                "rpc.method": STAGE_METHOD,
                "vstage.job_id": job_id,
            },
        )
        if not span.is_recording():
            # Not sampled: no phase spans either, and the log lines name the
            # caller's span rather than one that is never exported.
            return JobTrace(parent)
        return JobTrace(trace.set_span_in_context(span, parent), self._tracer, span)

    def shutdown(self, timeout: float) -> bool:
        """Exports the spans still queued and stops; False when timeout passed first.

        The SDK's own shutdown waits on an exporter for as long as it retries;
        a collector that is down must not hold a stopping engine.
        """
        if self.provider is None:
            return True
        done = threading.Thread(target=self.provider.shutdown, name="trace-flush", daemon=True)
        done.start()
        done.join(timeout)
        return not done.is_alive()


def start(settings: TraceSettings) -> Tracing:
    """Builds the SDK's tracer provider for settings; nothing when tracing is off.

    The provider is the engine's own, handed to the server, and not made the
    process-wide one: nothing else in the engine should find it by accident.
    """
    if not settings.enabled:
        return Tracing()
    # Imported only here: with tracing off the SDK never loads.
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if not OTELResourceDetector().detect().attributes.get("service.name"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    # main() ends with os._exit, so the SDK's atexit hook would never run;
    # shutdown() is called on the way out instead.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in settings.exporters:
        if name == "console":
            # stdout: stderr is the JSON log stream, one object per line.
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings.protocol)))
    return Tracing(provider)


def _otlp_exporter(protocol: str) -> SpanExporter:
    # Each exporter reads its endpoint, headers, timeout and TLS files from the environment.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()
