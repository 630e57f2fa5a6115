package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/testsupport"
)

// The test binary doubles as the sidecar: a child started with this
// variable runs main's logic instead of the tests, so the tests drive a real
// process with real signals.
const helperEnv = "VSTAGE_SIDECAR_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(run())
	}
	os.Exit(m.Run())
}

func sidecar(t *testing.T, env ...string) (*exec.Cmd, *bytes.Buffer, io.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=1"}, env...)...)
	stdout := &bytes.Buffer{}
	cmd.Stdout = stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, stdout, stderr
}

// selfMode starts the sidecar in self mode on the torch-free test engine
// (python -m enginetest) and waits until it is ready. It returns the address, the engine's pid and
// a channel with the rest of the log once the process ends.
func selfMode(t *testing.T, env ...string) (cmd *exec.Cmd, stdout *bytes.Buffer, addr string, enginePID int, rest <-chan string) {
	cmd, stdout, addr, _, enginePID, rest = selfModeAdmin(t, env...)
	return cmd, stdout, addr, enginePID, rest
}

// selfModeAdmin is selfMode that also returns the admin listener's address.
func selfModeAdmin(t *testing.T, env ...string) (cmd *exec.Cmd, stdout *bytes.Buffer, addr, adminAddr string, enginePID int, rest <-chan string) {
	t.Helper()
	env = append([]string{"LISTEN_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "INFERENCE_MODE=self", "ENGINE_PYTHON=" + testsupport.EnginePython(t),
		"ENGINE_MODULE=enginetest", "ENGINE_TINY_MODEL=true", "SHUTDOWN_TIMEOUT=5s"}, env...)
	cmd, stdout, stderr := sidecar(t, env...)
	logs := bufio.NewScanner(stderr)
	for (addr == "" || enginePID == 0) && logs.Scan() {
		var line struct {
			Msg, Addr, Source string
			AdminAddr         string `json:"admin_addr"`
			EnginePID         int    `json:"engine_pid"`
		}
		if json.Unmarshal(logs.Bytes(), &line) != nil {
			continue
		}
		switch line.Msg {
		case "listening":
			addr, adminAddr = line.Addr, line.AdminAddr
		case "engine ready":
			// The supervisor's line, not the engine's own one of that name.
			if line.Source == "" {
				enginePID = line.EnginePID
			}
		}
	}
	if addr == "" || enginePID == 0 {
		t.Fatalf("no listening or engine ready line: %v", logs.Err())
	}
	ch := make(chan string, 1)
	go func() {
		var b strings.Builder
		for logs.Scan() {
			b.WriteString(logs.Text() + "\n")
		}
		ch <- b.String()
	}()
	return cmd, stdout, addr, adminAddr, enginePID, ch
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestServesTheDemoAndExitsZeroOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	cmd, stdout, addr, enginePID, rest := selfMode(t, "STORAGE_URL=file://"+dir, "SEED_DEMO=true")
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	ready, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(ready), `"model_rev":"test-invert-v1"`) {
		t.Fatalf("/readyz after engine ready: %d %s, want 200 naming the engine's model_rev", resp.StatusCode, ready)
	}

	body := `{"image_id":"demo-1","original_key":"demo/empty_living_room.jpg","room_type":"living_room","style":"scandinavian"}`
	resp, err = http.Post("http://"+addr+"/infer", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(answer), `"staged_key":"demo/staged/demo-1.jpg"`) ||
		!strings.Contains(string(answer), `"model_rev":"test-`) {
		t.Fatalf("demo job: %d %s", resp.StatusCode, answer)
	}
	if _, err := os.Stat(filepath.Join(dir, "demo", "staged", "demo-1.jpg")); err != nil {
		t.Errorf("staged file: %v", err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v, want status 0", err)
	}
	if !strings.Contains(stdout.String(), "curl -sS -X POST http://"+addr+"/infer") {
		t.Errorf("no curl hint on stdout:\n%s", stdout.String())
	}
	if tail := <-rest; !strings.Contains(tail, `"msg":"stopped"`) {
		t.Errorf("no clean stop in the log:\n%s", tail)
	}
	if alive(enginePID) {
		t.Errorf("engine %d outlived the sidecar", enginePID)
	}
}

