package app

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/prometheus/model/labels"
	"go.yaml.in/yaml/v3"
)

const (
	rulesPath     = "../../deploy/prometheus/rules.yaml"
	ruleTestsGlob = "../../deploy/prometheus/*_test.yaml"
	dashboardPath = "../../deploy/grafana/vstage-canary.json"
	runbookPath   = "../../docs/RUNBOOK.md"
	// runbookURL is where every alert's runbook_url points, followed by
	// the anchor of the alert's heading.
	runbookURL = "https://github.com/vstage/vstage/blob/main/docs/RUNBOOK.md#"
)

// Rule is one rule of rules.yaml.
type Rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// RuleFile is rules.yaml.
type RuleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []Rule `yaml:"rules"`
	} `yaml:"groups"`
}

// Rules returns every rule of rules.yaml, in order.
func (f RuleFile) Rules() []Rule {
	var out []Rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// LoadRules reads rules.yaml; the Prometheus end-to-end test uses it too.
func LoadRules(t *testing.T) RuleFile {
	t.Helper()
	var f RuleFile
	readYAML(t, rulesPath, &f)
	if len(f.Rules()) == 0 {
		t.Fatalf("%s has no rules", rulesPath)
	}
	return f
}

type ruleTests struct {
	// Name is the file's; not part of it.
	Name      string   `yaml:"-"`
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		InputSeries []struct {
			Series string `yaml:"series"`
		} `yaml:"input_series"`
		AlertRuleTests []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
		PromqlExprTests []struct {
			Expr       string `yaml:"expr"`
			ExpSamples []struct {
				Labels string `yaml:"labels"`
			} `yaml:"exp_samples"`
		} `yaml:"promql_expr_test"`
	} `yaml:"tests"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// lintRules parses every expression of rules.yaml into s.records (the
// recording rules) and returns what is wrong with them.
func lintRules(s *schema, f RuleFile) []string {
	var problems []string
	for _, r := range f.Rules() {
		name := r.Record + r.Alert
		e, err := parseExpr(r.Expr)
		if err != nil {
			problems = append(problems, fmt.Sprintf("rules.yaml: %s: %v", name, err))
			continue
		}
		if r.Record != "" {
			if _, dup := s.records[r.Record]; dup {
				problems = append(problems, "rules.yaml: "+r.Record+" is recorded twice")
			}
			s.records[r.Record] = parsedExpr{where: "rules.yaml: " + r.Record, expr: e}
		}
	}
	for _, r := range f.Rules() {
		name := r.Record + r.Alert
		if e, err := parseExpr(r.Expr); err == nil {
			problems = append(problems, s.checkExpr("rules.yaml: "+name, e)...)
		}
	}
	return problems
}

// loadRuleTests reads every unit test file of the rules.
func loadRuleTests(t *testing.T) []ruleTests {
	t.Helper()
	paths, err := filepath.Glob(ruleTestsGlob)
	if err != nil || len(paths) == 0 {
		t.Fatalf("no rule tests %s: %v", ruleTestsGlob, err)
	}
	var out []ruleTests
	for _, p := range paths {
		var rt ruleTests
		readYAML(t, p, &rt)
		rt.Name = filepath.Base(p)
		if !slices.Equal(rt.RuleFiles, []string{"rules.yaml"}) {
			t.Errorf("%s tests %v, want rules.yaml", rt.Name, rt.RuleFiles)
		}
		out = append(out, rt)
	}
	return out
}

// lintRuleTests checks the unit tests' input series, queries and expected
// samples against the schema, and that every rule is tested: each
// recording rule queried, each alert expected both to fire and to stay
// quiet.
func lintRuleTests(s *schema, f RuleFile, files []ruleTests) []string {
	var problems []string
	p := promqlParser()
	queried := map[string]bool{}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tests := range files {
		for i, tg := range tests.Tests {
			where := fmt.Sprintf("%s: test %d", tests.Name, i+1)
			for _, in := range tg.InputSeries {
				ms, err := p.ParseMetricSelector(in.Series)
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: series %s: %v", where, in.Series, err))
					continue
				}
				problems = append(problems, s.checkSelector(where, "", ms)...)
			}
			for _, pt := range tg.PromqlExprTests {
				e, err := parseExpr(pt.Expr)
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s: %v", where, pt.Expr, err))
					continue
				}
				problems = append(problems, s.checkExpr(where, e)...)
				for _, name := range selectorNames(e) {
					queried[name] = true
				}
				for _, es := range pt.ExpSamples {
					ls, err := p.ParseMetric(es.Labels)
					if err != nil {
						problems = append(problems, fmt.Sprintf("%s: expected %s: %v", where, es.Labels, err))
						continue
					}
					var ms []*labels.Matcher
					ls.Range(func(l labels.Label) {
						ms = append(ms, labels.MustNewMatcher(labels.MatchEqual, l.Name, l.Value))
					})
					problems = append(problems, s.checkSelector(where+": expected sample", "", ms)...)
				}
			}
			for _, at := range tg.AlertRuleTests {
				if len(at.ExpAlerts) == 0 {
					quiet[at.Alertname] = true
				} else {
					fires[at.Alertname] = true
				}
			}
		}
	}
	for _, r := range f.Rules() {
		switch {
		case r.Record != "" && !queried[r.Record]:
			problems = append(problems, "rule tests: no promql_expr_test queries "+r.Record)
		case r.Alert != "" && !fires[r.Alert]:
			problems = append(problems, "rule tests: no alert_rule_test expects "+r.Alert+" to fire")
		case r.Alert != "" && !quiet[r.Alert]:
			problems = append(problems, "rule tests: no alert_rule_test expects "+r.Alert+" to stay quiet")
		}
	}
	alerts := map[string]bool{}
	for _, r := range f.Rules() {
		alerts[r.Alert] = true
	}
	for name := range fires {
		if !alerts[name] {
			problems = append(problems, "rule tests: "+name+" is not an alert of rules.yaml")
		}
	}
	for name := range quiet {
		if !alerts[name] {
			problems = append(problems, "rule tests: "+name+" is not an alert of rules.yaml")
		}
	}
	return problems
}

// The alerting and recording rules, their unit tests' series, queries and
// expected samples, and the dashboard's queries name only metrics the
// sidecar registers and recording rules that exist, with labels those
// series carry and, for labels with a known set of values, values from it.
func TestRulesNameRegisteredMetrics(t *testing.T) {
	s := sidecarSchema(t)
	for _, want := range []string{"vstage_engine_restarts_total", "vstage_admission_slots", "vstage_managed_circuit_open", "vstage_staging_cost_dollars_total"} {
		if _, ok := s.labels[want]; !ok {
			t.Fatalf("%s is not among the registered families %v", want, s.labels)
		}
	}
	rules := LoadRules(t)
	problems := lintRules(s, rules)
	problems = append(problems, lintRuleTests(s, rules, loadRuleTests(t))...)
	problems = append(problems, lintDashboard(t, s)...)
	for _, p := range problems {
		t.Error(p)
	}
	if len(s.records) < 10 {
		t.Errorf("only %d recording rules parsed", len(s.records))
	}
}

// TestLintFindsMistakes shows that each kind of mistake is caught, so a
// quiet lint means something.
func TestLintFindsMistakes(t *testing.T) {
	s := sidecarSchema(t)
	if p := lintRules(s, LoadRules(t)); len(p) > 0 {
		t.Fatalf("rules.yaml: %v", p)
	}
	for _, tc := range []struct{ expr, want string }{
		{`rate(vstage_staging_job_total[5m])`, "vstage_staging_job_total is not a metric"},
		{`vstage_staging_job_duration_seconds_bucket{route="/infer"}`, `has no label "route"`},
		{`vstage_staging_job_duration_seconds_count{le="1"}`, `has no label "le"`},
		{`vstage_engine_restarts_total{reason="cuda-oom"}`, `"cuda-oom" is not one of`},
		{`vstage_admission_rejections_total{reason=~"queue_full|vram_full"}`, `"vram_full" is not one of`},
		{`vstage_staging_jobs_total{outcome!~"invalid_input|bad_request"}`, `"bad_request" is not one of`},
		{`vstage_staging_jobs_total{tier="enterprise"}`, `"enterprise" is not one of`},
		{`vstage_staging_jobs_total{backend="replicate"}`, `"replicate" is not one of`},
		{`vstage_engine_phase_duration_seconds_bucket{phase="unet"}`, `"unet" is not one of`},
		{`vstage:staging_jobs_failed:ratio_rate15m`, "is not a recording rule"},
		{`vstage:staging_jobs_failed:ratio_rate1h{tier="free"}`, `has no label "tier"`},
		{`vstage:staging_job_duration_seconds:p95_rate1h{le="60"}`, `has no label "le"`},
	} {
		e, err := parseExpr(tc.expr)
		if err != nil {
			t.Fatalf("%s: %v", tc.expr, err)
		}
		got := s.checkExpr("test", e)
		if len(got) != 1 || !strings.Contains(got[0], tc.want) {
			t.Errorf("%s: problems %q, want one saying %q", tc.expr, got, tc.want)
		}
	}
	for _, ok := range []string{
		`vstage_staging_jobs_total{outcome=~"ok|replay",tier="unknown",backend="self",pod="a"}`,
		`vstage_admission_queue_wait_seconds_bucket{tier="free",le="15"}`,
		`vstage:staging_job_duration_seconds:p95_rate1h{size="1024",backend="self",namespace="x"}`,
		`vstage:staging_cost_dollars_per_image:ratio_rate1h{tier="pro"}`,
		`vstage_build_info{version="v1.2.3"}`,
		`up{job="vstage"}`,
	} {
		e, err := parseExpr(ok)
		if err != nil {
			t.Fatalf("%s: %v", ok, err)
		}
		if got := s.checkExpr("test", e); len(got) > 0 {
			t.Errorf("%s: %q, want no problem", ok, got)
		}
	}
}

// TestEveryAlertHasARunbook checks that every alert links to a heading of
// docs/RUNBOOK.md's Alerts section, as GitHub anchors it, and that every
// heading there belongs to an alert.
func TestEveryAlertHasARunbook(t *testing.T) {
	data, err := os.ReadFile(runbookPath)
	if err != nil {
		t.Fatal(err)
	}
	headings := alertHeadings(string(data))
	if len(headings) == 0 {
		t.Fatalf("%s has no ### headings under ## Alerts", runbookPath)
	}
	alerts := map[string]bool{}
	for _, r := range LoadRules(t).Rules() {
		if r.Alert == "" {
			continue
		}
		alerts[r.Alert] = true
		url := r.Annotations["runbook_url"]
		anchor, ok := strings.CutPrefix(url, runbookURL)
		switch {
		case !ok:
			t.Errorf("%s: runbook_url %q does not start with %s", r.Alert, url, runbookURL)
		case !slices.ContainsFunc(headings, func(h string) bool { return slug(h) == anchor }):
			t.Errorf("%s: runbook_url anchor #%s is not a heading of the Alerts section %v", r.Alert, anchor, headings)
		case anchor != slug(r.Alert):
			t.Errorf("%s: runbook_url points at #%s, another alert's section", r.Alert, anchor)
		}
		if r.Annotations["summary"] == "" {
			t.Errorf("%s has no summary", r.Alert)
		}
	}
	for _, h := range headings {
		if !alerts[h] {
			t.Errorf("%s: heading %q under ## Alerts is no alert of rules.yaml", runbookPath, h)
		}
	}
}

// alertHeadings returns the text of the ### headings between "## Alerts"
// and the next ## heading.
func alertHeadings(markdown string) []string {
	var out []string
	in, fenced := false, false
	for _, line := range strings.Split(markdown, "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		switch {
		case fenced:
		case strings.HasPrefix(line, "## "):
			in = strings.TrimSpace(line[3:]) == "Alerts"
		case in && strings.HasPrefix(line, "### "):
			out = append(out, strings.Trim(strings.TrimSpace(line[4:]), "`"))
		}
	}
	return out
}

