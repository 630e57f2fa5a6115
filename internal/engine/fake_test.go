package engine

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An engine that dies at start-up is restarted with a growing backoff, and
// Ready says why it is not ready.
func TestEngineExitingAtStartIsRetriedWithBackoff(t *testing.T) {
	t.Parallel()
	o := fake("exit")
	o.BackoffMin, o.BackoffMax = 20*time.Millisecond, 320*time.Millisecond
	h := start(t, o)
	h.waitFor("5 restarts", 15*time.Second, func() bool { return h.restarts(ReasonStartFailed) >= 5 })
	err := h.s.Ready()
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "start_failed") || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("Ready = %v, want ErrUnavailable naming start_failed and exit code 3", err)
	}
	b := h.backoffs()
	// Each draw lies in the upper half of a ceiling that doubles, so the
	// fourth wait is longer than the first whatever the jitter.
	if len(b) < 4 || b[3] <= b[0] {
		t.Errorf("backoffs %v do not grow", b)
	}
	if st := h.s.Status(); st.ConsecutiveFailures < 5 || st.LastReason != ReasonStartFailed {
		t.Errorf("status %+v", st)
	}
	if !hasLine(h.logs.String(), `"source":"engine"`) || !hasLine(h.logs.String(), "not json: giving up") {
		t.Errorf("the engine's stderr did not reach the log")
	}
}

// An engine that never opens its socket is killed after StartTimeout.
func TestEngineNeverListeningTimesOut(t *testing.T) {
	t.Parallel()
	o := fake("silent")
	o.StartTimeout = 300 * time.Millisecond
	h := start(t, o)
	h.waitFor("2 start timeouts", 10*time.Second, func() bool { return h.restarts(ReasonStartTimeout) >= 2 })
	if err := h.s.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready = %v", err)
	}
}

// Stopping an engine that ignores SIGTERM ends in SIGKILL after StopGrace;
// the harness checks the reaping.
func TestStopKillsEngineIgnoringSIGTERM(t *testing.T) {
	t.Parallel()
	o := fake("stubborn")
	o.StopGrace = 300 * time.Millisecond
	h := start(t, o)
	h.waitFor("spawn", 5*time.Second, func() bool { return len(h.spawned()) == 1 })
	time.Sleep(100 * time.Millisecond) // let it install its SIGTERM handler
}

// A sidecar killed by SIGKILL leaves no engine behind: Pdeathsig kills the
// fake engine, which does not watch its parent itself.
func TestSidecarKilledLeavesNoEngine(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fakeSidecarEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var pid int
	select {
	case line := <-lines:
		if pid, err = strconv.Atoi(line); err != nil {
			t.Fatalf("fake sidecar said %q", line)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("fake sidecar printed no engine pid")
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("engine %d not running: %v", pid, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	// The engine is the dead sidecar's child, reparented to init (or a
	// subreaper) which reaps it; either way kill(pid, 0) fails once it is
	// gone. A zombie still answers kill 0, so look at its state too.
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("engine %d outlived its sidecar", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone reports whether pid no longer runs: absent, or a zombie.
func gone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(data)
	if k := strings.LastIndexByte(s, ')'); k >= 0 && k+2 < len(s) {
		return s[k+2] == 'Z'
	}
	return false
}
