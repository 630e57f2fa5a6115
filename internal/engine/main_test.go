package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc/metadata"

	"github.com/vstage/vstage/internal/testsupport"
	enginev1 "github.com/vstage/vstage/proto/vstage/engine/v1"
)

// The test binary doubles as a fake engine and as a fake sidecar: when one
// of these variables is set it plays that part instead of running tests
// (the TestHelperProcess pattern, decided before flag parsing because the
// supervisor passes engine flags the test binary does not know).
const (
	fakeEngineEnv  = "VSTAGE_TEST_FAKE_ENGINE"
	fakeSidecarEnv = "VSTAGE_TEST_FAKE_SIDECAR"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEngineEnv); mode != "" {
		os.Exit(fakeEngine(mode))
	}
	if os.Getenv(fakeSidecarEnv) != "" {
		os.Exit(fakeSidecar())
	}
	goleak.VerifyTestMain(m)
}

// fakeEngine is a child that never serves: "exit" fails at once, "silent"
// never opens its socket, "stubborn" also ignores SIGTERM. None of them
// watches its parent, so only the supervisor (or Pdeathsig) can end them.
func fakeEngine(mode string) int {
	fmt.Fprintf(os.Stderr, `{"level":"info","msg":"fake engine","mode":%q,"pid":%d}`+"\n", mode, os.Getpid())
	switch mode {
	case "exit":
		fmt.Fprintln(os.Stderr, "not json: giving up")
		return 3
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
	}
	time.Sleep(time.Hour)
	return 0
}

// fakeSidecar runs a supervisor of a silent fake engine, prints the
// engine's pid and waits to be killed.
func fakeSidecar() int {
	pids := make(chan int, 1)
	s, err := New(Options{
		Python: os.Args[0],
		Env:    []string{fakeEngineEnv + "=silent"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	s.onSpawn = func(pid int) { pids <- pid }
	go func() { _ = s.Run(context.Background()) }()
	fmt.Println(<-pids)
	time.Sleep(time.Hour)
	return 0
}

// harness runs a supervisor for one test and, when the test ends, stops it
// and checks that Run returned and no engine it spawned is still alive.
type harness struct {
	t    *testing.T
	s    *Supervisor
	reg  *prometheus.Registry
	logs *testsupport.LogBuffer

	mu      sync.Mutex
	pids    []int
	backoff []time.Duration
}

// python returns options that run the test engine: the real engine server
// with a torch-free backend that obeys fault commands (see withFault).
func python(t *testing.T, extra ...string) Options {
	args := []string{
		"--concurrency", "8",
		"--min-long-side", "64", "--default-long-side", "128", "--max-long-side", "256",
		"--shutdown-grace", "1",
	}
	return Options{Python: testsupport.EnginePython(t), Module: "enginetest", Args: append(args, extra...)}
}

// faultKey is the metadata key of a job's fault commands, which only the
// test engine reads (python/enginetest/faults.py lists them).
const faultKey = "vstage-test-fault"

// withFault returns ctx carrying fault commands, such as "sleep=2" or
// "crash=70", for the job staged with it.
func withFault(ctx context.Context, commands string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, faultKey, commands)
}

// fake returns options that run the test binary as a fake engine.
func fake(mode string) Options {
	return Options{Python: os.Args[0], Env: []string{fakeEngineEnv + "=" + mode}}
}

// start runs a supervisor with o; hooks adjust it before Run.
func start(t *testing.T, o Options, hooks ...func(*Supervisor)) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(), logs: &testsupport.LogBuffer{}}
	o.Registerer = h.reg
	o.Logger = slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.StopGrace == 0 {
		o.StopGrace = 2 * time.Second
	}
	if o.BackoffMin == 0 {
		o.BackoffMin, o.BackoffMax = 50*time.Millisecond, 200*time.Millisecond
	}
	if o.HealthInterval == 0 {
		o.HealthInterval = 200 * time.Millisecond
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 20 * time.Second
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	h.s = s
	s.onSpawn = func(pid int) {
		h.mu.Lock()
		h.pids = append(h.pids, pid)
		h.mu.Unlock()
	}
	s.onBackoff = func(d time.Duration) {
		h.mu.Lock()
		h.backoff = append(h.backoff, d)
		h.mu.Unlock()
	}
	for _, hook := range hooks {
		hook(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(o.StopGrace + 5*time.Second):
			t.Errorf("Run did not return after cancel")
		}
		for _, pid := range h.spawned() {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("engine pid %d outlived the test (kill 0: %v)", pid, err)
			}
		}
		if t.Failed() {
			t.Logf("supervisor logs:\n%s", h.logs)
		}
	})
	return h
}

func (h *harness) spawned() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.pids...)
}

func (h *harness) backoffs() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]time.Duration(nil), h.backoff...)
}

// waitFor polls cond until it holds or timeout passes.
func (h *harness) waitFor(what string, timeout time.Duration, cond func() bool) time.Duration {
	h.t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > timeout {
			h.t.Fatalf("timed out after %v waiting for %s; status %+v; ready: %v", timeout, what, h.s.Status(), h.s.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(t0)
}

func (h *harness) waitReady(timeout time.Duration) time.Duration {
	h.t.Helper()
	return h.waitFor("ready", timeout, func() bool { return h.s.Ready() == nil })
}

func (h *harness) restarts(reason string) float64 {
	return testutil.ToFloat64(h.s.m.restarts.WithLabelValues(reason))
}

var testPNG = func() []byte {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for y := range 48 {
		for x := range 64 {
			img.Set(x, y, color.RGBA{uint8(x * 4), uint8(y * 5), 80, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		panic(err)
	}
	return b.Bytes()
}()

func stageRequest(id string) *enginev1.StageRequest {
	return &enginev1.StageRequest{
		JobId: id, Image: testPNG, Prompt: "a room", NegativePrompt: "blurry",
		Seed: 7, Strength: 0.6, GuidanceScale: 5, Steps: 4, ConditioningScale: 1,
		OutputLongSide: 128, OutputFormat: enginev1.ImageFormat_IMAGE_FORMAT_JPEG, Quality: 85,
	}
}

func hasLine(logs, substr string) bool {
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, substr) {
			return true
		}
	}
	return false
}
