// Package managed is the backend for a hosted GPU provider whose HTTP API is
// shaped like Replicate's predictions API: create a prediction for a model
// version with the job's inputs, wait for it or poll it until it ends, then
// download its output image.
//
// Calls are bounded by per-call timeouts inside the job's deadline and
// retried with exponential backoff and jitter on 429, 5xx and timeouts only.
// A circuit breaker stops calling a failing provider; while it is open the
// backend either answers from a fallback backend (the mock) with the warning
// "fallback_mock", or fails at once with a retryable provider_error.
package managed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/internal/backend"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/mode"
)

// WarningFallback is the warning of a result produced by the fallback
// backend because the provider's circuit was open.
const WarningFallback = "fallback_mock"

// Options configures a Backend. BaseURL, Version and Token are required;
// every other zero field takes the default given in its comment.
type Options struct {
	// BaseURL is the provider's API root, such as https://api.replicate.com;
	// requests go to BaseURL + "/v1/predictions".
	BaseURL string
	// Version is the model version the predictions run.
	Version string
	// Token authenticates every call to BaseURL's origin. See ReadToken.
	Token Token
	// ModelRev is the model_rev of results; default "managed:" + Version.
	ModelRev string

	// HTTPClient makes the calls; default a client with its own transport
	// and no overall timeout, since CallTimeout bounds each call.
	HTTPClient *http.Client
	// CallTimeout bounds one HTTP call, inside the job's deadline; default
	// 30s.
	CallTimeout time.Duration
	// Wait, when positive, asks the provider to hold the create call up to
	// this long (whole seconds, 1 to 60) and answer with the finished
	// prediction ("Prefer: wait=N"); default 0, no wait.
	Wait time.Duration
	// PollInterval is the pause between two polls; default 1s.
	PollInterval time.Duration
	// Steps is num_inference_steps; default 0, the model's own default.
	Steps int
	// MaxOutputBytes caps the downloaded image; default 32 MiB.
	MaxOutputBytes int64
	// MaxOutputPixels caps the output's declared size; default 64 Mpx.
	MaxOutputPixels int64

	// MaxAttempts bounds the tries of one call (1 means no retry);
	// default 4.
	MaxAttempts int
	// BackoffBase and BackoffMax shape the exponential backoff; defaults
	// 250ms and 5s.
	BackoffBase time.Duration
	BackoffMax  time.Duration

	// BreakerFailures is the number of consecutive failed jobs that opens
	// the circuit; default 5.
	BreakerFailures uint32
	// BreakerOpenTimeout is how long the circuit stays open before one
	// trial job is let through; default 30s.
	BreakerOpenTimeout time.Duration
	// BreakerHalfOpenJobs is how many trial jobs may run while half-open;
	// default 1.
	BreakerHalfOpenJobs uint32

	// FallbackToMock makes an open circuit answer from Fallback, which must
	// then be set, instead of failing.
	FallbackToMock bool
	Fallback       backend.Backend

	// Logger receives retries and circuit changes; default discards them.
	Logger *slog.Logger
	// OnCircuitChange, when set, is called with the old and new breaker
	// states ("closed", "half-open", "open") on every change, for a metric.
	// It runs while the breaker holds its lock and must not call Stage.
	OnCircuitChange func(from, to string)
}

func (o *Options) setDefaults() {
	def := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	def(&o.CallTimeout, 30*time.Second)
	def(&o.PollInterval, time.Second)
	def(&o.BackoffBase, 250*time.Millisecond)
	def(&o.BackoffMax, 5*time.Second)
	def(&o.BreakerOpenTimeout, 30*time.Second)
	if o.MaxOutputBytes <= 0 {
		o.MaxOutputBytes = 32 << 20
	}
	if o.MaxOutputPixels <= 0 {
		o.MaxOutputPixels = 64 << 20
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 4
	}
	if o.BreakerFailures == 0 {
		o.BreakerFailures = 5
	}
	if o.BreakerHalfOpenJobs == 0 {
		o.BreakerHalfOpenJobs = 1
	}
	if o.ModelRev == "" {
		o.ModelRev = "managed:" + o.Version
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
}

// Backend stages images on the hosted provider. It is safe for concurrent
// use.
type Backend struct {
	opts    Options
	base    *url.URL
	client  *http.Client
	log     *slog.Logger
	breaker *gobreaker.CircuitBreaker[backend.Result]
}

// New checks opts and returns a Backend.
func New(opts Options) (*Backend, error) {
	base, err := url.Parse(strings.TrimRight(opts.BaseURL, "/"))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("managed: base URL must be an http(s) URL, got %q", opts.BaseURL)
	}
	if opts.Version == "" {
		return nil, errors.New("managed: the model version is missing")
	}
	if opts.Token == "" {
		return nil, errors.New("managed: the provider token is missing")
	}
	if opts.FallbackToMock && opts.Fallback == nil {
		return nil, errors.New("managed: fallback to mock needs a fallback backend")
	}
	if opts.Wait > 60*time.Second {
		return nil, fmt.Errorf("managed: wait must be at most 60s, got %s", opts.Wait)
	}
	opts.setDefaults()
	b := &Backend{opts: opts, base: base, client: opts.HTTPClient, log: opts.Logger}
	b.breaker = gobreaker.NewCircuitBreaker[backend.Result](gobreaker.Settings{
		Name:        "managed",
		MaxRequests: opts.BreakerHalfOpenJobs,
		Timeout:     opts.BreakerOpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= opts.BreakerFailures },
		IsExcluded:  excluded,
		OnStateChange: func(_ string, from, to gobreaker.State) {
			b.log.Warn("managed provider circuit changed", slog.String("from", from.String()), slog.String("to", to.String()))
			if opts.OnCircuitChange != nil {
				opts.OnCircuitChange(from.String(), to.String())
			}
		},
	})
	return b, nil
}

