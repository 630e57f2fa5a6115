// Package generate derives the Kubernetes copies of files kept elsewhere in
// the repository, so that each fact has one source: the PrometheusRule
// object is built from deploy/prometheus/rules.yaml, which promtool checks
// and unit-tests.
package generate

import (
	"bytes"
	"errors"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// Header opens every generated file; it names the command that rewrites it.
const Header = "# Generated from deploy/prometheus/rules.yaml by `make deploy-generate`; do not edit.\n"

// PrometheusRule returns the PrometheusRule manifest (Prometheus Operator)
// whose spec.groups are the groups of a Prometheus rule file. The groups
// are carried over as YAML nodes, so expressions keep their block style and
// the rule file's comments stay beside the rules they explain.
func PrometheusRule(rules []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(rules, &doc); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("rules: not one YAML mapping")
	}
	var groups *yaml.Node
	top := doc.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "groups" {
			return nil, fmt.Errorf("rules: unexpected top-level key %q", top.Content[i].Value)
		}
		groups = top.Content[i+1]
	}
	if groups == nil || groups.Kind != yaml.SequenceNode {
		return nil, errors.New("rules: no groups list")
	}
	str := func(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }
	mapping := func(kv ...*yaml.Node) *yaml.Node { return &yaml.Node{Kind: yaml.MappingNode, Content: kv} }
	out := mapping(
		str("apiVersion"), str("monitoring.coreos.com/v1"),
		str("kind"), str("PrometheusRule"),
		str("metadata"), mapping(
			str("name"), str("vstage"),
			str("labels"), mapping(str("app.kubernetes.io/name"), str("vstage")),
		),
		str("spec"), mapping(str("groups"), groups),
	)
	var buf bytes.Buffer
	buf.WriteString(Header)
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(out); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
