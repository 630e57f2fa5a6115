package deploy_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readme is the repository's README, whose tables are the one list of the
// settings and metrics that deployment files may name.
type readme struct {
	// settings maps every variable with a row in a settings table to its
	// default column.
	settings map[string]string
	// metrics holds every metric name with a row in a metrics table.
	metrics map[string]bool
	// aws holds the AWS SDK variables the README names (the standard
	// credential chain).
	aws map[string]bool
}

var (
	settingRow = regexp.MustCompile("(?m)^\\| `([A-Z][A-Z0-9_]*)` \\| ([^|]*) \\|")
	metricRow  = regexp.MustCompile("(?m)^\\| `(vstage_[a-z0-9_]+)`((?:, `_?[a-z0-9_]+`)*) \\|")
	metricPart = regexp.MustCompile("`(_?[a-z0-9_]+)`")
)

func loadReadme(t *testing.T) readme {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	r := readme{settings: map[string]string{}, metrics: map[string]bool{}, aws: map[string]bool{}}
	for _, m := range regexp.MustCompile("`(AWS_[A-Z_]+)`").FindAllStringSubmatch(string(data), -1) {
		r.aws[m[1]] = true
	}
	for _, m := range settingRow.FindAllStringSubmatch(string(data), -1) {
		r.settings[m[1]] = strings.Trim(strings.TrimSpace(m[2]), "`")
	}
	for _, m := range metricRow.FindAllStringSubmatch(string(data), -1) {
		r.metrics[m[1]] = true
		// A row such as `vstage_gpu_memory_total_bytes`, `_used_bytes`
		// names siblings by their suffix.
		stem := m[1][:strings.LastIndex(strings.TrimSuffix(m[1], "_bytes"), "_")+1]
		for _, p := range metricPart.FindAllStringSubmatch(m[2], -1) {
			if strings.HasPrefix(p[1], "_") {
				r.metrics[stem+p[1][1:]] = true
			} else {
				r.metrics[p[1]] = true
			}
		}
	}
	if len(r.settings) < 50 || len(r.metrics) < 20 {
		t.Fatalf("README: read %d settings and %d metrics; has the table format changed?", len(r.settings), len(r.metrics))
	}
	return r
}

// documented reports whether a deployment file may set the variable: a row
// of a settings table, a variable of the AWS SDK's chain that the README
// names, or one of OpenTelemetry's OTEL_* family, which the SDKs read as
// their specification defines.
func (r readme) documented(name string) bool {
	_, ok := r.settings[name]
	return ok || r.aws[name] || strings.HasPrefix(name, "OTEL_")
}

// duration is a setting's value from env, or else its README default.
func (r readme) duration(t *testing.T, env map[string]string, name string) time.Duration {
	t.Helper()
	v, ok := env[name]
	if !ok {
		v, ok = r.settings[name]
	}
	if !ok {
		t.Fatalf("%s: no value and no README default", name)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

// metricsIn returns the vstage metric names a PromQL query names, with the
// histogram suffixes taken off.
func metricsIn(query string) []string {
	var out []string
	for _, n := range regexp.MustCompile(`vstage_[a-z0-9_]+`).FindAllString(query, -1) {
		for _, s := range []string{"_bucket", "_count", "_sum"} {
			n = strings.TrimSuffix(n, s)
		}
		out = append(out, n)
	}
	return out
}

func TestReadmeTablesParse(t *testing.T) {
	r := loadReadme(t)
	for _, name := range []string{"ENGINE_START_TIMEOUT", "DRAIN_DELAY", "REDIS_URL", "ENGINE_DTYPE"} {
		if !r.documented(name) {
			t.Errorf("%s not read from the README", name)
		}
	}
	for _, name := range []string{"vstage_admission_queue_depth", "vstage_gpu_memory_used_bytes", "vstage_worker_queue_tasks"} {
		if !r.metrics[name] {
			t.Errorf("%s not read from the README", name)
		}
	}
	if r.documented("VSTAGE_NO_SUCH_SETTING") {
		t.Error("an unknown name counts as documented")
	}
}