// Name returns "managed".
func (b *Backend) Name() string { return string(mode.Managed) }

// CircuitState returns the breaker's state: "closed", "half-open" or
// "open", for readiness and metrics.
func (b *Backend) CircuitState() string { return b.breaker.State().String() }

// Stage runs the job on the provider. Errors are from the fault package:
// provider_error for a failing, refusing or misbehaving provider (and at
// once while the circuit is open, unless the fallback answers), timeout
// when ctx's deadline passes, canceled when ctx is canceled.
func (b *Backend) Stage(ctx context.Context, job backend.Job) (backend.Result, error) {
	if err := ctx.Err(); err != nil {
		return backend.Result{}, b.fault(err)
	}
	res, err := b.breaker.Execute(func() (backend.Result, error) { return b.run(ctx, job) })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		if b.opts.FallbackToMock {
			res, err := b.opts.Fallback.Stage(ctx, job)
			if err != nil {
				return backend.Result{}, err
			}
			res.Warnings = append(res.Warnings, WarningFallback)
			res.Backend = b.opts.Fallback.Name()
			return res, nil
		}
		return backend.Result{}, fault.Wrap(err, fault.ProviderError, "the managed provider is failing and calls to it are paused; retry later")
	}
	if err != nil {
		return backend.Result{}, b.fault(err)
	}
	return res, nil
}

// excluded tells the breaker which failures say nothing about the
// provider's health: the caller's own cancellation, and a refusal of this
// job's input.
func excluded(err error) bool {
	if errors.Is(err, context.Canceled) {
		return true
	}
	var ce *callError
	return errors.As(err, &ce) && (ce.status == http.StatusBadRequest || ce.status == http.StatusUnprocessableEntity)
}

// fault maps a failure of run to the error model.
func (b *Backend) fault(err error) error {
	var (
		ce *callError
		pe *predictionError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return fault.Wrap(err, fault.Canceled, "the request was canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return fault.Wrap(err, fault.Timeout, "the managed provider did not finish within the request deadline")
	case errors.As(err, &pe):
		return fault.Wrap(err, fault.ProviderError, "%s", pe.message())
	case errors.As(err, &ce):
		return callFault(ce)
	}
	return fault.Wrap(err, fault.ProviderError, "the managed provider's answer could not be used")
}

func callFault(ce *callError) error {
	switch {
	case ce.tooLarge:
		return fault.Wrap(ce, fault.ProviderError, "the managed provider's %s answer is too large", ce.op)
	case ce.timeout:
		return fault.Wrap(ce, fault.ProviderError, "the managed provider did not answer the %s call in time", ce.op)
	case ce.status == 0:
		return fault.Wrap(ce, fault.ProviderError, "the managed provider is unreachable")
	case ce.status == http.StatusTooManyRequests || ce.status >= 500:
		return fault.Wrap(ce, fault.ProviderError, "the managed provider failed the %s call (HTTP %d)", ce.op, ce.status)
	}
	// Another 4xx: the provider refused our request; repeating it the same
	// way will not help.
	e := fault.Wrap(ce, fault.ProviderError, "the managed provider refused the %s call (HTTP %d)%s", ce.op, ce.status, detailSuffix(ce.detail))
	e.Retryable = false
	return e
}

func detailSuffix(d string) string {
	if d == "" {
		return ""
	}
	return ": " + d
}

// TracedClient returns an HTTP client for the provider whose calls are
// spans of tp. It sends no trace context: the provider is a third party,
// and our trace ids mean nothing to it.
func TracedClient(tp trace.TracerProvider) *http.Client {
	return &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport.(*http.Transport).Clone(),
		otelhttp.WithTracerProvider(tp),
		otelhttp.WithPropagators(propagation.NewCompositeTextMapPropagator()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return "managed " + r.Method + " " + callName(r.URL.Path)
		}),
	)}
}

// callName names a provider call by the kind of its path, not the path,
// which holds a prediction id: span names must stay few.
func callName(path string) string {
	switch {
	case path == "/v1/predictions" || strings.HasSuffix(path, "/v1/predictions"):
		return "/v1/predictions"
	case strings.Contains(path, "/v1/predictions/"):
		return "/v1/predictions/{id}"
	}
	return "output"
}
