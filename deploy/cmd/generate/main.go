// Command generate rewrites the generated files under deploy/kubernetes from
// their sources (run from the deploy module: make deploy-generate).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/vstage/vstage/deploy/generate"
)

func main() { os.Exit(run()) }

func run() int {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	rules, err := os.ReadFile(filepath.Join(root, "prometheus", "rules.yaml"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out, err := generate.PrometheusRule(rules)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dst := filepath.Join(root, "kubernetes", "base", "prometheusrule.yaml")
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("wrote", dst)
	return 0
}