// slug is GitHub's anchor of a heading: lower case, spaces turned into
// hyphens, and everything but letters, digits, hyphens and underscores
// dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{
		"VstageEngineOOMStorm":         "vstageengineoomstorm",
		"Canary: raise the share (5%)": "canary-raise-the-share-5",
		"`CONCURRENCY` and QUEUE_*":    "concurrency-and-queue_",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// grafanaVariable matches the variables Grafana substitutes in a query:
// $name, ${name} and ${name:format}.
var grafanaVariable = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(:[^}]*)?\}|\$([A-Za-z0-9_]+)`)

// substitute replaces Grafana's variables with values PromQL accepts where
// they stand: durations for the interval variables, and a plain word for
// the template variables, which are only used inside label matchers. A
// variable used anywhere else leaves a query that does not parse.
func substitute(query string) string {
	return grafanaVariable.ReplaceAllStringFunc(query, func(v string) string {
		m := grafanaVariable.FindStringSubmatch(v)
		name := m[1] + m[3]
		switch name {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		case "__interval_ms", "__range_ms":
			return "300000"
		case "__range_s":
			return "300"
		}
		return "value"
	})
}

// dashboard is the part of a Grafana dashboard's JSON the tests read.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int                      `json:"id"`
	Title      string                   `json:"title"`
	Type       string                   `json:"type"`
	GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
	Datasource json.RawMessage          `json:"datasource"`
	Panels     []panel                  `json:"panels"`
	Targets    []struct {
		Expr     string `json:"expr"`
		Exemplar bool   `json:"exemplar"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// allPanels returns the panels, those inside collapsed rows included.
