package managed

import (
	"context"
	"slices"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Each provider call is a client span under the job's, named by the kind
// of call (never by a prediction id), and no trace context leaves for the
// provider.
func TestTracedClientSpansEachCall(t *testing.T) {
	f := newFake(t)
	f.pollsToEnd = 1
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	o := quick(f)
	o.HTTPClient = TracedClient(tp)
	ctx, job := tp.Tracer("test").Start(context.Background(), "backend.managed")
	if _, err := newBackend(t, o).Stage(ctx, testJob(t)); err != nil {
		t.Fatalf("Stage: %v (%s)", err, f)
	}
	job.End()
	var names []string
	for _, s := range rec.Ended() {
		if s.SpanKind() != trace.SpanKindClient {
			continue
		}
		names = append(names, s.Name())
		if s.Parent().SpanID() != job.SpanContext().SpanID() {
			t.Errorf("%s is not under the job's span", s.Name())
		}
	}
	slices.Sort(names)
	want := []string{"managed GET /v1/predictions/{id}", "managed GET output", "managed POST /v1/predictions"}
	if !slices.Equal(names, want) {
		t.Errorf("client spans %q, want %q", names, want)
	}
	if n := f.traceparents.Load(); n != 0 {
		t.Errorf("%d provider calls carried a traceparent; the provider is a third party", n)
	}
}
