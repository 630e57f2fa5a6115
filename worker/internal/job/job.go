// Package job runs one staging job: it calls the vstage service through the
// public client and turns the answer into a database update and an asynq
// outcome — done, retry (after the service's Retry-After at least), delay
// without using a retry, or fail for good.
package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/client"
	"github.com/vstage/vstage/client/backoff"
	"github.com/vstage/vstage/worker/internal/queue"
	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/tracing"
)

// Stager stages one image; *client.Client is one.
type Stager interface {
	Infer(ctx context.Context, req client.Request) (*client.Response, error)
}

// Recorder records jobs; *store.Store is one.
type Recorder interface {
	Start(ctx context.Context, img store.Image, tier string) (store.Started, error)
	Staged(ctx context.Context, id string, r store.Result) (bool, error)
	Failed(ctx context.Context, id, code, message string, metrics any) (bool, error)
}

// Handler is the asynq handler of staging jobs.
type Handler struct {
	stager  Stager
	rec     Recorder
	metrics *Metrics
	log     *slog.Logger
	// deadline bounds one attempt.
	deadline time.Duration
	// breakerOpen is how long a job that met an open circuit waits.
	breakerOpen time.Duration
	tracer      trace.Tracer
}

// NewHandler returns a Handler whose attempts last at most deadline. Each
// attempt is a span of tp, linked to the span that enqueued the job.
func NewHandler(s Stager, r Recorder, m *Metrics, log *slog.Logger, deadline, breakerOpen time.Duration, tp trace.TracerProvider) *Handler {
	return &Handler{
		stager: s, rec: r, metrics: m, log: log, deadline: deadline, breakerOpen: breakerOpen,
		tracer: tp.Tracer("github.com/vstage/vstage/worker"),
	}
}

// Error codes of failures that are not the service's answers.
const (
	CodeTransport   = "transport"    // no answer: refused, reset, attempt timeout
	CodeDeadline    = "deadline"     // the job attempt's WORKER_JOB_DEADLINE passed
	CodeCircuitOpen = "circuit_open" // the client's breaker refused the call
	CodeDatabase    = "database"     // PostgreSQL failed
	CodeBadTask     = "bad_task"     // the task's payload cannot be read
)

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, t *asynq.Task) (err error) {
	p, err := queue.Decode(t)
	if err != nil {
		h.metrics.attempts.WithLabelValues("", OutcomeFailed, CodeBadTask).Inc()
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	// A new trace per attempt, linked to the enqueuing span: the job's
	// attempts can be hours apart, and one trace each stays readable.
	ctx, span := h.tracer.Start(ctx, "vstage.job", trace.WithNewRoot(), trace.WithLinks(tracing.Links(p.Traceparent)...),
		trace.WithAttributes(attribute.String("vstage.image_id", p.Image.ID), attribute.String("vstage.tier", p.Tier)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "attempt failed")
		}
		span.End()
	}()
	h.metrics.inFlight.Inc()
	defer h.metrics.inFlight.Dec()
	log := h.log.With("image_id", p.Image.ID, "queue", p.Tier)
	started, err := h.rec.Start(ctx, p.Image, p.Tier)
	if err != nil {
		h.metrics.attempts.WithLabelValues(p.Tier, OutcomeRetried, CodeDatabase).Inc()
		log.Error("job not started", "error", err)
		return err
	}
	queueWait := max(time.Since(started.EnqueuedAt), 0)
	if started.Attempts == 1 {
		h.metrics.queueWait.WithLabelValues(p.Tier).Observe(queueWait.Seconds())
	}
	log = log.With("attempt", started.Attempts)
	span.SetAttributes(attribute.Int("vstage.attempt", started.Attempts))
	if started.Status == store.StatusStaged {
		h.metrics.attempts.WithLabelValues(p.Tier, OutcomeSkipped, "").Inc()
		log.Info("job skipped: the image is already staged")
		return nil
	}
	begin := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, h.deadline)
	defer cancel()
	resp, err := h.stager.Infer(callCtx, request(p))
	a := attempt{p: p, started: started, queueWait: queueWait, took: time.Since(begin), log: log}
	if err == nil {
		return h.staged(ctx, a, resp)
	}
	return h.failed(ctx, a, err)
}

