package queue

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector reads each tier queue's state from Redis at scrape time, so the
// numbers are Redis's own, shared by every worker replica (a scrape of any
// replica gives the same depth; aggregate with max, not sum).
type Collector struct {
	q      *Queue
	queues []string

	tasks, oldest, paused, limit, up *prometheus.Desc
}

// NewCollector returns a Collector of the named queues.
func NewCollector(q *Queue, queues []string) *Collector {
	return &Collector{
		q: q, queues: queues,
		tasks: prometheus.NewDesc("vstage_worker_queue_tasks",
			"Tasks in the queue by state: pending, scheduled, retry (waiting for a retry), active (running), archived (failed for good), completed (kept for WORKER_RETENTION).",
			[]string{"queue", "state"}, nil),
		oldest: prometheus.NewDesc("vstage_worker_queue_oldest_pending_seconds",
			"Age of the oldest pending task; 0 when none is pending.", []string{"queue"}, nil),
		paused: prometheus.NewDesc("vstage_worker_queue_paused",
			"1 while the queue is paused (worker pause).", []string{"queue"}, nil),
		limit: prometheus.NewDesc("vstage_worker_queue_cap",
			"Live tasks the queue may hold before enqueue refuses (WORKER_QUEUE_CAPS).", []string{"queue"}, nil),
		up: prometheus.NewDesc("vstage_worker_redis_up",
			"1 when the queues' state could be read from Redis at this scrape.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.tasks, c.oldest, c.paused, c.limit, c.up} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	up := 1.0
	for _, name := range c.queues {
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(c.q.opts.Caps[name]), name)
		info, err := c.q.Info(name)
		if err != nil {
			up = 0
			continue
		}
		for state, n := range map[string]int{
			"pending": info.Pending, "scheduled": info.Scheduled, "retry": info.Retry,
			"active": info.Active, "archived": info.Archived, "completed": info.Completed,
		} {
			ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), name, state)
		}
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, info.Latency.Seconds(), name)
		p := 0.0
		if info.Paused {
			p = 1
		}
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, p, name)
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
}
