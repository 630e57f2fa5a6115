package app

import (
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

var (
	// descFields reads a Desc's name and variable labels from its String
	// form, the only way the client library shows them.
	descFields = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	// selector finds metric names (recording rules have colons, so they
	// do not match) and the label matchers that follow them.
	selector = regexp.MustCompile(`\b(vstage_[a-z0-9_]+)(\{[^}]*\})?`)
	matcher  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	literals = regexp.MustCompile(`^[a-z0-9_]+(\|[a-z0-9_]+)*$`)
)

// families is a prometheus.Registerer that passes collectors on to a
// registry and keeps the label names of every family they describe, so
// that vectors without a series yet are known too.
type families struct {
	reg    *prometheus.Registry
	labels map[string][]string
}

func (f *families) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	for d := range ch {
		m := descFields.FindStringSubmatch(d.String())
		if m == nil {
			return fmt.Errorf("unreadable description %s", d)
		}
		var names []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
				names = append(names, l)
			}
		}
		f.labels[m[1]] = names
	}
	return f.reg.Register(c)
}

func (f *families) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := f.Register(c); err != nil {
			panic(err)
		}
	}
}

func (f *families) Unregister(c prometheus.Collector) bool { return f.reg.Unregister(c) }

// everyMetric builds the parts of a sidecar that has every backend and
// returns the families it registers, and the label values of the series
// that exist before any work (the vectors created with all their values).
func everyMetric(t *testing.T) (map[string][]string, map[string]map[string][]string) {
	t.Helper()
	env := map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": "python3", "ENGINE_TINY_MODEL": "true",
		"MANAGED_MODEL_VERSION": "v1", "MANAGED_API_TOKEN": "provider-token",
	}
	cfg, err := config.Load(func(k string) string { return env[k] }, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var logs testsupport.LogBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	f := &families{reg: telemetry.NewRegistry(), labels: map[string][]string{}}
	if _, err := buildBackends(cfg, log, f, imagecheck.NewBudget(cfg.DecodePixelBudget), telemetry.NoTracing()); err != nil {
		t.Fatal(err)
	}
	telemetry.NewHTTPMetrics(f)
	telemetry.NewStagingMetrics(f)
	gathered, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]map[string][]string{}
	for _, mf := range gathered {
		if _, ok := f.labels[mf.GetName()]; !ok {
			f.labels[mf.GetName()] = nil // registered by the registry itself
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if values[mf.GetName()] == nil {
					values[mf.GetName()] = map[string][]string{}
				}
				values[mf.GetName()][lp.GetName()] = append(values[mf.GetName()][lp.GetName()], lp.GetValue())
			}
		}
	}
	return f.labels, values
}

// family returns the family a series name belongs to: itself, or a
// histogram's for its _bucket, _sum and _count series.
func family(labels map[string][]string, name string) (string, bool) {
	if _, ok := labels[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if _, ok := labels[base]; ok {
				return base, true
			}
		}
	}
	return "", false
}

// The alerting and recording rules, and the series their unit tests feed
// them, name only metrics the sidecar registers; the rules' label matchers
// name their labels, and the values of labels whose series all exist from
// the start (restart and refusal reasons, tiers).
func TestRulesNameRegisteredMetrics(t *testing.T) {
	labels, values := everyMetric(t)
	for _, want := range []string{"vstage_engine_restarts_total", "vstage_admission_slots", "vstage_managed_circuit_open", "vstage_http_requests_total"} {
		if _, ok := labels[want]; !ok {
			t.Fatalf("%s is not among the registered families %v", want, labels)
		}
	}
	for _, file := range []string{"rules.yaml", "rules_test.yaml"} {
		data, err := os.ReadFile("../../deploy/prometheus/" + file)
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		for _, m := range selector.FindAllStringSubmatch(string(data), -1) {
			found++
			name, ok := family(labels, m[1])
			if !ok {
				t.Errorf("%s: %s is not a metric the sidecar registers", file, m[1])
				continue
			}
			if file != "rules.yaml" {
				continue // test series also carry the scrape's target labels
			}
			for _, lm := range matcher.FindAllStringSubmatch(m[2], -1) {
				label, op, value := lm[1], lm[2], lm[3]
				if !slices.Contains(labels[name], label) {
					t.Errorf("%s: %s has no label %q (it has %v)", file, m[1], label, labels[name])
					continue
				}
				known := values[name][label]
				if len(known) == 0 || (op != "=" && op != "!=" && !literals.MatchString(value)) {
					continue // values not known in advance, or a real pattern
				}
				for _, v := range strings.Split(value, "|") {
					if !slices.Contains(known, v) {
						t.Errorf("%s: %s{%s%s%q}: %q is not one of %v", file, m[1], label, op, value, v, known)
					}
				}
			}
		}
		if found == 0 {
			t.Errorf("%s names no vstage_ metric", file)
		}
	}
}