// attempt is what the outcome of one call needs to be recorded.
type attempt struct {
	p         queue.Payload
	started   store.Started
	queueWait time.Duration
	took      time.Duration
	log       *slog.Logger
}

func (a attempt) metrics(resp *client.Response) map[string]any {
	m := map[string]any{
		"queue_wait_ms": a.queueWait.Milliseconds(), "inference_ms": a.took.Milliseconds(), "attempts": a.started.Attempts,
	}
	if resp != nil {
		m["backend_ms"] = resp.DurationMS
	}
	return m
}

func (h *Handler) staged(ctx context.Context, a attempt, resp *client.Response) error {
	moved, err := h.rec.Staged(ctx, a.p.Image.ID, store.Result{StagedKey: resp.StagedKey, Meta: meta(a, resp), Metrics: a.metrics(resp)})
	if err != nil {
		// The service keeps the result: the retry is answered as a replay.
		h.metrics.attempts.WithLabelValues(a.p.Tier, OutcomeRetried, CodeDatabase).Inc()
		a.log.Error("job staged but not recorded", "error", err)
		return err
	}
	h.metrics.attempts.WithLabelValues(a.p.Tier, OutcomeStaged, "").Inc()
	h.metrics.duration.WithLabelValues(a.p.Tier, OutcomeStaged).Observe(a.took.Seconds())
	a.log.Info("job staged", "staged_key", resp.StagedKey, "backend", resp.Backend, "replay", resp.Replay,
		"duration_ms", a.took.Milliseconds(), "recorded", moved)
	return nil
}

func (h *Handler) failed(ctx context.Context, a attempt, err error) error {
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// The worker is shutting down: asynq puts the task back as it was.
		return err
	}
	code, message, retryable, after := classify(err)
	if errors.Is(err, client.ErrCircuitOpen) {
		after = h.breakerOpen
	}
	delayed := retryable && delays(code)
	lastTry := retryable && !delayed && isLastRetry(ctx)
	outcome := OutcomeRetried
	switch {
	case delayed:
		outcome = OutcomeDelayed
	case !retryable || lastTry:
		outcome = OutcomeFailed
	}
	h.metrics.attempts.WithLabelValues(a.p.Tier, outcome, metricCode(code)).Inc()
	h.metrics.duration.WithLabelValues(a.p.Tier, outcome).Observe(a.took.Seconds())
	code, message = clip(code, maxCodeBytes), clip(message, maxMessageBytes)
	a.log.Warn("job attempt failed", "outcome", outcome, "code", code, "error", err, "retry_after_ms", after.Milliseconds())
	if outcome == OutcomeFailed {
		if _, derr := h.rec.Failed(ctx, a.p.Image.ID, code, message, a.metrics(nil)); derr != nil {
			a.log.Error("job failure not recorded", "error", derr)
			return derr
		}
		if !retryable {
			return fmt.Errorf("%s: %w (%w)", code, err, asynq.SkipRetry)
		}
		return err
	}
	return &retryError{err: err, after: after, delay: delayed}
}

// Bounds of what an answer may make the worker store and count: the code
// and message come from the service (or whatever answered in its place).
const (
	maxCodeBytes    = 64
	maxMessageBytes = 1024
)

// knownCodes are the codes that get a series of their own in the metrics.
var knownCodes = map[string]bool{
	client.CodeInvalidInput: true, client.CodeForbidden: true, client.CodeNotFound: true,
	client.CodeIdempotencyConflict: true, client.CodeInProgress: true, client.CodePayloadTooLarge: true,
	client.CodeUnsupportedMediaType: true, client.CodeImageTooLarge: true, client.CodeContentRejected: true, client.CodeOverloaded: true,
	client.CodeUnavailable: true, client.CodeOOM: true, client.CodeTimeout: true, client.CodeProviderError: true,
	client.CodeInternal: true, client.CodeUnauthorized: true,
	CodeTransport: true, CodeDeadline: true, CodeCircuitOpen: true, CodeDatabase: true, CodeBadTask: true,
}

