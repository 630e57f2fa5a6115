package client

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// The default transport sends each attempt's span as the W3C traceparent,
// under one span for the whole call, itself under the caller's span.
func TestInferSendsTraceContext(t *testing.T) {
	var (
		mu      sync.Mutex
		parents []string
	)
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents = append(parents, r.Header.Get("Traceparent"))
		calls++
		n := calls
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"starting","retryable":true}}`)
			return
		}
		fmt.Fprint(w, `{"staged_key":"s.jpg","width":8,"height":6,"model_rev":"m","seed":3,"duration_ms":12,"backend":"self"}`)
	}))
	t.Cleanup(srv.Close)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	c, err := New(srv.URL, WithTracerProvider(tp), WithPropagator(propagation.TraceContext{}), WithBackoff(time.Millisecond, 2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, caller := tp.Tracer("test").Start(t.Context(), "enqueue-consumer")
	if _, err := c.Infer(ctx, req); err != nil {
		t.Fatal(err)
	}
	caller.End()

	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		byName[s.Name()] = append(byName[s.Name()], s)
	}
	infer := byName["vstage.infer"]
	if len(infer) != 1 {
		t.Fatalf("spans %v, want one vstage.infer", names(rec.Ended()))
	}
	if infer[0].Parent().SpanID() != caller.SpanContext().SpanID() {
		t.Errorf("vstage.infer's parent is %s, want the caller's span", infer[0].Parent().SpanID())
	}
	var attempts []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			attempts = append(attempts, s)
		}
	}
	if len(attempts) != 2 || len(parents) != 2 {
		t.Fatalf("%d client spans and %d requests, want 2 of each", len(attempts), len(parents))
	}
	for i, a := range attempts {
		if a.Parent().SpanID() != infer[0].SpanContext().SpanID() {
			t.Errorf("attempt %d is not under vstage.infer", i)
		}
		want := fmt.Sprintf("00-%s-%s-01", a.SpanContext().TraceID(), a.SpanContext().SpanID())
		if parents[i] != want {
			t.Errorf("request %d traceparent %q, want %q (its attempt's span)", i, parents[i], want)
		}
	}
	if attempts[0].Status().Code != codes.Error {
		t.Errorf("the 503 attempt's status is %v, want Error", attempts[0].Status())
	}
	if infer[0].Status().Code == codes.Error {
		t.Errorf("vstage.infer is an error, but the call succeeded")
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name())
	}
	return out
}
