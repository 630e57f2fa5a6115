package tracing

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func TestTraceparentRoundTrip(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("test").Start(context.Background(), "enqueue")
	defer span.End()
	tp2 := Traceparent(ctx)
	links := Links(tp2)
	if len(links) != 1 || links[0].SpanContext.SpanID() != span.SpanContext().SpanID() ||
		links[0].SpanContext.TraceID() != span.SpanContext().TraceID() {
		t.Fatalf("traceparent %q gave links %+v, want the span %s", tp2, links, span.SpanContext().SpanID())
	}
	if got := Traceparent(context.Background()); got != "" {
		t.Errorf("a context without a span gave %q", got)
	}
	for _, bad := range []string{"", "00-zz-yy-01", "00-00000000000000000000000000000000-0000000000000000-01"} {
		if links := Links(bad); links != nil {
			t.Errorf("Links(%q) = %+v, want none", bad, links)
		}
	}
}

func TestNewRefusesUnknownExporters(t *testing.T) {
	if p, err := New(t.Context(), "none"); err != nil || p.Shutdown(t.Context()) != nil {
		t.Fatalf("none: %v", err)
	}
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	if _, err := New(t.Context(), "otlp"); err == nil {
		t.Error("an exporter the SDK does not know was accepted")
	}
}
