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
	"strings"
	"syscall"
	"testing"
	"time"
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

func TestServesTheDemoAndExitsZeroOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	cmd, stdout, stderr := sidecar(t, "LISTEN_ADDR=127.0.0.1:0", "STORAGE_URL=file://"+dir, "SEED_DEMO=true", "SHUTDOWN_TIMEOUT=5s")

	logs := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && logs.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(logs.Bytes(), &line) == nil && line.Msg == "listening" {
			addr = line.Addr
		}
	}
	if addr == "" {
		t.Fatalf("no listening line: %v", logs.Err())
	}
	rest := make(chan string, 1)
	go func() {
		var b strings.Builder
		for logs.Scan() {
			b.WriteString(logs.Text() + "\n")
		}
		rest <- b.String()
	}()

	body := `{"image_id":"demo-1","original_key":"demo/empty_living_room.jpg","room_type":"living_room","style":"scandinavian"}`
	resp, err := http.Post("http://"+addr+"/infer", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(answer), `"staged_key":"demo/staged/demo-1.jpg"`) {
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
