package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vstage/vstage/internal/testsupport"
)

// TestEngineKilledDuringJobs SIGKILLs the engine (the torch-free test
// engine, slowed down) while 8 /infer requests are in flight (two on the
// engine, six queued for a place): every client gets 503 unavailable,
// retryable, before the killed jobs would have ended; nothing is recorded;
// the restart is counted; the service is ready again and the retries
// succeed.
func TestEngineKilledDuringJobs(t *testing.T) {
	py := testsupport.EnginePython(t)
	dir := t.TempDir()
	store := localBlobs{dir}
	store.put(t, "listings/42/empty.jpg", photo(t, 320, 240))
	// The test engine reads its own settings from the environment it inherits.
	t.Setenv("ENGINE_TEST_STEP_DELAY", "0.2") // 30 steps: a 6 s job
	svc := start(t, map[string]string{
		"INFERENCE_MODE": "self", "ENGINE_PYTHON": py, "ENGINE_MODULE": "enginetest", "ENGINE_TINY_MODEL": "true",
		"STORAGE_URL": "file://" + dir,
		"CONCURRENCY": "2", "QUEUE_DEPTH": "6", "QUEUE_TIMEOUT": "60s", "FREE_QUEUE_SHARE": "1",
		"ENGINE_BACKOFF_MIN": "100ms", "ENGINE_BACKOFF_MAX": "1s",
	})
	waitReady(t, svc, time.Minute)
	pid := enginePID(t, svc.logs.String())
	before := store.snapshot(t)

	const n = 8
	type result struct {
		status     int
		code       string
		retryable  bool
		answeredAt time.Time
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(job(fmt.Sprintf("chaos-%d", i)))
			resp, err := http.Post(svc.url+"/infer", "application/json", strings.NewReader(string(body)))
			if err != nil {
				results[i] = result{status: -1, code: err.Error()}
				return
			}
			defer resp.Body.Close()
			var e struct {
				Error struct {
					Code      string `json:"code"`
					Retryable bool   `json:"retryable"`
				} `json:"error"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&e)
			results[i] = result{resp.StatusCode, e.Error.Code, e.Error.Retryable, time.Now()}
		}()
	}
	time.Sleep(700 * time.Millisecond) // two jobs on the engine, six waiting in admission
	killedAt := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// The jobs on the engine had over 5 s left: an answer sooner comes from
	// noticing the kill, where a hang would last until the request deadline.
	const bound = 5 * time.Second
	var slowest time.Duration
	for i, r := range results {
		slowest = max(slowest, r.answeredAt.Sub(killedAt))
		if took := r.answeredAt.Sub(killedAt); r.status != 503 || r.code != "unavailable" || !r.retryable || took > bound {
			t.Errorf("request %d: %+v after %v, want 503 unavailable retryable within %v", i, r, took, bound)
		}
	}
	t.Logf("all %d requests answered within %v of the kill", n, slowest)
	if after := store.snapshot(t); len(after) != len(before) {
		t.Errorf("failed jobs wrote to the store: %v", after)
	}

	waitReady(t, svc, 30*time.Second)
	t.Logf("ready again %v after the kill", time.Since(killedAt))
	metrics := string(get(t, svc.url+"/metrics").body)
	restarts := 0
	for _, reason := range []string{"signal", "oom_kill"} {
		if v := metricValue(t, metrics, `vstage_engine_restarts_total{reason="`+reason+`"}`); v == "1" {
			restarts++
		}
	}
	if restarts != 1 {
		t.Errorf("restart not counted by reason:\n%s", grepLines(metrics, "vstage_engine_restarts_total"))
	}
	if newPID := enginePID(t, svc.logs.String()); newPID == pid {
		t.Error("no new engine after the kill")
	}
	if a := infer(t, svc, job("chaos-0")); a.status != 200 || a.header.Get("Idempotent-Replay") != "" {
		t.Errorf("retry after the restart: %d %s", a.status, a.body)
	}
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
