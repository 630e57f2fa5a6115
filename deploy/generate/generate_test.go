package generate_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/vstage/vstage/deploy/generate"
)

// TestGeneratedFilesAreCurrent fails when a source changed and the
// generated copy was not rewritten.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	rules, err := os.ReadFile("../prometheus/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := generate.PrometheusRule(rules)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("../kubernetes/base/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("deploy/kubernetes/base/prometheusrule.yaml is stale: run make deploy-generate")
	}
}

func TestPrometheusRuleRefusesOtherFiles(t *testing.T) {
	for _, in := range []string{"", "- a\n", "groups: {}\n", "groups: []\nextra: 1\n", "{"} {
		if _, err := generate.PrometheusRule([]byte(in)); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
	out, err := generate.PrometheusRule([]byte("groups:\n  - name: g # why\n    rules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), generate.Header) || !strings.Contains(string(out), "# why") {
		t.Errorf("header or comment lost:\n%s", out)
	}
}
