// Package tracing builds the worker's tracer provider from the standard
// OTEL_* variables, and carries a job's trace context through its task.
package tracing

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the worker's service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES name another.
const ServiceName = "vstage-worker"

// Propagator is the W3C trace context, which the service reads and the
// tasks store.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Provider is a tracer provider and what stops it.
type Provider struct {
	trace.TracerProvider
	sdk *sdktrace.TracerProvider // nil when off
}

// New builds the provider for exporter, the value of OTEL_TRACES_EXPORTER:
// "none" records nothing; "otlp" and "console" export what the SDK's own
// OTEL_* variables describe.
func New(ctx context.Context, exporter string) (*Provider, error) {
	if exporter == "none" || exporter == "" {
		return &Provider{TracerProvider: noop.NewTracerProvider()}, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("traces exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName)), resource.WithTelemetrySDK(), resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Provider{TracerProvider: sdk, sdk: sdk}, nil
}

// Shutdown exports what is buffered; ctx bounds the wait.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p.sdk == nil {
		return nil
	}
	return p.sdk.Shutdown(ctx)
}

// Traceparent returns the W3C traceparent of ctx's span, or "" when ctx has
// none, for a task to carry to the worker that runs it.
func Traceparent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	Propagator.Inject(ctx, c)
	return c["traceparent"]
}

// Links returns a link to the span a traceparent names, or none when it
// names no valid span: a job's span links to the span that enqueued it,
// which belongs to another trace, often finished long before.
func Links(traceparent string) []trace.Link {
	if traceparent == "" {
		return nil
	}
	ctx := Propagator.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent})
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return nil
	}
	return []trace.Link{{SpanContext: sc}}
}
