package cli_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vstage/vstage/worker/internal/cli"
	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/testenv"
)

// sidecarBin is the sidecar built once for the package's tests.
var sidecarBin string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "vst-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		wd, _ := os.Getwd()
		if sidecarBin, err = testenv.BuildSidecar(filepath.Join(wd, "..", "..", ".."), dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if code := m.Run(); code != 0 {
			return code
		}
		// Every goroutine of the worker (asynq's, the metrics listener's,
		// the pools') ends when its command returns.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}())
}

// stack is one test's Redis, PostgreSQL and storage folder, and the
// environment the worker's commands get.
type stack struct {
	env      map[string]string
	storeDir string
	db       *store.Store
}

func newStack(t testing.TB, env map[string]string) *stack {
	t.Helper()
	s := &stack{storeDir: t.TempDir(), env: map[string]string{
		"REDIS_URL": testenv.Redis(t), "DATABASE_URL": testenv.Postgres(t),
		"WORKER_METRICS_ADDR": "off", "WORKER_RETRY_MIN": "100ms", "WORKER_RETRY_MAX": "1s",
	}}
	for k, v := range env {
		s.env[k] = v
	}
	if code, _, errOut := s.cmd(t, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, errOut)
	}
	db, err := store.Open(t.Context(), s.env["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	s.db = db
	s.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	return s
}

func (s *stack) getenv(k string) string { return s.env[k] }

// cmd runs one worker command in process and returns its exit code and
// output.
func (s *stack) cmd(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cli.Main(t.Context(), args, cli.Env{Getenv: s.getenv, Stdout: &out, Stderr: &errOut})
	return code, out.String(), errOut.String()
}

// enqueue queues one job on the sample photo and fails the test unless
// the command prints want as its result.
func (s *stack) enqueue(t testing.TB, id, tier, roomType, want string) {
	t.Helper()
	code, out, errOut := s.cmd(t, "enqueue", "--image-id", id, "--original-key", "listings/42/empty.jpg",
		"--room-type", roomType, "--style", "scandinavian", "--tier", tier)
	var got struct{ Result string }
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Result != want {
		t.Fatalf("enqueue %s: exit %d, %q, %s; want result %s", id, code, out, errOut, want)
	}
}

// runWorker starts `worker run` with extra settings and returns a function
// that stops it (as SIGTERM would) and checks that it exited 0.
func (s *stack) runWorker(t testing.TB, extra map[string]string) (stop func()) {
	t.Helper()
	env := map[string]string{}
	for k, v := range s.env {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(t.Context())
	logs := &lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- cli.Main(ctx, []string{"run"}, cli.Env{Getenv: func(k string) string { return env[k] }, Stdout: logs, Stderr: logs})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("worker run exited %d", code)
			}
			if t.Failed() {
				t.Logf("worker log:\n%s", logs.tail(8000))
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitRows polls the images until done(rows) or the timeout.
func (s *stack) waitRows(t testing.TB, ids []string, timeout time.Duration, done func([]store.Row) bool) []store.Row {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rows := s.rows(t, ids)
		if done(rows) {
			return rows
		}
		if time.Now().After(deadline) {
			for _, r := range rows {
				t.Logf("%s: %s %v", r.ID, r.Status, deref(r.ErrorCode))
			}
			t.Fatalf("rows not done after %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *stack) rows(t testing.TB, ids []string) []store.Row {
	t.Helper()
	out := make([]store.Row, len(ids))
	for i, id := range ids {
		r, err := s.db.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		out[i] = r
	}
	return out
}

func allFinal(rows []store.Row) bool {
	for _, r := range rows {
		if r.Status != store.StatusStaged && r.Status != store.StatusFailed {
			return false
		}
	}
	return true
}

func (s *stack) put(t testing.TB, key string, data []byte) {
	t.Helper()
	p := filepath.Join(s.storeDir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

// mockSidecar starts the sidecar in mock mode on the stack's storage.
func (s *stack) mockSidecar(t testing.TB) *testenv.Sidecar {
	t.Helper()
	return testenv.StartSidecar(t, sidecarBin, map[string]string{
		"INFERENCE_MODE": "mock", "STORAGE_URL": "file://" + s.storeDir,
	})
}

// slowSidecar starts the sidecar in self mode on the torch-free test engine,
// each job ten steps of stepDelay seconds.
func (s *stack) slowSidecar(t testing.TB, stepDelay string, env map[string]string) *testenv.Sidecar {
	t.Helper()
	py := filepath.Join(testenv.RepoRoot(t), ".venv", "bin", "python")
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("the engine's virtual environment is missing (make venv): %v", err)
	}
	all := map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_MODULE": "enginetest", "ENGINE_TINY_MODEL": "true",
		"ENGINE_TEST_STEP_DELAY": stepDelay, "INFERENCE_STEPS": "10", "STORAGE_URL": "file://" + s.storeDir,
	}
	for k, v := range env {
		all[k] = v
	}
	return testenv.StartSidecar(t, sidecarBin, all)
}

// call is one /infer request seen by a recorder.
type call struct {
	imageID    string
	arrived    time.Time
	answered   time.Time
	status     int
	retryAfter string
}

// recorder is a reverse proxy in front of the sidecar that records every
// /infer call, so a test can see when the worker retried.
type recorder struct {
	mu    sync.Mutex
	calls []call
	srv   *httptest.Server
}

func newRecorder(t testing.TB, target string) *recorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		var j struct {
			ImageID string `json:"image_id"`
		}
		_ = json.Unmarshal(body, &j)
		c := call{imageID: j.ImageID, arrived: time.Now()}
		rw := &statusWriter{ResponseWriter: w}
		proxy.ServeHTTP(rw, req)
		c.answered, c.status, c.retryAfter = time.Now(), rw.status, rw.Header().Get("Retry-After")
		r.mu.Lock()
		r.calls = append(r.calls, c)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) of(id string) []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []call
	for _, c := range r.calls {
		if c.imageID == id {
			out = append(out, c)
		}
	}
	return out
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// metrics scrapes the worker's /metrics and returns the value of series.
func metric(t testing.TB, addr, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v
		}
	}
	return ""
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

func photo(t testing.TB, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x ^ y) & 0xff), 255})
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 85}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
