package engine

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Restart reasons, the values of the reason label of
// vstage_engine_restarts_total and of Status.LastReason.
const (
	// ReasonExit: the engine exited by itself with a status code.
	ReasonExit = "exit"
	// ReasonSignal: a signal the supervisor did not send killed the engine.
	ReasonSignal = "signal"
	// ReasonOOMKill: the kernel's OOM killer killed the engine (see
	// exitReason for how that is told apart from another SIGKILL).
	ReasonOOMKill = "oom_kill"
	// ReasonCUDAOOM: a job failed with RESOURCE_EXHAUSTED oom.
	ReasonCUDAOOM = "cuda_oom"
	// ReasonHealth: health checks failed for longer than HealthTimeout.
	ReasonHealth = "health"
	// ReasonWedged: a job outlived its end by WedgeGrace.
	ReasonWedged = "wedged"
	// ReasonRSS: resident memory went over MaxRSS.
	ReasonRSS = "rss"
	// ReasonMaxJobs: the engine ran MaxJobs jobs.
	ReasonMaxJobs = "max_jobs"
	// ReasonGPUMemory: the engine's accelerator memory kept growing past a
	// limit between jobs, a leak; the gpu package's monitor asks for it
	// through Recycle.
	ReasonGPUMemory = "gpu_memory"
	// ReasonStartFailed: the engine exited before it was SERVING.
	ReasonStartFailed = "start_failed"
	// ReasonStartTimeout: the engine was not SERVING within StartTimeout.
	ReasonStartTimeout = "start_timeout"
)

var reasons = []string{
	ReasonExit, ReasonSignal, ReasonOOMKill, ReasonCUDAOOM, ReasonHealth, ReasonWedged,
	ReasonRSS, ReasonMaxJobs, ReasonGPUMemory, ReasonStartFailed, ReasonStartTimeout,
}

type metrics struct {
	restarts      *prometheus.CounterVec
	up            prometheus.Gauge
	ready         prometheus.Gauge
	startDuration prometheus.Histogram
	rss           prometheus.Gauge
	inFlight      prometheus.Gauge
	dropped       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	name := func(n string) string { return prometheus.BuildFQName("vstage", "engine", n) }
	m := &metrics{
		restarts: f.NewCounterVec(prometheus.CounterOpts{
			Name: name("restarts_total"),
			Help: "Engine restarts, by reason (exit, signal, oom_kill, cuda_oom, health, wedged, rss, max_jobs, gpu_memory, start_failed, start_timeout).",
		}, []string{"reason"}),
		up: f.NewGauge(prometheus.GaugeOpts{
			Name: name("up"),
			Help: "1 while the engine process runs and answers health checks.",
		}),
		ready: f.NewGauge(prometheus.GaugeOpts{
			Name: name("ready"),
			Help: "1 while the engine is SERVING and takes jobs.",
		}),
		startDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    name("start_duration_seconds"),
			Help:    "Time from spawning the engine to its first SERVING health answer.",
			Buckets: []float64{.25, .5, 1, 2, 5, 10, 20, 40, 80, 160, 320, 600},
		}),
		rss: f.NewGauge(prometheus.GaugeOpts{
			Name: name("resident_memory_bytes"),
			Help: "Resident memory of the engine process.",
		}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: name("jobs_in_flight"),
			Help: "Jobs sent to the engine that it has not yet said have ended (stream status or Cancel answer).",
		}),
		dropped: f.NewCounter(prometheus.CounterOpts{
			Name: name("stderr_lines_dropped_total"),
			Help: "Engine stderr lines dropped because the log buffer was full.",
		}),
	}
	for _, r := range reasons {
		m.restarts.WithLabelValues(r)
	}
	return m
}
