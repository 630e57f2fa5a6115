// Package telemetry builds the sidecar's logger and its Prometheus registry
// and metrics. Nothing here is global: the caller owns the registry and
// passes the metrics to the parts that record them.
package telemetry

import (
	"io"
	"log/slog"
	"math"
	"runtime/debug"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Namespace prefixes every metric the service defines.
const Namespace = "vstage"

// NewLogger returns a JSON logger writing to w at the given level. A line
// logged with a context that holds a span carries its trace_id and span_id.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(traceHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
}

// NewRegistry returns a registry with the Go runtime and process collectors
// and a build-info gauge.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	version, goVersion := buildVersion(), "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
	}
	promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
		Name: prometheus.BuildFQName(Namespace, "", "build_info"),
		Help: "A metric with a constant '1' value labelled by the version and Go version the sidecar was built with.",
	}, []string{"version", "goversion"}).WithLabelValues(version, goVersion).Set(1)
	return reg
}

// HTTPMetrics are recorded by the API's middleware for every request.
type HTTPMetrics struct {
	Requests *prometheus.CounterVec
	Duration *prometheus.HistogramVec
	InFlight prometheus.Gauge
}

// NewHTTPMetrics registers the HTTP metrics with reg.
func NewHTTPMetrics(reg prometheus.Registerer) *HTTPMetrics {
	f := promauto.With(reg)
	return &HTTPMetrics{
		Requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(Namespace, "http", "requests_total"),
			Help: "HTTP requests answered, by route pattern, method and status code.",
		}, []string{"route", "method", "status"}),
		Duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(Namespace, "http", "request_duration_seconds"),
			Help:    "Time to answer an HTTP request, by route pattern and method.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"route", "method"}),
		InFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: prometheus.BuildFQName(Namespace, "http", "requests_in_flight"),
			Help: "HTTP requests being served.",
		}),
	}
}

// StagingMetrics are recorded by the staging use case.
type StagingMetrics struct {
	// Jobs counts finished /infer jobs by backend, outcome ("ok",
	// "replay", or the error code) and tier ("unknown" when the request
	// was refused before its tier was read).
	Jobs *prometheus.CounterVec
	// Duration is the time of jobs that ran a backend, by backend and
	// output size (SizeLabel). Observations carry the trace id as an
	// exemplar when the request is traced.
	Duration *prometheus.HistogramVec
	// Phases is the engine's own breakdown of its jobs, by phase.
	Phases *prometheus.HistogramVec
	// Cost and BackendSeconds add up what backend calls cost, by backend
	// and tier, failed calls included: the work was paid for.
	Cost           *prometheus.CounterVec
	BackendSeconds *prometheus.CounterVec
	// Shared counts requests that waited for an identical request's
	// execution instead of running their own.
	Shared prometheus.Counter
	// StorageDuration times storage calls by operation and result.
	StorageDuration *prometheus.HistogramVec
	// InputBytes is the size of the originals read.
	InputBytes prometheus.Histogram
	// ContentDecisions counts the content policy's decisions on self-mode
	// jobs, by decision (ContentDecisions).
	ContentDecisions *prometheus.CounterVec
	// StructureScore is the structure score of answered self-mode jobs
	// that were checked; StructureFailures counts those answered below
	// the minimum (with the warning structure_check_failed), and
	// StructureRetries the extra renders structure retries made.
	StructureScore    prometheus.Histogram
	StructureFailures prometheus.Counter
	StructureRetries  prometheus.Counter
}

// ContentDecisions are the values of the decision label of
// vstage_content_policy_decisions_total.
var ContentDecisions = []string{"pass", "warn", "reject"}

// Phases are the engine's phases, in the order a job goes through them;
// the values of vstage_engine_phase_duration_seconds's phase label.
var Phases = []string{"decode", "preprocess", "content_check", "denoise", "vae_decode", "structure_check", "upscale", "encode"}

// Tiers are the values of the tier label: the admission tiers, and
// "unknown" for requests refused before their tier was read.
var Tiers = []string{"business", "pro", "free", "unknown"}