// metricCode bounds the code label: a code the service does not document
// (a proxy's error page, a newer service) counts as other.
func metricCode(code string) string {
	if knownCodes[code] {
		return code
	}
	return "other"
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// delays says whether a retryable code means "not now" rather than a
// failure: the service is full, another replica runs the job, or the
// client's circuit is open. Such an attempt waits without using a retry,
// so a long overload postpones jobs instead of failing them.
func delays(code string) bool {
	return code == client.CodeOverloaded || code == client.CodeInProgress || code == CodeCircuitOpen
}

func isLastRetry(ctx context.Context) bool {
	n, ok1 := asynq.GetRetryCount(ctx)
	most, ok2 := asynq.GetMaxRetry(ctx)
	return ok1 && ok2 && n >= most
}

// classify returns err's code and message, whether a retry may succeed, and
// the service's minimum wait.
func classify(err error) (code, message string, retryable bool, after time.Duration) {
	var e *client.Error
	switch {
	case errors.As(err, &e):
		code = e.Code
		if code == "" {
			code = fmt.Sprintf("http_%d", e.StatusCode)
		}
		return code, e.Message, e.Retryable, e.RetryAfter
	case errors.Is(err, client.ErrCircuitOpen):
		return CodeCircuitOpen, "the client's circuit is open: the service keeps failing", true, 0
	case errors.Is(err, context.DeadlineExceeded):
		return CodeDeadline, "the job attempt ran past WORKER_JOB_DEADLINE", true, 0
	}
	// No answer: a refused or reset connection, an attempt timeout. The
	// service deduplicates by image_id, so retrying is safe.
	return CodeTransport, err.Error(), true, 0
}

// retryError is a retryable failure with the service's minimum wait.
type retryError struct {
	err   error
	after time.Duration
	// delay is true when the attempt does not use one of the job's retries.
	delay bool
}

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

// IsFailure is asynq's Config.IsFailure: a delayed attempt does not use a
// retry.
func IsFailure(err error) bool {
	var r *retryError
	return !errors.As(err, &r) || !r.delay
}

// RetryDelay returns asynq's Config.RetryDelayFunc: exponential backoff
// with jitter between minWait and maxWait, never under the service's
// Retry-After; a delayed attempt waits the Retry-After (or minWait).
func RetryDelay(minWait, maxWait time.Duration) asynq.RetryDelayFunc {
	return func(n int, err error, _ *asynq.Task) time.Duration {
		var r *retryError
		if errors.As(err, &r) && r.delay {
			return max(r.after, minWait)
		}
		d := backoff.Delay(n+1, minWait, maxWait)
		if errors.As(err, &r) {
			d = max(d, r.after)
		}
		return d
	}
}

func request(p queue.Payload) client.Request {
	return client.Request{
		ImageID: p.Image.ID, OriginalKey: p.Image.OriginalKey, MaskKey: p.Image.MaskKey,
		RoomType: p.Image.RoomType, Style: p.Image.Style, Seed: p.Image.Seed, Tier: p.Tier,
		Label: p.Image.Label, Upscale: p.Image.Upscale,
	}
}

// meta is images.inference_meta: what produced the image.
func meta(a attempt, r *client.Response) map[string]any {
	params := map[string]any{"room_type": a.p.Image.RoomType, "style": a.p.Image.Style, "tier": a.p.Tier}
	if a.p.Image.MaskKey != "" {
		params["mask_key"] = a.p.Image.MaskKey
	}
	if a.p.Image.Label != nil {
		params["label"] = *a.p.Image.Label
	}
	if a.p.Image.Upscale {
		params["upscale"] = true
	}
	warnings := r.Warnings
	if warnings == nil {
		warnings = []string{}
	}
	return map[string]any{
		"model_rev": r.ModelRev, "seed": r.Seed, "parameters": params, "backend": r.Backend,
		"warnings": warnings, "width": r.Width, "height": r.Height, "replay": r.Replay,
		"timings": map[string]any{"service_ms": r.DurationMS, "call_ms": a.took.Milliseconds()},
	}
}
