// Package client calls the vstage staging service from another Go program,
// such as a job worker.
//
// Infer sends POST /infer and retries only what the service marks as
// retryable (and transport failures), with exponential backoff and jitter,
// honouring Retry-After, within the caller's context. Retrying is safe
// because the service deduplicates by image_id: a repeated request with the
// same parameters replays the first result instead of staging twice. A
// circuit breaker stops calling a service that keeps failing.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/client/backoff"
)

// Request is the body of POST /infer. Optional fields are left out of the
// JSON when nil or empty, so the service applies its defaults.
type Request struct {
	ImageID       string   `json:"image_id"`
	OriginalKey   string   `json:"original_key"`
	RoomType      string   `json:"room_type"`
	Style         string   `json:"style"`
	MaskKey       string   `json:"mask_key,omitempty"`
	Seed          *uint32  `json:"seed,omitempty"`
	Strength      *float64 `json:"strength,omitempty"`
	GuidanceScale *float64 `json:"guidance_scale,omitempty"`
	// Tier is sent only when set; a service that does not know tiers
	// refuses a request that names one.
	Tier string `json:"tier,omitempty"`
	// Label asks for the "Virtually staged" label burned into the image;
	// nil takes the service's default. It is part of the job: the same
	// image_id with another Label is a conflict.
	Label *bool `json:"label,omitempty"`
	// Upscale asks for the image upscaled to the service's upscale size
	// (UPSCALE_LONG_SIDE); a tier the service does not upscale for is
	// refused with forbidden. It is part of the job, like Label.
	Upscale bool `json:"upscale,omitempty"`
}

// Response is a successful answer of POST /infer.
type Response struct {
	StagedKey  string   `json:"staged_key"`
	Width      int      `json:"width"`
	Height     int      `json:"height"`
	ModelRev   string   `json:"model_rev"`
	Seed       uint32   `json:"seed"`
	DurationMS int64    `json:"duration_ms"`
	Warnings   []string `json:"warnings,omitempty"`
	// Backend is the backend that produced the image: mock, managed or self.
	Backend string `json:"backend,omitempty"`
	// Replay is true when the service answered from an earlier run of the
	// same image_id (the Idempotent-Replay header) and did no new work.
	Replay bool `json:"-"`
}

// The service's error codes; see Error.Code.
const (
	CodeInvalidInput         = "invalid_input"
	CodeForbidden            = "forbidden"
	CodeNotFound             = "not_found"
	CodeIdempotencyConflict  = "idempotency_conflict"
	CodeInProgress           = "in_progress"
	CodePayloadTooLarge      = "payload_too_large"
	CodeUnsupportedMediaType = "unsupported_media_type"
	CodeImageTooLarge        = "image_too_large"
	CodeContentRejected      = "content_rejected"
	CodeOverloaded           = "overloaded"
	CodeUnavailable          = "unavailable"
	CodeOOM                  = "oom"
	CodeTimeout              = "timeout"
	CodeProviderError        = "provider_error"
	CodeInternal             = "internal"
	CodeUnauthorized         = "unauthorized"
)

// Error is an error answer of the service. Use errors.As to get it from an
// error returned by Infer.
type Error struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Code is the service's error code, one of the Code constants, or empty
	// when the answer did not carry the service's error body (a proxy's
	// error page, say).
	Code    string
	Message string
	// Retryable says whether the same request may succeed later. Without
	// an error body it is true for 429, 502, 503 and 504.
	Retryable bool
	// RetryAfter is the service's Retry-After, zero when absent.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	code := e.Code
	if code == "" {
		code = "http_" + strconv.Itoa(e.StatusCode)
	}
	if e.Message == "" {
		return fmt.Sprintf("vstage: %s (HTTP %d)", code, e.StatusCode)
	}
	return fmt.Sprintf("vstage: %s (HTTP %d): %s", code, e.StatusCode, e.Message)
}

// ErrCircuitOpen is returned, wrapped, while the circuit breaker refuses
// calls after repeated failures; retry after the breaker's timeout.
var ErrCircuitOpen = errors.New("vstage: circuit open: the service keeps failing, calls are paused")

