package cli_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/vstage/vstage/worker/internal/config"
	"github.com/vstage/vstage/worker/internal/job"
	"github.com/vstage/vstage/worker/internal/queue"
	"github.com/vstage/vstage/worker/internal/testenv"
)

// TestScalingQueryNamesWorkerMetrics fails when the KEDA trigger names a
// metric or a queue state the worker does not export, or when the worker's
// metrics break Prometheus's naming rules.
func TestScalingQueryNamesWorkerMetrics(t *testing.T) {
	conn, err := asynq.ParseRedisURI(testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	q := queue.New(conn, queue.Options{Caps: map[string]int{"business": 1, "pro": 1, "free": 1}})
	defer q.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(queue.NewCollector(q, config.Tiers))
	job.NewMetrics(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// The queue collector's families pass Prometheus's naming rules (the job
	// metrics are linted in their own package).
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %+v", err, problems)
	}
	exported, states := map[string]bool{}, map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" {
					states[l.GetValue()] = true
				}
			}
		}
	}
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "deploy", "kubernetes", "base", "scaledobject.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	queries := regexp.MustCompile(`(?m)^\s+query: (.+)$`).FindAllStringSubmatch(string(data), -1)
	if len(queries) == 0 {
		t.Fatal("no query in the ScaledObject")
	}
	for _, m := range queries {
		for _, name := range regexp.MustCompile(`vstage_worker_[a-z_]+`).FindAllString(m[1], -1) {
			if !exported[name] {
				t.Errorf("the query names %s, which the worker does not export", name)
			}
		}
		for _, sel := range regexp.MustCompile(`state=~"([^"]+)"`).FindAllStringSubmatch(m[1], -1) {
			for _, s := range regexp.MustCompile(`[a-z]+`).FindAllString(sel[1], -1) {
				if !states[s] {
					t.Errorf("the query names the state %q, which the worker does not export", s)
				}
			}
		}
	}
}
