package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the sidecar's service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES name another; EngineServiceName is the engine's.
const (
	ServiceName       = "vstage"
	EngineServiceName = "vstage-engine"
)

// Tracing is the sidecar's tracer provider and the propagator of the W3C
// trace context. It is never global: the parts that trace get it passed.
// With exporting off, Provider is a no-op provider whose spans only carry
// the caller's trace context on, so logs and the engine still see the
// caller's trace id, and nothing is recorded.
type Tracing struct {
	Provider   trace.TracerProvider
	Propagator propagation.TextMapPropagator

	sdk *sdktrace.TracerProvider // nil when off
}

// NoTracing returns a Tracing that records nothing.
func NoTracing() *Tracing {
	return &Tracing{Provider: noop.NewTracerProvider(), Propagator: propagator()}
}

func propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// NewTracing builds the tracer provider for exporter, the value of
// OTEL_TRACES_EXPORTER: "" or "none" records nothing; "otlp" and "console"
// build the exporter the standard OTEL_* variables describe (endpoint,
// protocol, headers), in batches (OTEL_BSP_*), sampled as
// OTEL_TRACES_SAMPLER says, with the resource of OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES over service.name "vstage". The OpenTelemetry
// SDK reads those variables itself, as its specification defines them.
func NewTracing(ctx context.Context, exporter string) (*Tracing, error) {
	if exporter == "" || exporter == "none" {
		return NoTracing(), nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("traces exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName), semconv.ServiceVersion(buildVersion())),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Tracing{Provider: sdk, Propagator: propagator(), sdk: sdk}, nil
}

// Recording returns the provider when spans are recorded, and nil when
// they are not: the parts whose instrumentation would cost something on
// every request even with a no-op provider (the HTTP server's, the S3
// client's) leave it out then.
func (t *Tracing) Recording() trace.TracerProvider {
	if t.sdk == nil {
		return nil
	}
	return t.Provider
}

// Shutdown exports the spans still buffered and stops the exporter; ctx
// bounds the wait.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing shutdown: %w", err)
	}
	return nil
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			return v
		}
	}
	return "devel"
}

// traceHandler adds the trace_id and span_id of the span in a record's
// context to the record, so that every line logged while serving a request
// names its trace.
type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