// Client calls the service. It is safe for concurrent use; share one per
// service.
type Client struct {
	endpoint string
	http     *http.Client
	cfg      config
	breaker  *gobreaker.CircuitBreaker[*Response]
	// wait pauses between attempts; tests replace it.
	wait   func(ctx context.Context, d time.Duration) error
	tracer trace.Tracer
}

type config struct {
	httpClient      *http.Client
	maxAttempts     int
	backoffBase     time.Duration
	backoffMax      time.Duration
	attemptTimeout  time.Duration
	breakerFailures uint32
	breakerTimeout  time.Duration
	userAgent       string
	maxBodyBytes    int64
	tracerProvider  trace.TracerProvider
	propagator      propagation.TextMapPropagator
}

// Option configures a Client.
type Option func(*config)

// WithHTTPClient sets the HTTP client; the default has its own transport,
// traced, and no overall timeout, since ctx bounds each call. A client
// given here is used as it is: wrap its transport with otelhttp to trace
// its calls and send the trace context.
func WithHTTPClient(c *http.Client) Option { return func(o *config) { o.httpClient = c } }

// WithMaxAttempts bounds the tries of one Infer, the first included;
// default 4. 1 turns retries off.
func WithMaxAttempts(n int) Option { return func(o *config) { o.maxAttempts = n } }

// WithBackoff sets the first retry's wait ceiling and the largest;
// defaults 200ms and 10s. Each wait is random in the upper half of its
// ceiling, and never shorter than the service's Retry-After.
func WithBackoff(base, maxWait time.Duration) Option {
	return func(o *config) { o.backoffBase, o.backoffMax = base, maxWait }
}

// WithAttemptTimeout bounds each attempt, inside ctx's deadline; default 0,
// no bound but ctx's.
func WithAttemptTimeout(d time.Duration) Option { return func(o *config) { o.attemptTimeout = d } }

// WithBreaker sets the consecutive failed attempts that open the circuit
// and how long it stays open before a trial call; defaults 5 and 30s.
// Only failures that say the service is unwell count: transport errors and
// retryable answers, not the caller's own bad requests, cancellations or a
// job that another replica is running (in_progress).
func WithBreaker(failures uint32, openFor time.Duration) Option {
	return func(o *config) { o.breakerFailures, o.breakerTimeout = failures, openFor }
}

// WithTracerProvider sets where the client's spans go: one span per Infer
// and a client span per attempt, whose context the service continues (the
// W3C traceparent header). The default is OpenTelemetry's global provider,
// which records nothing unless the program set one.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *config) { o.tracerProvider = tp }
}

// WithPropagator sets how the trace context travels in the request
// headers; the default is OpenTelemetry's global propagator.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(o *config) { o.propagator = p }
}

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(o *config) { o.userAgent = ua } }

// New returns a Client for the service at baseURL, such as
// "http://vstage.staging.svc:8080".
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("vstage: base URL must be an http(s) URL, got %q", baseURL)
	}
	cfg := config{
		maxAttempts: 4, backoffBase: 200 * time.Millisecond, backoffMax: 10 * time.Second,
		breakerFailures: 5, breakerTimeout: 30 * time.Second,
		userAgent: "vstage-go-client", maxBodyBytes: 1 << 20,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.maxAttempts < 1 || cfg.backoffBase <= 0 || cfg.backoffMax < cfg.backoffBase || cfg.breakerFailures == 0 || cfg.breakerTimeout <= 0 {
		return nil, errors.New("vstage: attempts, backoff and breaker settings must be positive, and the largest backoff at least the first")
	}
	if cfg.tracerProvider == nil {
		cfg.tracerProvider = otel.GetTracerProvider()
	}
	if cfg.propagator == nil {
		cfg.propagator = otel.GetTextMapPropagator()
	}
	if cfg.httpClient == nil {
		cfg.httpClient = &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport.(*http.Transport).Clone(),
			otelhttp.WithTracerProvider(cfg.tracerProvider), otelhttp.WithPropagators(cfg.propagator))}
	}
	c := &Client{
		endpoint: u.String() + "/infer", http: cfg.httpClient, cfg: cfg, wait: backoff.Sleep,
		tracer: cfg.tracerProvider.Tracer("github.com/vstage/vstage/client"),
	}
	c.breaker = gobreaker.NewCircuitBreaker[*Response](gobreaker.Settings{
		Name:         "vstage",
		Timeout:      cfg.breakerTimeout,
		ReadyToTrip:  func(n gobreaker.Counts) bool { return n.ConsecutiveFailures >= cfg.breakerFailures },
		IsSuccessful: healthy,
		IsExcluded:   func(err error) bool { return errors.Is(err, context.Canceled) },
	})
	return c, nil
}

