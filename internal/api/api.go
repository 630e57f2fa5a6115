// Package api is the sidecar's HTTP interface: the routes, the JSON request
// and response types, the error model's status codes, and the middleware
// that gives every request one log line and its metrics.
package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/vstage/vstage/internal/catalog"
	"github.com/vstage/vstage/internal/fault"
	"github.com/vstage/vstage/internal/httpjson"
	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/staging"
	"github.com/vstage/vstage/internal/telemetry"
)

// Stager runs staging jobs; *staging.Service is the production one.
type Stager interface {
	Stage(ctx context.Context, req staging.Request) (staging.Outcome, error)
}

// Options configure the API.
type Options struct {
	// MaxBodyBytes caps the /infer request body.
	MaxBodyBytes int64
	// RequestTimeout is the deadline of one /infer request.
	RequestTimeout time.Duration
	// Mode is the configured inference mode, for log lines.
	Mode mode.Mode
	// Ready reports why the service cannot take work, or nil when it can.
	// Nil means ready whenever the server is not draining.
	Ready func(context.Context) error
	// Engine describes the engine for /readyz (its model_rev, backend and
	// device), so that a test model is never taken for a real one; it
	// returns nil before the engine has said. A nil Engine adds nothing.
	Engine func() map[string]string
	// TracerProvider makes a server span of every request but the probes
	// and scrapes, continuing the caller's trace from its W3C traceparent
	// and tracestate headers (read by Propagator). Nil makes none, and
	// Propagator, when set, only puts the caller's trace context in the
	// request's context, so that logs and the engine still see it.
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
}

// Server holds the API's dependencies and its draining state.
type Server struct {
	stager   Stager
	catalog  *catalog.Catalog
	gatherer prometheus.Gatherer
	metrics  *telemetry.HTTPMetrics
	log      *slog.Logger
	opts     Options
	draining atomic.Bool
}

// New returns a Server. The gatherer is exposed at /metrics.
func New(st Stager, cat *catalog.Catalog, gatherer prometheus.Gatherer, metrics *telemetry.HTTPMetrics, log *slog.Logger, opts Options) *Server {
	return &Server{stager: st, catalog: cat, gatherer: gatherer, metrics: metrics, log: log, opts: opts}
}

// Drain turns readiness off and refuses new jobs with 503 unavailable, while
// requests already running go on. It cannot be undone.
func (s *Server) Drain() { s.draining.Store(true) }

// Handler returns the routes with their middleware.
func (s *Server) Handler() http.Handler {
	mux := s.routes()
	if s.opts.TracerProvider == nil {
		if p := s.opts.Propagator; p != nil {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mux.ServeHTTP(w, r.WithContext(p.Extract(r.Context(), propagation.HeaderCarrier(r.Header))))
			})
		}
		return mux
	}
	opts := []otelhttp.Option{
		otelhttp.WithTracerProvider(s.opts.TracerProvider),
		otelhttp.WithFilter(func(r *http.Request) bool { return !quiet(r.URL.Path) }),
		// The route is known only once chi has matched it; observe renames
		// the span then.
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return methodLabel(r.Method) }),
	}
	if s.opts.Propagator != nil {
		opts = append(opts, otelhttp.WithPropagators(s.opts.Propagator))
	}
	return otelhttp.NewHandler(mux, "", opts...)
}

// quiet reports whether path is a probe's or a scrape's: they are neither
// traced nor logged, or they would drown both.
func quiet(path string) bool {
	return path == "/metrics" || path == "/healthz" || path == "/readyz"
}

func (s *Server) routes() *chi.Mux {
	mux := chi.NewRouter()
	mux.Use(s.observe, s.recoverPanic)
	mux.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, fault.New(fault.RouteNotFound, "no route %.16q %.100q", r.Method, r.URL.Path))
	})
	mux.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		// chi sets Allow only in its own 405 handler, not in one given to it.
		allowed := allowedMethods(mux, r.URL.Path)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, r, fault.New(fault.MethodNotAllowed, "method %.16q is not allowed on %.100q; use %s",
			r.Method, r.URL.Path, strings.Join(allowed, " or ")))
	})
	mux.Post("/infer", s.handleInfer)
	mux.Get("/v1/catalog", s.handleCatalog)
	mux.Get("/healthz", s.handleHealthz)
	mux.Get("/readyz", s.handleReadyz)
	mux.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		EnableOpenMetrics: true,
	}))
	return mux
}

// standardMethods are the request methods of RFC 9110 plus PATCH: the only
// ones that appear by name in metrics, logs and Allow headers.
var standardMethods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace,
}

// methodLabel names a request method for metric labels and log lines: a
// standard method as itself, anything else as "other", so that clients
// cannot add series or grow lines with methods of their own invention.
func methodLabel(method string) string {
	for _, m := range standardMethods {
		if method == m {
			return m
		}
	}
	return "other"
}

// allowedMethods lists the methods routes answers on path.
func allowedMethods(routes chi.Routes, path string) []string {
	var out []string
	for _, m := range standardMethods {
		if routes.Find(chi.NewRouteContext(), m, path) != "" {
			out = append(out, m)
		}
	}
	return out
}

