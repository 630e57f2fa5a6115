package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"
)

// BuildSidecar builds the repository's sidecar into dir and returns the
// binary's path.
func BuildSidecar(root, dir string) (string, error) {
	bin := filepath.Join(dir, "sidecar")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/sidecar")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_CFLAGS=-O2 -g -Wno-deprecated-declarations")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the sidecar: %w\n%s", err, out)
	}
	return bin, nil
}

// Sidecar is a running vstage sidecar process.
type Sidecar struct {
	// URL is its API's base URL.
	URL  string
	bin  string
	env  []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartSidecar starts bin with env (over a minimal environment) on a free
// loopback port, with the admin listener off, and waits for /readyz. Its
// log goes to a file that is printed when the test fails.
func StartSidecar(t testing.TB, bin string, env map[string]string) *Sidecar {
	t.Helper()
	addr := FreePort(t)
	all := map[string]string{"PATH": os.Getenv("PATH"), "HOME": os.Getenv("HOME"), "LISTEN_ADDR": addr, "ADMIN_ADDR": "off"}
	for k, v := range env {
		all[k] = v
	}
	s := &Sidecar{URL: "http://" + addr, bin: bin, log: filepath.Join(t.TempDir(), "sidecar.log")}
	for k, v := range all {
		s.env = append(s.env, k+"="+v)
	}
	sort.Strings(s.env)
	t.Cleanup(func() {
		s.Stop(t)
		if t.Failed() {
			data, _ := os.ReadFile(s.log)
			t.Logf("sidecar log:\n%s", tail(data, 8000))
		}
	})
	s.Start(t)
	return s
}

// Start starts the sidecar again after Stop, on the same port.
func (s *Sidecar) Start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the sidecar: %v", err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done)
	waitFor(t, "the sidecar", func(ctx context.Context) error {
		select {
		case <-s.done:
			t.Fatalf("the sidecar exited at start: %v", cmd.ProcessState)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
}

// Stop sends SIGTERM (a graceful stop: requests in flight finish) and
// waits for the process and its engine to exit; SIGKILL after 30 s.
func (s *Sidecar) Stop(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