// healthy reports whether an attempt's outcome says the service works: a
// success, an answer that blames the request rather than the service, or
// in_progress (another replica is running the same job: retried, since
// its result will be there, but no sign of trouble).
func healthy(err error) bool {
	var e *Error
	return err == nil || (errors.As(err, &e) && (!e.Retryable || e.Code == CodeInProgress))
}

// Infer stages one image. It retries retryable failures until it succeeds,
// runs out of attempts, or the next wait would pass ctx's deadline; it then
// returns the last failure: an *Error for an answer of the service, an
// error wrapping ErrCircuitOpen, or a transport or context error.
//
// The call is a span, "vstage.infer", under ctx's span; each attempt is an
// HTTP client span under it, whose context the service continues. A caller
// that wants the call linked to an earlier trace (the span that enqueued
// the job, say) starts its own span with that link and passes its context.
func (c *Client) Infer(ctx context.Context, req Request) (*Response, error) {
	ctx, span := c.tracer.Start(ctx, "vstage.infer", trace.WithAttributes(attribute.String("vstage.image_id", req.ImageID)))
	defer span.End()
	resp, attempts, err := c.infer(ctx, req)
	span.SetAttributes(attribute.Int("vstage.attempts", attempts))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "infer failed")
	}
	return resp, err
}

func (c *Client) infer(ctx context.Context, req Request) (*Response, int, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, 0, fmt.Errorf("vstage: encoding the request: %w", err)
	}
	for attempt := 1; ; attempt++ {
		resp, err := c.breaker.Execute(func() (*Response, error) { return c.attempt(ctx, body) })
		if err == nil {
			return resp, attempt, nil
		}
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			return nil, attempt, fmt.Errorf("%w (%w)", ErrCircuitOpen, err)
		}
		if ctx.Err() != nil {
			return nil, attempt, err
		}
		retry, after := retryable(err)
		if !retry || attempt >= c.cfg.maxAttempts {
			return nil, attempt, err
		}
		d := max(backoff.Delay(attempt, c.cfg.backoffBase, c.cfg.backoffMax), after)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
			return nil, attempt, err
		}
		if werr := c.wait(ctx, d); werr != nil {
			return nil, attempt, err
		}
	}
}

// retryable says whether err is worth another attempt, and the service's
// minimum wait.
func retryable(err error) (bool, time.Duration) {
	var e *Error
	if errors.As(err, &e) {
		return e.Retryable, e.RetryAfter
	}
	// No answer: a refused connection, a reset, an attempt timeout. The
	// service deduplicates by image_id, so a request that did arrive is
	// replayed, not run twice.
	return true, 0
}

func (c *Client) attempt(ctx context.Context, body []byte) (*Response, error) {
	if c.cfg.attemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.attemptTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("vstage: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.cfg.userAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("vstage: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.maxBodyBytes))
	if err != nil {
		return nil, fmt.Errorf("vstage: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errorFrom(resp, data)
	}
	var out Response
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, &Error{StatusCode: resp.StatusCode, Message: "the answer is not the expected JSON", Retryable: false}
	}
	out.Replay = resp.Header.Get("Idempotent-Replay") == "true"
	return &out, nil
}

func errorFrom(resp *http.Response, data []byte) *Error {
	e := &Error{StatusCode: resp.StatusCode, RetryAfter: backoff.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	var body struct {
		Error *struct {
			Code      string `json:"code"`
			Message   string `json:"message"`
			Retryable bool   `json:"retryable"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &body) == nil && body.Error != nil && body.Error.Code != "" {
		e.Code, e.Message, e.Retryable = body.Error.Code, body.Error.Message, body.Error.Retryable
		return e
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		e.Retryable = true
	}
	e.Message = http.StatusText(resp.StatusCode)
	return e
}
