package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 2 || c.Weights["business"] != 6 || c.Weights["pro"] != 3 || c.Weights["free"] != 1 ||
		c.Caps["free"] != 2000 || c.JobDeadline != 5*time.Minute || c.MaxRetry != 20 || c.MetricsAddr != "127.0.0.1:9092" ||
		c.BreakerFails != 5 || c.StrictPriority {
		t.Errorf("defaults: %+v", c)
	}
	c, err = Load(env(map[string]string{"WORKER_METRICS_ADDR": "off", "WORKER_QUEUE_WEIGHTS": " free=1, business=9 ,pro=2"}))
	if err != nil || c.MetricsAddr != "" || c.Weights["business"] != 9 || c.Weights["pro"] != 2 {
		t.Errorf("off and spaced weights: %+v %v", c, err)
	}
}

func TestBadValuesAreNamed(t *testing.T) {
	cases := map[string]map[string]string{
		"VSTAGE_URL":              {"VSTAGE_URL": "localhost:8080"},
		"WORKER_CONCURRENCY":      {"WORKER_CONCURRENCY": "0"},
		"WORKER_QUEUE_WEIGHTS":    {"WORKER_QUEUE_WEIGHTS": "business=6,pro=3"},
		"WORKER_QUEUE_CAPS":       {"WORKER_QUEUE_CAPS": "business=6,pro=3,free=0"},
		"WORKER_STRICT_PRIORITY":  {"WORKER_STRICT_PRIORITY": "maybe"},
		"WORKER_JOB_DEADLINE":     {"WORKER_JOB_DEADLINE": "-1s"},
		"WORKER_RETRY_MAX":        {"WORKER_RETRY_MIN": "1m", "WORKER_RETRY_MAX": "10s"},
		"LOG_LEVEL":               {"LOG_LEVEL": "loud"},
		"VSTAGE_BREAKER_FAILURES": {"VSTAGE_BREAKER_FAILURES": "x"},
	}
	for name, m := range cases {
		_, err := Load(env(m))
		if err == nil || !strings.HasPrefix(err.Error(), name+":") {
			t.Errorf("%v: error %v, want one naming %s", m, err, name)
		}
	}
	for _, v := range []string{"business=1,business=2,pro=1,free=1", "gold=1,business=1,pro=1,free=1", "business,pro=1,free=1"} {
		if _, err := Load(env(map[string]string{"WORKER_QUEUE_WEIGHTS": v})); err == nil {
			t.Errorf("weights %q accepted", v)
		}
	}
}

// TestReadmeListsEverySetting keeps the README's worker settings table
// honest: every setting, with its default, in the worker's section.
func TestReadmeListsEverySetting(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "### Worker settings\n")
	if !ok {
		t.Fatal("README has no \"### Worker settings\" section")
	}
	section, _, _ = strings.Cut(section, "\n#")
	rows := 0
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "| `") {
			rows++
		}
	}
	for _, s := range Settings {
		row := "| `" + s.Name + "` | `" + s.Default + "` |"
		if !strings.Contains(section, row) {
			t.Errorf("README's worker settings lack the row %q", row)
		}
	}
	if rows != len(Settings) {
		t.Errorf("README's worker settings have %d rows, the worker reads %d settings", rows, len(Settings))
	}
}
