package app

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	promql "github.com/prometheus/prometheus/promql/parser"

	"github.com/vstage/vstage/internal/config"
	"github.com/vstage/vstage/internal/imagecheck"
	"github.com/vstage/vstage/internal/mode"
	"github.com/vstage/vstage/internal/telemetry"
	"github.com/vstage/vstage/internal/testsupport"
)

// targetLabels are added by the scrape, not by the sidecar: instance and
// job by Prometheus, namespace and pod by a Kubernetes scrape config.
var targetLabels = []string{"instance", "job", "namespace", "pod"}

// openInfoLabels names the families whose series exist from the start but
// whose label values are no closed set: a build's version.
var openInfoLabels = map[string]bool{"vstage_build_info": true}

// descFields reads a Desc's name and variable labels from its String form,
// the only way the client library shows them.
var descFields = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

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
	var bad error
	for d := range ch {
		m := descFields.FindStringSubmatch(d.String())
		if m == nil {
			bad = fmt.Errorf("unreadable description %s", d)
			continue // drain the channel, so the goroutine ends
		}
		var names []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
				names = append(names, l)
			}
		}
		f.labels[m[1]] = names
	}
	if bad != nil {
		return bad
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

// schema is what the sidecar exposes: every family's label names, the
// complete set of values of the labels that have one, and the recording
// rules' names with the labels of their results.
type schema struct {
	labels  map[string][]string
	values  map[string]map[string][]string
	records map[string]parsedExpr
	// recordLabels memoises labelsOf for recording rules; nil marks one
	// being computed (a cycle).
	recordLabels map[string]map[string]bool
}

type parsedExpr struct {
	where string
	expr  promql.Expr
}

// sidecarSchema builds the parts of a sidecar that has every backend and
// returns the families it registers. A label's values are known when the
// sidecar creates all its series up front (restart and refusal reasons,
// admission tiers, engine phases) or when they come from one of the
// service's own enumerations: the modes for backend, the tiers for tier,
// and the error codes (with ok and replay) for outcome.
func sidecarSchema(t *testing.T) *schema {
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
	s := &schema{labels: f.labels, values: map[string]map[string][]string{}, records: map[string]parsedExpr{}}
	for _, mf := range gathered {
		name := mf.GetName()
		if _, ok := s.labels[name]; !ok {
			// Registered by the registry itself, before the wrapper saw
			// it: its series show its labels.
			s.labels[name] = nil
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if !slices.Contains(s.labels[name], lp.GetName()) {
						s.labels[name] = append(s.labels[name], lp.GetName())
					}
				}
			}
		}
		if openInfoLabels[name] {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				s.known(name)[lp.GetName()] = append(s.known(name)[lp.GetName()], lp.GetValue())
			}
		}
	}
	var backends []string
	for _, m := range mode.All() {
		backends = append(backends, string(m))
	}
	enums := map[string][]string{
		"backend": backends,
		"tier":    telemetry.Tiers,
		"outcome": append([]string{"ok", "replay"}, faultCodes(t)...),
	}
	for name, ls := range s.labels {
		for _, l := range ls {
			if vs, ok := enums[l]; ok && len(s.values[name][l]) == 0 {
				s.known(name)[l] = vs
			}
		}
	}
	return s
}

func (s *schema) known(family string) map[string][]string {
	if s.values[family] == nil {
		s.values[family] = map[string][]string{}
	}
	return s.values[family]
}

// faultCodes reads the values of the error codes, the constants of type
// fault.Code, from the fault package's source: the one list of them.
func faultCodes(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "../fault/fault.go", nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var codes []string
	ast.Inspect(file, func(n ast.Node) bool {
		spec, ok := n.(*ast.ValueSpec)
		if !ok {
			return true
		}
		if id, ok := spec.Type.(*ast.Ident); !ok || id.Name != "Code" {
			return true
		}
		for _, v := range spec.Values {
			if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if c, err := strconv.Unquote(lit.Value); err == nil {
					codes = append(codes, c)
				}
			}
		}
		return true
	})
	if len(codes) < 10 {
		t.Fatalf("found only the error codes %v in fault.go", codes)
	}
	return codes
}

// family returns the family a series name belongs to: itself, or a
// histogram's for its _bucket, _sum and _count series.
func (s *schema) family(name string) (string, bool) {
	if _, ok := s.labels[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if _, ok := s.labels[base]; ok {
				return base, true
			}
		}
	}
	return "", false
}