// TestSIGKILLedSidecarLeavesNoEngine kills the sidecar without a chance to
// clean up: the kernel's parent-death signal still takes the engine down.
func TestSIGKILLedSidecarLeavesNoEngine(t *testing.T) {
	cmd, _, _, enginePID, _ := selfMode(t, "STORAGE_URL=file://"+t.TempDir())
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for alive(enginePID) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(enginePID) {
		_ = syscall.Kill(enginePID, syscall.SIGKILL)
		t.Fatalf("engine %d survived its sidecar's SIGKILL", enginePID)
	}
}

func TestBadConfigurationExitsTwo(t *testing.T) {
	cmd, _, stderr := sidecar(t, "LISTEN_ADDR=nope", "OUTPUT_JPEG_QUALITY=0")
	msg, _ := io.ReadAll(stderr)
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2", err)
	}
	for _, want := range []string{"LISTEN_ADDR", "OUTPUT_JPEG_QUALITY"} {
		if !strings.Contains(string(msg), want) {
			t.Errorf("message lacks %s:\n%s", want, msg)
		}
	}
}

// TestSelfModeWithoutAModelExitsTwo: random weights are never served by
// accident; the one line on stderr says what to set.
func TestSelfModeWithoutAModelExitsTwo(t *testing.T) {
	cmd, _, stderr := sidecar(t, "INFERENCE_MODE=self", "MODEL_DIR=", "ENGINE_TINY_MODEL=", "LISTEN_ADDR=127.0.0.1:0")
	msg, _ := io.ReadAll(stderr)
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2", err)
	}
	lines := strings.Split(strings.TrimSpace(string(msg)), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "MODEL_DIR") || !strings.Contains(lines[0], "ENGINE_TINY_MODEL") {
		t.Errorf("stderr %q, want one line naming MODEL_DIR", msg)
	}
}

// TestSIGHUPReloadsTheRolloutFile edits the rollout file and sends the
// process a real SIGHUP: the kill switch takes effect without a restart.
func TestSIGHUPReloadsTheRolloutFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "rollout.json")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"enabled":true,"mode":"self","canary_percent":100}`)
	cmd, _, _, admin, _, _ := selfModeAdmin(t, "STORAGE_URL=file://"+t.TempDir(), "ROLLOUT_FILE="+file)
	state := func() string {
		resp, err := http.Get("http://" + admin + "/admin/rollout")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if s := state(); !strings.Contains(s, `"enabled":true`) {
		t.Fatalf("start state %s", s)
	}
	write(`{"enabled":false,"mode":"self","canary_percent":100}`)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(state(), `"enabled":false`) {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not apply the file: %s", state())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

func TestGCPercentDefaultsUnlessGOGCIsSet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	if got := setGCPercent(func(string) string { return "" }); got != defaultGCPercent {
		t.Errorf("without GOGC: %d, want %d", got, defaultGCPercent)
	}
	if v := debug.SetGCPercent(100); v != defaultGCPercent {
		t.Errorf("the collector's target is %d, want %d", v, defaultGCPercent)
	}
	// The runtime has read GOGC=250 at start; the sidecar leaves it.
	debug.SetGCPercent(250)
	env := func(k string) string {
		if k == "GOGC" {
			return "250"
		}
		return ""
	}
	if got := setGCPercent(env); got != 250 {
		t.Errorf("with GOGC=250: %d", got)
	}
	if v := debug.SetGCPercent(100); v != 250 {
		t.Errorf("the collector's target is %d, want GOGC's 250", v)
	}
}