type catalogEntry struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type catalogBody struct {
	RoomTypes []catalogEntry `json:"room_types"`
	Styles    []catalogEntry `json:"styles"`
	Defaults  struct {
		Strength      float64 `json:"strength"`
		GuidanceScale float64 `json:"guidance_scale"`
	} `json:"defaults"`
}

func (s *Server) handleCatalog(w http.ResponseWriter, _ *http.Request) {
	var b catalogBody
	for _, e := range s.catalog.RoomTypes {
		b.RoomTypes = append(b.RoomTypes, catalogEntry{ID: e.ID, Name: e.Name})
	}
	for _, e := range s.catalog.Styles {
		b.Styles = append(b.Styles, catalogEntry{ID: e.ID, Name: e.Name})
	}
	b.Defaults.Strength = s.catalog.Defaults.Strength
	b.Defaults.GuidanceScale = s.catalog.Defaults.GuidanceScale
	w.Header().Set("Cache-Control", "public, max-age=300")
	httpjson.WriteJSON(w, http.StatusOK, b)
}

type statusBody struct {
	Status string            `json:"status"`
	Reason string            `json:"reason,omitempty"`
	Engine map[string]string `json:"engine,omitempty"`
}

// handleHealthz says the sidecar process is serving; it deliberately
// ignores dependencies, so an orchestrator never kills a pod that is only
// waiting for one.
func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	httpjson.WriteJSON(w, http.StatusOK, statusBody{Status: "ok"})
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		httpjson.WriteJSON(w, http.StatusServiceUnavailable, statusBody{Status: "unavailable", Reason: "draining"})
		return
	}
	var engine map[string]string
	if s.opts.Engine != nil {
		engine = s.opts.Engine()
	}
	if s.opts.Ready != nil {
		if err := s.opts.Ready(r.Context()); err != nil {
			httpjson.WriteJSON(w, http.StatusServiceUnavailable, statusBody{Status: "unavailable", Reason: err.Error(), Engine: engine})
			return
		}
	}
	httpjson.WriteJSON(w, http.StatusOK, statusBody{Status: "ready", Engine: engine})
}

// fields collects what the handlers learn about a request for its one log
// line.
type fields struct {
	imageID     string
	backend     string
	replay      bool
	backendTime time.Duration
	engineTime  time.Duration
	code        fault.Code
	err         error
}

type fieldsKey struct{}

func fieldsFrom(ctx context.Context) *fields {
	f, _ := ctx.Value(fieldsKey{}).(*fields)
	return f
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// observe gives every request an id, one log line and its metrics.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if !requestIDPattern.MatchString(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		f := &fields{}
		r = r.WithContext(context.WithValue(r.Context(), fieldsKey{}, f))
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		s.metrics.InFlight.Inc()
		defer s.metrics.InFlight.Dec()

		next.ServeHTTP(sw, r)

		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		if f.code == fault.Canceled {
			sw.status = httpjson.StatusClientClosedRequest
		}
		elapsed := time.Since(start)
		method := methodLabel(r.Method)
		s.metrics.Requests.WithLabelValues(route, method, strconv.Itoa(sw.status)).Inc()
		s.metrics.Duration.WithLabelValues(route, method).Observe(elapsed.Seconds())
		// An answer of known length is complete: send it now rather than
		// after the log line, whose write may wait on a slow log sink.
		if sw.Header().Get("Content-Length") != "" {
			_ = http.NewResponseController(w).Flush()
		}
		if quiet(route) {
			return
		}
		if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
			span.SetName(method + " " + route)
			span.SetAttributes(semconv.HTTPRoute(route), attribute.String("vstage.request_id", id))
			if f.imageID != "" {
				span.SetAttributes(attribute.String("vstage.image_id", f.imageID))
			}
			if f.code != "" {
				span.SetAttributes(attribute.String("vstage.error.code", string(f.code)))
			}
		}
		attrs := []slog.Attr{
			slog.String("request_id", id), slog.String("method", method), slog.String("route", route),
			slog.Int("status", sw.status), slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		}
		if f.imageID != "" {
			attrs = append(attrs, slog.String("image_id", f.imageID), slog.String("mode", string(s.opts.Mode)))
		}
		if f.backend != "" {
			attrs = append(attrs, slog.String("backend", f.backend), slog.Bool("replay", f.replay))
			if f.backendTime > 0 {
				attrs = append(attrs, slog.Float64("backend_ms", float64(f.backendTime.Microseconds())/1000))
			}
			if f.engineTime > 0 {
				attrs = append(attrs, slog.Float64("engine_ms", float64(f.engineTime.Microseconds())/1000))
			}
		}
		level := slog.LevelInfo
		if f.code != "" {
			attrs = append(attrs, slog.String("code", string(f.code)))
			if httpjson.StatusOf(f.code) >= 500 && f.code != fault.Canceled {
				level = slog.LevelError
				attrs = append(attrs, slog.String("error", errString(f.err)))
			}
		}
		s.log.LogAttrs(r.Context(), level, "request", attrs...)
	})
}

// recoverPanic answers a panicking handler with 500 internal and logs the
// stack, so one bad request cannot take the process down.
func (s *Server) recoverPanic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "handler panicked", "panic", v, "stack", string(debug.Stack()))
				writeError(w, r, fault.New(fault.Internal, "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
