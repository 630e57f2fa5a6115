// Package telemetry builds the sidecar's logger and its Prometheus registry
// and metrics. Nothing here is global: the caller owns the registry and
// passes the metrics to the parts that record them.
package telemetry

import (
	"io"
	"log/slog"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Namespace prefixes every metric the service defines.
const Namespace = "vstage"

// NewLogger returns a JSON logger writing to w at the given level.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

// NewRegistry returns a registry with the Go runtime and process collectors
// and a build-info gauge.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	version, goVersion := "devel", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			version = v
		}
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
	// Jobs counts finished /infer jobs by backend and outcome: "ok",
	// "replay", or the error code.
	Jobs *prometheus.CounterVec
	// Duration is the time of jobs that ran a backend, by backend.
	Duration *prometheus.HistogramVec
	// Shared counts requests that waited for an identical request's
	// execution instead of running their own.
	Shared prometheus.Counter
	// StorageDuration times storage calls by operation and result.
	StorageDuration *prometheus.HistogramVec
	// InputBytes is the size of the originals read.
	InputBytes prometheus.Histogram
}

// NewStagingMetrics registers the staging metrics with reg.
func NewStagingMetrics(reg prometheus.Registerer) *StagingMetrics {
	f := promauto.With(reg)
	return &StagingMetrics{
		Jobs: f.NewCounterVec(prometheus.CounterOpts{
			Name: prometheus.BuildFQName(Namespace, "staging", "jobs_total"),
			Help: "Staging jobs finished, by backend and outcome (ok, replay, or the error code).",
		}, []string{"backend", "outcome"}),
		Duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    prometheus.BuildFQName(Namespace, "staging", "job_duration_seconds"),
			Help:    "Time from admission to answer of staging jobs that ran a backend, by backend.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 15, 30, 60, 120},
		}, []string{"backend"}),
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
}