// promqlParser is Prometheus's own parser, with its default options.
func promqlParser() promql.Parser { return promql.NewParser(promql.Options{}) }

// parseExpr parses a PromQL expression.
func parseExpr(expr string) (promql.Expr, error) { return promqlParser().ParseExpr(expr) }

// selectorNames returns the metric names an expression selects.
func selectorNames(e promql.Expr) []string {
	var out []string
	promql.Inspect(e, func(n promql.Node, _ []promql.Node) error {
		if vs, ok := n.(*promql.VectorSelector); ok {
			out = append(out, vs.Name)
		}
		return nil
	})
	return out
}

// checkExpr returns what is wrong with the selectors of a parsed
// expression.
func (s *schema) checkExpr(where string, e promql.Expr) []string {
	var problems []string
	promql.Inspect(e, func(n promql.Node, _ []promql.Node) error {
		if vs, ok := n.(*promql.VectorSelector); ok {
			problems = append(problems, s.checkSelector(where, vs.Name, vs.LabelMatchers)...)
		}
		return nil
	})
	return problems
}

// checkSelector returns what is wrong with one selector: a vstage_ name the
// sidecar does not register, a recording rule that does not exist, a label
// the series cannot have, or a value outside a label's known values.
func (s *schema) checkSelector(where, name string, matchers []*labels.Matcher) []string {
	if name == "" {
		for _, m := range matchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
	}
	var have map[string]bool
	var family string
	switch {
	case strings.Contains(name, ":"):
		if _, ok := s.records[name]; !ok {
			return []string{fmt.Sprintf("%s: %s is not a recording rule of rules.yaml", where, name)}
		}
		have = s.labelsOfRecord(name)
	case strings.HasPrefix(name, "vstage_"):
		var ok bool
		if family, ok = s.family(name); !ok {
			return []string{fmt.Sprintf("%s: %s is not a metric the sidecar registers", where, name)}
		}
		have = s.seriesLabels(name, family)
	default:
		return nil // another exporter's metric, or no name
	}
	var problems []string
	for _, m := range matchers {
		if m.Name == labels.MetricName {
			continue
		}
		if have != nil && !have[m.Name] {
			problems = append(problems, fmt.Sprintf("%s: %s has no label %q (it has %v)", where, name, m.Name, slices.Sorted(maps.Keys(have))))
			continue
		}
		if family == "" {
			continue
		}
		known := s.values[family][m.Name]
		if len(known) == 0 {
			continue
		}
		for _, v := range matcherLiterals(m) {
			if !slices.Contains(known, v) {
				problems = append(problems, fmt.Sprintf("%s: %s{%s}: %q is not one of %v", where, name, m, v, known))
			}
		}
	}
	return problems
}

// seriesLabels are the labels a series of a family can carry once scraped.
func (s *schema) seriesLabels(name, family string) map[string]bool {
	have := map[string]bool{}
	for _, l := range s.labels[family] {
		have[l] = true
	}
	for _, l := range targetLabels {
		have[l] = true
	}
	if strings.HasSuffix(name, "_bucket") && name != family {
		have["le"] = true
	}
	return have
}

// literal matches a regular expression that is an alternation of plain
// values, the only kind whose values can be checked one by one.
var literal = regexp.MustCompile(`^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$`)

// matcherLiterals returns the values a matcher names: its value for = and
// !=, each alternative of a regular expression made of plain values, and
// nothing for a real pattern.
func matcherLiterals(m *labels.Matcher) []string {
	switch m.Type {
	case labels.MatchEqual, labels.MatchNotEqual:
		if m.Value == "" {
			return nil // "absent", always allowed
		}
		return []string{m.Value}
	}
	if literal.MatchString(m.Value) {
		return strings.Split(m.Value, "|")
	}
	return nil
}

// labelsOfRecord returns the labels a recording rule's series carry, nil
// when they cannot be told.
func (s *schema) labelsOfRecord(name string) map[string]bool {
	if s.recordLabels == nil {
		s.recordLabels = map[string]map[string]bool{}
	}
	if have, ok := s.recordLabels[name]; ok {
		return have
	}
	s.recordLabels[name] = nil // a rule that names itself has unknown labels
	have, ok := s.labelsOf(s.records[name].expr)
	if !ok {
		return nil
	}
	s.recordLabels[name] = have
	return have
}

