package admission

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	queueDepth   *prometheus.GaugeVec
	inFlight     prometheus.Gauge
	slots        prometheus.Gauge
	queueWait    *prometheus.HistogramVec
	jobDuration  *prometheus.HistogramVec
	rejections   *prometheus.CounterVec
	abandoned    prometheus.Counter
	vramEstimate *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	name := func(n string) string { return prometheus.BuildFQName("vstage", "admission", n) }
	m := &metrics{
		queueDepth: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: name("queue_depth"),
			Help: "Jobs waiting for a slot, by tier.",
		}, []string{"tier"}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: name("jobs_in_flight"),
			Help: "Jobs holding a slot.",
		}),
		slots: f.NewGauge(prometheus.GaugeOpts{
			Name: name("slots"),
			Help: "Jobs that may run at once (CONCURRENCY).",
		}),
		queueWait: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    name("queue_wait_seconds"),
			Help:    "Time from asking for a slot to getting it, for admitted jobs, by tier.",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 20, 30, 60},
		}, []string{"tier"}),
		jobDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    name("job_duration_seconds"),
			Help:    "Time a finished job held its slot, by output size (the side of a square of the same pixel count, rounded up to 256).",
			Buckets: []float64{.25, .5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300},
		}, []string{"size"}),
		rejections: f.NewCounterVec(prometheus.CounterOpts{
			Name: name("rejections_total"),
			Help: "Jobs turned away, by reason (queue_full, queue_timeout, vram, draining, not_ready).",
		}, []string{"reason"}),
		abandoned: f.NewCounter(prometheus.CounterOpts{
			Name: name("queue_abandoned_total"),
			Help: "Queued jobs whose request ended (client gone, deadline) before they got a slot.",
		}),
		vramEstimate: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: name("vram_estimate_bytes"),
			Help: "Learned accelerator memory peak of a job, by output size.",
		}, []string{"size"}),
	}
	for _, r := range reasons {
		m.rejections.WithLabelValues(string(r))
	}
	for _, t := range tiers {
		m.queueDepth.WithLabelValues(string(t))
		m.queueWait.WithLabelValues(string(t))
	}
	return m
}
