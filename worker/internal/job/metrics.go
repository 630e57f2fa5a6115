package job

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the worker's job metrics.
type Metrics struct {
	queueWait *prometheus.HistogramVec
	attempts  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	inFlight  prometheus.Gauge
}

// Outcomes of one attempt, the outcome label of vstage_worker_attempts_total.
const (
	OutcomeStaged  = "staged"  // the image is staged (a replay included)
	OutcomeFailed  = "failed"  // the job failed for good
	OutcomeRetried = "retried" // a failure that uses one of the job's retries
	OutcomeDelayed = "delayed" // put back without using a retry: overloaded, in_progress, circuit open
	OutcomeSkipped = "skipped" // the image was already staged; the service was not called
)

// NewMetrics registers the job metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		queueWait: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vstage_worker_queue_wait_seconds",
			Help:    "Time from enqueue to the job's first start (the queue-wait SLO), by tier queue.",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"queue"}),
		attempts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vstage_worker_attempts_total",
			Help: "Job attempts by tier queue, outcome (staged, failed, retried, delayed, skipped) and error code (empty on success).",
		}, []string{"queue", "outcome", "code"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vstage_worker_infer_duration_seconds",
			Help:    "Time of one job attempt's call to /infer, the client's own retries included, by tier queue and outcome.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300},
		}, []string{"queue", "outcome"}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: "vstage_worker_jobs_in_flight",
			Help: "Jobs this worker is running.",
		}),
	}
}