// labelsOf returns the labels the series of an expression's result can
// carry (over all its series), or false when it cannot tell: an unknown
// metric, or a function it does not model.
func (s *schema) labelsOf(e promql.Expr) (map[string]bool, bool) {
	switch e := e.(type) {
	case *promql.NumberLiteral, *promql.StringLiteral:
		return map[string]bool{}, true
	case *promql.ParenExpr:
		return s.labelsOf(e.Expr)
	case *promql.UnaryExpr:
		return s.labelsOf(e.Expr)
	case *promql.StepInvariantExpr:
		return s.labelsOf(e.Expr)
	case *promql.SubqueryExpr:
		return s.labelsOf(e.Expr)
	case *promql.MatrixSelector:
		return s.labelsOf(e.VectorSelector)
	case *promql.VectorSelector:
		if strings.Contains(e.Name, ":") {
			if _, ok := s.records[e.Name]; !ok {
				return nil, false
			}
			have := s.labelsOfRecord(e.Name)
			return have, have != nil
		}
		family, ok := s.family(e.Name)
		if !ok {
			return nil, false
		}
		return s.seriesLabels(e.Name, family), true
	case *promql.AggregateExpr:
		in, ok := s.labelsOf(e.Expr)
		if !ok {
			return nil, false
		}
		out := map[string]bool{}
		if e.Without {
			maps.Copy(out, in)
			for _, l := range e.Grouping {
				delete(out, l)
			}
		} else {
			for _, l := range e.Grouping {
				out[l] = true
			}
		}
		switch e.Op {
		case promql.TOPK, promql.BOTTOMK, promql.LIMITK, promql.LIMIT_RATIO:
			return in, true
		case promql.COUNT_VALUES:
			if lit, ok := e.Param.(*promql.StringLiteral); ok {
				out[lit.Val] = true
			}
		}
		return out, true
	case *promql.Call:
		return s.labelsOfCall(e)
	case *promql.BinaryExpr:
		return s.labelsOfBinary(e)
	}
	return nil, false
}

func (s *schema) labelsOfCall(e *promql.Call) (map[string]bool, bool) {
	switch e.Func.Name {
	case "histogram_quantile", "histogram_fraction":
		in, ok := s.labelsOf(e.Args[len(e.Args)-1])
		if !ok {
			return nil, false
		}
		out := maps.Clone(in)
		delete(out, "le")
		return out, true
	case "label_replace", "label_join":
		in, ok := s.labelsOf(e.Args[0])
		if !ok {
			return nil, false
		}
		out := maps.Clone(in)
		if lit, ok := e.Args[1].(*promql.StringLiteral); ok {
			out[lit.Val] = true
		}
		return out, true
	case "vector", "time", "scalar", "pi":
		return map[string]bool{}, true
	}
	for _, a := range e.Args {
		if t := a.Type(); t == promql.ValueTypeVector || t == promql.ValueTypeMatrix {
			return s.labelsOf(a)
		}
	}
	return map[string]bool{}, true
}

func (s *schema) labelsOfBinary(e *promql.BinaryExpr) (map[string]bool, bool) {
	lhs, okL := s.labelsOf(e.LHS)
	rhs, okR := s.labelsOf(e.RHS)
	if !okL || !okR {
		return nil, false
	}
	lv := e.LHS.Type() == promql.ValueTypeVector
	rv := e.RHS.Type() == promql.ValueTypeVector
	switch {
	case !lv && !rv:
		return map[string]bool{}, true
	case !rv:
		return lhs, true
	case !lv:
		return rhs, true
	}
	vm := e.VectorMatching
	switch e.Op {
	case promql.LAND, promql.LUNLESS:
		return lhs, true
	case promql.LOR:
		out := maps.Clone(lhs)
		maps.Copy(out, rhs)
		return out, true
	}
	switch {
	case vm == nil:
		return lhs, true
	case vm.Card == promql.CardOneToOne && vm.On:
		out := map[string]bool{}
		for _, l := range vm.MatchingLabels {
			if lhs[l] {
				out[l] = true
			}
		}
		return out, true
	case vm.Card == promql.CardOneToOne:
		out := maps.Clone(lhs)
		for _, l := range vm.MatchingLabels {
			delete(out, l)
		}
		return out, true
	case vm.Card == promql.CardManyToOne:
		out := maps.Clone(lhs)
		for _, l := range vm.Include {
			out[l] = true
		}
		return out, true
	case vm.Card == promql.CardOneToMany:
		out := maps.Clone(rhs)
		for _, l := range vm.Include {
			out[l] = true
		}
		return out, true
	}
	return lhs, true
}