func (d dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// labelValues matches Grafana's label_values(selector, label) variable
// query; the selector is PromQL, the label one of its series' labels.
var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$`)

// lintDashboard parses every panel query and variable query of the
// canary dashboard and checks them against the schema.
func lintDashboard(t *testing.T, s *schema) []string {
	t.Helper()
	d := loadDashboard(t)
	var problems []string
	queries := 0
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				continue
			}
			queries++
			where := "dashboard: " + p.Title
			e, err := parseExpr(substitute(tg.Expr))
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %s: %v", where, tg.Expr, err))
				continue
			}
			problems = append(problems, s.checkExpr(where, e)...)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				problems = append(problems, fmt.Sprintf("dashboard: variable %s: unreadable query %s", v.Name, v.Query))
				continue
			}
			q = obj.Query
		}
		where := "dashboard: variable " + v.Name
		m := labelValues.FindStringSubmatch(strings.TrimSpace(q))
		if m == nil {
			problems = append(problems, fmt.Sprintf("%s: %q is not label_values(selector, label)", where, q))
			continue
		}
		e, err := parseExpr(substitute(m[1]))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s: %v", where, q, err))
			continue
		}
		problems = append(problems, s.checkExpr(where, e)...)
		have, ok := s.labelsOf(e)
		if ok && !have[m[2]] {
			problems = append(problems, fmt.Sprintf("%s: %s has no label %q", where, m[1], m[2]))
		}
	}
	if queries < 10 {
		problems = append(problems, fmt.Sprintf("dashboard: only %d queries", queries))
	}
	return problems
}

// italic matches *text* once the bold markers (**) are gone: the runbook
// writes panel names in italics.
var italic = regexp.MustCompile(`\*([^*]+)\*`)

// TestRunbookNamesDashboardPanels checks that every panel the runbook's
// Alerts section sends the reader to is a panel of the canary dashboard.
func TestRunbookNamesDashboardPanels(t *testing.T) {
	data, err := os.ReadFile(runbookPath)
	if err != nil {
		t.Fatal(err)
	}
	section := string(data)
	if i := strings.Index(section, "\n## Alerts\n"); i >= 0 {
		section = section[i+1:]
	}
	if i := strings.Index(section[1:], "\n## "); i >= 0 {
		section = section[:i+1]
	}
	titles := map[string]bool{}
	for _, p := range loadDashboard(t).allPanels() {
		titles[p.Title] = true
	}
	named := 0
	for _, m := range italic.FindAllStringSubmatch(strings.ReplaceAll(section, "**", ""), -1) {
		named++
		title := strings.Join(strings.Fields(m[1]), " ") // wrapped lines
		if !titles[title] {
			t.Errorf("%s names the panel %q; the dashboard has %v", runbookPath, title, slices.Sorted(maps.Keys(titles)))
		}
	}
	if named < 10 {
		t.Errorf("%s names only %d panels", runbookPath, named)
	}
}

// TestDashboardShape checks what other files rely on: the dashboard's uid,
// a Prometheus data source chosen by a variable and used by every panel,
// job and instance selectors, unique panel ids, and exemplars on the job
// time panel.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "vstage-canary" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q, title %q, schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" || vars["instance"] != "query" {
		t.Errorf("variables %v, want datasource, job and instance", vars)
	}
	ids := map[int]bool{}
	exemplars := false
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		var ds struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		}
		if err := json.Unmarshal(p.Datasource, &ds); err != nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
			t.Errorf("panel %q: data source %s, want the datasource variable", p.Title, p.Datasource)
		}
		if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		for _, tg := range p.Targets {
			if tg.Exemplar {
				exemplars = strings.Contains(tg.Expr, "vstage_staging_job_duration_seconds_bucket")
			}
		}
	}
	if !exemplars {
		t.Error("no job-time query shows exemplars")
	}
}
