package job

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/client"
	"github.com/vstage/vstage/worker/internal/queue"
	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/tracing"
)

// spanStager answers every call, or fails it, and keeps the span context
// each call was made in.
type spanStager struct {
	seen []trace.SpanContext
	err  error
}

func (s *spanStager) Infer(ctx context.Context, req client.Request) (*client.Response, error) {
	s.seen = append(s.seen, trace.SpanContextFromContext(ctx))
	if s.err != nil {
		return nil, s.err
	}
	return &client.Response{StagedKey: "staged/" + req.ImageID + ".jpg", Width: 8, Height: 6}, nil
}

// memRecorder is a Recorder that remembers nothing: the database's part is
// tested against PostgreSQL elsewhere.
type memRecorder struct{}

func (memRecorder) Start(context.Context, store.Image, string) (store.Started, error) {
	return store.Started{Status: store.StatusProcessing, Attempts: 1, EnqueuedAt: time.Now()}, nil
}
func (memRecorder) Staged(context.Context, string, store.Result) (bool, error) { return true, nil }
func (memRecorder) Failed(context.Context, string, string, string, any) (bool, error) {
	return true, nil
}

// The job's span is the parent of the service call and links to the span
// that enqueued the job, whose context the task carried.
func TestJobSpanLinksToTheEnqueuingSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	_, enqueuing := tp.Tracer("test").Start(context.Background(), "platform enqueue")
	enqueuing.End()
	ctx := trace.ContextWithSpan(context.Background(), enqueuing)
	payload := queue.Payload{
		Image:       store.Image{ID: "img-1", OriginalKey: "a/b.jpg", RoomType: "bedroom", Style: "modern"},
		Tier:        "pro",
		Traceparent: tracing.Traceparent(ctx),
	}
	body, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	st := &spanStager{}
	h := NewHandler(st, memRecorder{}, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler), time.Minute, time.Second, tp)
	if err := h.ProcessTask(t.Context(), asynq.NewTask(queue.TaskType, body)); err != nil {
		t.Fatal(err)
	}
	var job sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "vstage.job" {
			job = s
		}
	}
	if job == nil {
		t.Fatal("no vstage.job span")
	}
	links := job.Links()
	if len(links) != 1 || links[0].SpanContext.SpanID() != enqueuing.SpanContext().SpanID() ||
		links[0].SpanContext.TraceID() != enqueuing.SpanContext().TraceID() {
		t.Errorf("links %+v, want one to the enqueuing span %s", links, enqueuing.SpanContext().SpanID())
	}
	if job.SpanContext().TraceID() == enqueuing.SpanContext().TraceID() {
		t.Error("the attempt joined the enqueuing trace; it must start its own and link")
	}
	if len(st.seen) != 1 || st.seen[0].SpanID() != job.SpanContext().SpanID() {
		t.Errorf("the service was called in span %v, want the job's %s", st.seen, job.SpanContext().SpanID())
	}
}

// A failed attempt ends its span in error; a task without a trace context
// gets a span without links.
func TestFailedJobSpanIsAnError(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	body, _ := json.Marshal(queue.Payload{Image: store.Image{ID: "img-2", OriginalKey: "a/b.jpg", RoomType: "bedroom", Style: "modern"}, Tier: "free"})
	st := &spanStager{err: &client.Error{StatusCode: 503, Code: client.CodeUnavailable, Retryable: true}}
	h := NewHandler(st, memRecorder{}, NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler), time.Minute, time.Second, tp)
	if err := h.ProcessTask(t.Context(), asynq.NewTask(queue.TaskType, body)); err == nil {
		t.Fatal("a 503 attempt succeeded")
	}
	spans := rec.Ended()
	if len(spans) != 1 || spans[0].Status().Code != codes.Error || len(spans[0].Links()) != 0 {
		t.Fatalf("spans %v, want one vstage.job in error with no links", spans)
	}
}