// NewStagingMetrics registers the staging metrics with reg.
func NewStagingMetrics(reg prometheus.Registerer) *StagingMetrics {
	f := promauto.With(reg)
	m := &StagingMetrics{
		Jobs: f.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(Namespace, "staging", "jobs_total"),
			Help: "Staging jobs finished, by backend, outcome (ok, replay, or the error code) and tier.",
		}, []string{"backend", "outcome", "tier"}),
		Duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(Namespace, "staging", "job_duration_seconds"),
			Help:    "Time from admission to answer of staging jobs that ran a backend, by backend and output size (the side of a square of the same pixel count, rounded up to 256).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 15, 30, 60, 120},
		}, []string{"backend", "size"}),
		Phases: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(Namespace, "engine", "phase_duration_seconds"),
			Help:    "Time of the engine's phases of successful jobs, as the engine measured them: decode, preprocess, content_check, denoise, vae_decode, structure_check (every render's, summed), upscale (upscaled jobs only), encode; a check that did not run is not observed.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 15, 30, 60},
		}, []string{"phase"}),
		Cost: f.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(Namespace, "staging", "cost_dollars_total"),
			Help: "Estimated price of backend calls (GPU_HOUR_COST, MANAGED_COST_PER_SECOND, MANAGED_COST_PER_RUN), failed ones included, by backend and tier.",
		}, []string{"backend", "tier"}),
		BackendSeconds: f.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(Namespace, "staging", "backend_seconds_total"),
			Help: "Time of backend calls (self: a place on the GPU; managed: the provider's run time), failed ones included, by backend and tier.",
		}, []string{"backend", "tier"}),
		Shared: f.NewCounter(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(Namespace, "staging", "shared_executions_total"),
			Help: "Requests answered by an identical concurrent request's execution.",
		}),
		StorageDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(Namespace, "storage", "operation_duration_seconds"),
			Help:    "Time of storage operations, by operation (get, put) and result (ok, not_found, too_large, error).",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"operation", "result"}),
		InputBytes: f.NewHistogram(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(Namespace, "staging", "input_bytes"),
			Help:    "Size of the originals read from storage.",
			Buckets: prometheus.ExponentialBuckets(64<<10, 2, 10),
		}),
	}
	m.ContentDecisions = f.NewCounterVec(prometheus.CounterOpts{
		Name: prometheus.BuildFQName(Namespace, "content_policy", "decisions_total"),
		Help: "Decisions of the content policy (CONTENT_POLICY) on self-mode jobs, by decision: pass, warn (people_detected) or reject (content_rejected).",
	}, []string{"decision"})
	m.StructureScore = f.NewHistogram(prometheus.HistogramOpts{
		Name:    prometheus.BuildFQName(Namespace, "structure", "score"),
		Help:    "Structure score (share of the original's edges kept, outside the mask) of answered self-mode jobs with the structure check on.",
		Buckets: []float64{.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .99},
	})
	m.StructureFailures = f.NewCounter(prometheus.CounterOpts{
		Name: prometheus.BuildFQName(Namespace, "structure_check", "failures_total"),
		Help: "Self-mode jobs answered below QA_STRUCTURE_MIN, with the warning structure_check_failed.",
	})
	m.StructureRetries = f.NewCounter(prometheus.CounterOpts{
		Name: prometheus.BuildFQName(Namespace, "structure", "retries_total"),
		Help: "Extra renders made by structure retries (QA_RETRIES) of answered self-mode jobs.",
	})
	for _, p := range Phases {
		m.Phases.WithLabelValues(p)
	}
	for _, d := range ContentDecisions {
		m.ContentDecisions.WithLabelValues(d)
	}
	return m
}

// sizeStep and maxSizeSide bound the size label: multiples of 256 up to
// 4096, whatever the output.
const (
	sizeStep    = 256
	maxSizeSide = 4096
)

// MaxSizeBucket is the largest SizeBucket.
const MaxSizeBucket = maxSizeSide / sizeStep

// SizeBucket is the size class of a job of the given pixels: the side of a
// square with as many pixels, rounded up to a multiple of 256, in units of
// 256 (so 3 is 768 px, 4 is 1024 px), from 1 to 16.
func SizeBucket(pixels float64) int {
	b := int(math.Ceil(math.Sqrt(pixels)/sizeStep - 1e-9))
	return min(max(b, 1), MaxSizeBucket)
}

// SizeLabel names SizeBucket's class in pixels of side, so a 1024x768 job
// is "1024", with the square 1024 ones whose time and memory it shares
// closely.
func SizeLabel(pixels float64) string {
	return strconv.Itoa(SizeBucket(pixels) * sizeStep)
}
