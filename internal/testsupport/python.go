// Package testsupport holds what tests across packages share: the engine's
// Python for tests that start the real engine process (or the test engine,
// python/enginetest), and a log buffer
// safe for concurrent writers. Only tests import it.
package testsupport

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	once   sync.Once
	python string
	err    error
)

// EnginePython returns the interpreter of the project's virtual environment
// (.venv at the repository root). It fails the test, never skips it, when
// the environment is missing or cannot import the engine: a test that did
// not run must not look like a pass.
func EnginePython(t testing.TB) string {
	t.Helper()
	once.Do(func() { python, err = find() })
	if err != nil {
		t.Fatal(err)
	}
	return python
}

func find() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
		dir = parent
	}
	py := filepath.Join(dir, ".venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		return "", fmt.Errorf("the engine's Python is missing (%w): run `make venv` at the repository root", err)
	}
	if out, err := exec.Command(py, "-c", "import grpc, grpc_health, inference, enginetest").CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s cannot import the engine (%w): run `make venv` at the repository root\n%s", py, err, out)
	}
	return py, nil
}
