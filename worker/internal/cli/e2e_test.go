package cli_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vstage/vstage/worker/internal/store"
	"github.com/vstage/vstage/worker/internal/testenv"
)

// TestThirtyJobsAcrossTiers queues ten jobs per tier before the worker
// starts, then runs them one at a time against a mock-mode sidecar: every
// image ends staged with its inference_meta, and business jobs start
// before free ones.
func TestThirtyJobsAcrossTiers(t *testing.T) {
	s := newStack(t, nil)
	side := s.mockSidecar(t)
	var ids []string
	tierOf := map[string]string{}
	for i := range 10 {
		for _, tier := range []string{"free", "pro", "business"} {
			id := fmt.Sprintf("%s-%02d", tier, i)
			s.enqueue(t, id, tier, "living_room", "enqueued")
			ids, tierOf[id] = append(ids, id), tier
		}
	}
	// Weights far apart make the order a near certainty (a simulation of
	// asynq's weighted pick gave no inversion of the mean start rank in
	// 300,000 runs); the defaults, 6:3:1, invert it about once in a
	// thousand.
	s.runWorker(t, map[string]string{"VSTAGE_URL": side.URL, "WORKER_CONCURRENCY": "1", "WORKER_QUEUE_WEIGHTS": "business=20,pro=4,free=1"})
	rows := s.waitRows(t, ids, 2*time.Minute, allFinal)
	for _, r := range rows {
		if r.Status != store.StatusStaged || r.StagedKey == nil {
			t.Fatalf("%s: %s %s", r.ID, r.Status, deref(r.ErrorCode))
		}
		if _, err := os.Stat(filepath.Join(s.storeDir, filepath.FromSlash(*r.StagedKey))); err != nil {
			t.Errorf("%s: staged image missing: %v", r.ID, err)
		}
		var meta struct {
			ModelRev   string         `json:"model_rev"`
			Seed       *uint32        `json:"seed"`
			Backend    string         `json:"backend"`
			Parameters map[string]any `json:"parameters"`
			Warnings   []string       `json:"warnings"`
			Timings    map[string]int `json:"timings"`
		}
		if err := json.Unmarshal(r.InferenceMeta, &meta); err != nil {
			t.Fatalf("%s: inference_meta %s: %v", r.ID, r.InferenceMeta, err)
		}
		if meta.ModelRev == "" || meta.Seed == nil || meta.Backend != "mock" || meta.Parameters["style"] != "scandinavian" ||
			meta.Parameters["tier"] != tierOf[r.ID] || meta.Warnings == nil {
			t.Errorf("%s: inference_meta %s", r.ID, r.InferenceMeta)
		}
		if r.Job == nil || r.Job.Attempts != 1 || r.Job.StartedAt == nil || r.Job.FinishedAt == nil || len(r.Job.Metrics) == 0 {
			t.Errorf("%s: job %+v", r.ID, r.Job)
		}
	}
	slices.SortFunc(rows, func(a, b store.Row) int { return a.Job.StartedAt.Compare(*b.Job.StartedAt) })
	rank := map[string]float64{}
	for i, r := range rows {
		rank[r.Job.Tier] += float64(i) / 10
	}
	if !(rank["business"] < rank["free"]) {
		t.Errorf("mean start rank: business %.1f, pro %.1f, free %.1f; business should start first", rank["business"], rank["pro"], rank["free"])
	}
	t.Logf("mean start rank: business %.1f, pro %.1f, free %.1f", rank["business"], rank["pro"], rank["free"])

	// A staged image is not queued again.
	s.enqueue(t, "pro-03", "pro", "living_room", "staged")
	code, out, _ := s.cmd(t, "status", "--image-id", "pro-03")
	var row store.Row
	if code != 0 || json.Unmarshal([]byte(out), &row) != nil || row.Status != store.StatusStaged || row.Job.Tier != "pro" {
		t.Errorf("status: exit %d: %s", code, out)
	}
}

// TestSidecarStoppedMidRun stops the sidecar for ten seconds while jobs
// run: nothing is lost, every image ends staged, and the jobs that met the
// outage were retried.
func TestSidecarStoppedMidRun(t *testing.T) {
	s := newStack(t, nil)
	side := s.slowSidecar(t, "0.03", nil) // 0.3 s jobs
	var ids []string
	for i := range 16 {
		id := "outage-" + strconv.Itoa(i)
		s.enqueue(t, id, "pro", "bedroom", "enqueued")
		ids = append(ids, id)
	}
	s.runWorker(t, map[string]string{
		"VSTAGE_URL": side.URL, "WORKER_CONCURRENCY": "2",
		"VSTAGE_MAX_ATTEMPTS": "2", "VSTAGE_BREAKER_FAILURES": "3", "VSTAGE_BREAKER_OPEN": "1s",
	})
	s.waitRows(t, ids, time.Minute, func(rows []store.Row) bool { return staged(rows) >= 3 })
	side.Stop(t)
	stoppedWith := staged(s.rows(t, ids))
	time.Sleep(10 * time.Second)
	if n := staged(s.rows(t, ids)); n != stoppedWith {
		t.Fatalf("%d images staged while the sidecar was stopped (was %d)", n, stoppedWith)
	}
	side.Start(t)
	rows := s.waitRows(t, ids, 2*time.Minute, allFinal)
	retried := 0
	for _, r := range rows {
		if r.Status != store.StatusStaged {
			t.Errorf("%s: %s %s %s", r.ID, r.Status, deref(r.ErrorCode), deref(r.ErrorMessage))
		}
		if r.Job.Attempts > 1 {
			retried++
		}
	}
	if stoppedWith == len(ids) || retried == 0 {
		t.Errorf("%d of %d staged before the stop, %d retried: the outage met no job", stoppedWith, len(ids), retried)
	}
	t.Logf("%d staged before the stop, %d jobs retried", stoppedWith, retried)
}

func staged(rows []store.Row) int {
	n := 0
	for _, r := range rows {
		if r.Status == store.StatusStaged {
			n++
		}
	}
	return n
}

// TestRetryAfterAndInvalidJobs runs two jobs on a one-place service with
// no queue, so one is refused with 429 and a Retry-After: the worker
// never calls again before it, whether the client retries within the
// attempt or the job goes back to its queue (without using a retry). A job
// the service calls invalid fails once, with its code, and is not retried.
func TestRetryAfterAndInvalidJobs(t *testing.T) {
	t.Run("client retries", func(t *testing.T) { retryAfter(t, "3") })
	t.Run("queue retries", func(t *testing.T) { retryAfter(t, "1") })
}

func retryAfter(t *testing.T, clientAttempts string) {
	s := newStack(t, nil)
	// Two-second jobs; the service's estimate for a job it has not yet
	// measured (JOB_DURATION_PER_MEGAPIXEL of the engine's image size)
	// makes the Retry-After a few seconds.
	side := s.slowSidecar(t, "0.2", map[string]string{"CONCURRENCY": "1", "QUEUE_DEPTH": "0", "JOB_DURATION_PER_MEGAPIXEL": "3s"})
	rec := newRecorder(t, side.URL)
	s.enqueue(t, "busy-a", "business", "bedroom", "enqueued")
	s.enqueue(t, "busy-b", "business", "bedroom", "enqueued")
	s.enqueue(t, "bad-room", "business", "garage", "enqueued")
	metrics := testenv.FreePort(t)
	s.runWorker(t, map[string]string{"VSTAGE_URL": rec.srv.URL, "WORKER_CONCURRENCY": "2", "WORKER_METRICS_ADDR": metrics,
		"VSTAGE_MAX_ATTEMPTS": clientAttempts})
	ids := []string{"busy-a", "busy-b", "bad-room"}
	rows := s.waitRows(t, ids, 2*time.Minute, allFinal)

	refusals := 0
	for _, id := range ids[:2] {
		calls := rec.of(id)
		for i, c := range calls {
			if c.status != 429 {
				continue
			}
			refusals++
			after, err := strconv.Atoi(c.retryAfter)
			if err != nil || after < 1 {
				t.Fatalf("%s: 429 with Retry-After %q", id, c.retryAfter)
			}
			if i+1 == len(calls) {
				t.Fatalf("%s: no call after the 429", id)
			}
			if gap := calls[i+1].arrived.Sub(c.answered); gap < time.Duration(after)*time.Second {
				t.Errorf("%s: called again %v after a 429 with Retry-After %ds", id, gap, after)
			}
		}
	}
	if refusals == 0 {
		t.Fatal("no call was refused with 429: the test proved nothing")
	}
	for _, r := range rows[:2] {
		if r.Status != store.StatusStaged {
			t.Errorf("%s: %s %s", r.ID, r.Status, deref(r.ErrorCode))
		}
	}
	bad := rows[2]
	if bad.Status != store.StatusFailed || deref(bad.ErrorCode) != "invalid_input" || bad.Job.Attempts != 1 || len(rec.of("bad-room")) != 1 {
		t.Errorf("bad-room: %s %s, %d attempts, %d calls; want failed invalid_input once", bad.Status, deref(bad.ErrorCode), bad.Job.Attempts, len(rec.of("bad-room")))
	}
	if v := metric(t, metrics, `vstage_worker_attempts_total{code="invalid_input",outcome="failed",queue="business"}`); v != "1" {
		t.Errorf("failed invalid_input attempts = %q", v)
	}
	if v := metric(t, metrics, `vstage_worker_queue_tasks{queue="business",state="archived"}`); v != "1" {
		t.Errorf("archived business tasks = %q", v)
	}
	delayed := metric(t, metrics, `vstage_worker_attempts_total{code="overloaded",outcome="delayed",queue="business"}`)
	if clientAttempts == "1" && delayed == "" {
		t.Error("no attempt was delayed for overloaded")
	}
	t.Logf("%d refusals with Retry-After honoured", refusals)
}

// TestEnqueueIsIdempotentAndCapped: a second enqueue of an image is one job;
// the same image_id with other parameters is refused; a full queue refuses
// the enqueue and records nothing; pause and resume are idempotent.
func TestEnqueueIsIdempotentAndCapped(t *testing.T) {
	s := newStack(t, map[string]string{"WORKER_QUEUE_CAPS": "business=5,pro=5,free=2"})
	s.enqueue(t, "dup-1", "free", "bedroom", "enqueued")
	s.enqueue(t, "dup-1", "free", "bedroom", "duplicate")
	code, _, errOut := s.cmd(t, "enqueue", "--image-id", "dup-1", "--original-key", "listings/42/empty.jpg", "--room-type", "kitchen", "--style", "scandinavian", "--tier", "free")
	if code != 1 {
		t.Errorf("same image_id, other room: exit %d (%s), want 1", code, errOut)
	}
	s.enqueue(t, "dup-2", "free", "bedroom", "enqueued")
	code, _, errOut = s.cmd(t, "enqueue", "--image-id", "over-cap", "--original-key", "listings/42/empty.jpg", "--room-type", "bedroom", "--style", "scandinavian", "--tier", "free")
	if code != 75 {
		t.Errorf("third job on a free queue capped at 2: exit %d (%s), want 75", code, errOut)
	}
	if _, err := s.db.Get(t.Context(), "over-cap"); err != store.ErrNotFound {
		t.Errorf("a refused enqueue left a row: %v", err)
	}
	s.enqueue(t, "other-tier", "pro", "bedroom", "enqueued") // each tier has its own cap
	row, err := s.db.Get(t.Context(), "dup-1")
	if err != nil || row.Status != store.StatusQueued || row.Job == nil || row.Job.Attempts != 0 {
		t.Errorf("dup-1: %+v %v", row, err)
	}
	for _, args := range [][]string{
		{"enqueue", "--image-id", "a b", "--original-key", "k", "--room-type", "r", "--style", "s"},
		{"enqueue", "--image-id", "x", "--original-key", "k", "--room-type", "r", "--style", "s", "--seed", "4294967296"},
		{"enqueue", "--image-id", "x", "--original-key", "k", "--room-type", "r", "--style", "s", "--tier", "gold"},
		{"enqueue", "--image-id", "x"},
		{"pause", "--queue", "gold"},
		{"nonsense"},
	} {
		if code, _, _ := s.cmd(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	for _, args := range [][]string{{"pause", "--queue", "free"}, {"pause", "--queue", "free"}, {"resume", "--queue", "all"}, {"resume", "--queue", "free"}} {
		if code, _, errOut := s.cmd(t, args...); code != 0 {
			t.Errorf("%q: exit %d: %s", args, code, errOut)
		}
	}
}

// TestPausedQueueKeepsItsJobs: while a queue is paused its jobs wait, other
// queues run; after resume they run too.
func TestPausedQueueKeepsItsJobs(t *testing.T) {
	s := newStack(t, nil)
	side := s.mockSidecar(t)
	if code, _, errOut := s.cmd(t, "pause", "--queue", "free"); code != 0 {
		t.Fatal(errOut)
	}
	s.enqueue(t, "paused-free", "free", "bedroom", "enqueued")
	s.enqueue(t, "running-pro", "pro", "bedroom", "enqueued")
	s.runWorker(t, map[string]string{"VSTAGE_URL": side.URL})
	s.waitRows(t, []string{"running-pro"}, time.Minute, allFinal)
	// The worker polls every queue about once a second when idle.
	time.Sleep(2 * time.Second)
	if r := s.rows(t, []string{"paused-free"})[0]; r.Status != store.StatusQueued {
		t.Fatalf("paused-free ran while its queue was paused: %s", r.Status)
	}
	if code, _, errOut := s.cmd(t, "resume", "--queue", "free"); code != 0 {
		t.Fatal(errOut)
	}
	s.waitRows(t, []string{"paused-free"}, time.Minute, allFinal)
}

// TestRetriesRunOut: with nothing answering at VSTAGE_URL, a job uses its
// retries and then fails for good with the code transport; the worker's
// shutdown is clean.
func TestRetriesRunOut(t *testing.T) {
	// The retry budget travels with the task, so it is set at enqueue.
	s := newStack(t, map[string]string{"WORKER_MAX_RETRY": "2"})
	s.enqueue(t, "nobody-home", "free", "bedroom", "enqueued")
	stop := s.runWorker(t, map[string]string{
		"VSTAGE_URL": "http://" + testenv.FreePort(t), "VSTAGE_MAX_ATTEMPTS": "1",
		"VSTAGE_BREAKER_FAILURES": "10",
	})
	// asynq moves due retries to their queue every few seconds.
	r := s.waitRows(t, []string{"nobody-home"}, time.Minute, allFinal)[0]
	if r.Status != store.StatusFailed || deref(r.ErrorCode) != "transport" || r.Job.Attempts != 3 || r.Job.FinishedAt == nil {
		t.Errorf("%s %s after %d attempts, want failed transport after 3", r.Status, deref(r.ErrorCode), r.Job.Attempts)
	}
	stop()
}

// TestEnqueueWithAStoreDown: with Redis or PostgreSQL unreachable, enqueue
// exits 1 with the cause and records nothing anywhere.
func TestEnqueueWithAStoreDown(t *testing.T) {
	s := newStack(t, nil)
	args := []string{"enqueue", "--image-id", "down-1", "--original-key", "listings/42/empty.jpg",
		"--room-type", "bedroom", "--style", "scandinavian"}
	goodRedis, goodDB := s.env["REDIS_URL"], s.env["DATABASE_URL"]

	s.env["REDIS_URL"] = "redis-socket://" + filepath.Join(t.TempDir(), "none.sock")
	code, _, errOut := s.cmd(t, args...)
	if code != 1 || !strings.Contains(errOut, "queue") {
		t.Errorf("Redis down: exit %d, %q; want 1 naming the queue", code, errOut)
	}
	if _, err := s.db.Get(t.Context(), "down-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Redis down: a row was recorded: %v", err)
	}

	s.env["REDIS_URL"], s.env["DATABASE_URL"] = goodRedis, "postgres://vstage@/vstage?host="+t.TempDir()+"&sslmode=disable&connect_timeout=2"
	code, _, errOut = s.cmd(t, args...)
	if code != 1 || !strings.Contains(errOut, "PostgreSQL") {
		t.Errorf("PostgreSQL down: exit %d, %q; want 1 naming PostgreSQL", code, errOut)
	}
	s.env["DATABASE_URL"] = goodDB
	if code, out, _ := s.cmd(t, "status", "--image-id", "down-1"); code != 1 {
		t.Errorf("status of an image never recorded: exit %d, %s", code, out)
	}
	// Both back: the same enqueue now works, so nothing half-written blocks it.
	s.enqueue(t, "down-1", "free", "bedroom", "enqueued")
}

// TestLabelAndUpscaleReachTheService: --label and --upscale travel with the
// task to the service, which keeps them in its record of the job; they are
// parameters of the image, so another value under the same image_id is
// refused; a tier the service does not upscale for fails at once.
func TestLabelAndUpscaleReachTheService(t *testing.T) {
	s := newStack(t, nil)
	side := testenv.StartSidecar(t, sidecarBin, map[string]string{
		"INFERENCE_MODE": "mock", "STORAGE_URL": "file://" + s.storeDir, "UPSCALE_ENABLED": "true",
	})
	base := []string{"--original-key", "listings/42/empty.jpg", "--room-type", "bedroom", "--style", "scandinavian"}
	jobs := map[string][]string{
		"labelled":      {"--tier", "pro", "--label", "true"},
		"unlabelled":    {"--tier", "pro", "--label", "false"},
		"default":       {"--tier", "pro"},
		"upscaled":      {"--tier", "pro", "--upscale"},
		"free-upscaled": {"--tier", "free", "--upscale"},
	}
	for id, extra := range jobs {
		args := append(append([]string{"enqueue", "--image-id", id}, base...), extra...)
		if code, _, errOut := s.cmd(t, args...); code != 0 {
			t.Fatalf("%s: exit %d: %s", id, code, errOut)
		}
	}
	args := append([]string{"enqueue", "--image-id", "labelled", "--tier", "pro"}, base...)
	for _, other := range [][]string{{"--label", "false"}, {"--label", "true", "--upscale"}} {
		if code, _, errOut := s.cmd(t, append(args, other...)...); code != 1 || !strings.Contains(errOut, "other parameters") {
			t.Errorf("same image_id, %v: exit %d (%s), want 1", other, code, errOut)
		}
	}
	if code, _, _ := s.cmd(t, append(args, "--label", "yes")...); code != 2 {
		t.Errorf("--label yes: exit %d, want 2", code)
	}
	s.runWorker(t, map[string]string{"VSTAGE_URL": side.URL})
	ids := slices.Sorted(maps.Keys(jobs))
	rows := s.waitRows(t, ids, time.Minute, allFinal)
	wantLabel := map[string]*bool{"labelled": ptr(true), "unlabelled": ptr(false)}
	for _, r := range rows {
		if r.ID == "free-upscaled" {
			// The service refuses the tier: a client error, not retried.
			if r.Status != store.StatusFailed || deref(r.ErrorCode) != "forbidden" || r.Job.Attempts != 1 {
				t.Errorf("free-upscaled: %s %s after %d attempts, want failed forbidden after 1", r.Status, deref(r.ErrorCode), r.Job.Attempts)
			}
			continue
		}
		if r.Status != store.StatusStaged || r.StagedKey == nil {
			t.Fatalf("%s: %s", r.ID, r.Status)
		}
		w := wantLabel[r.ID]
		if (w == nil) != (r.Label == nil) || (w != nil && *w != *r.Label) || r.Upscale != (r.ID == "upscaled") {
			t.Errorf("%s: status shows label %v, upscale %v", r.ID, r.Label, r.Upscale)
		}
		var meta struct {
			Parameters map[string]any
			Width      int
			Warnings   []string
		}
		if err := json.Unmarshal(r.InferenceMeta, &meta); err != nil {
			t.Fatal(err)
		}
		if got, ok := meta.Parameters["label"]; (w == nil) == ok || (ok && got != *w) {
			t.Errorf("%s: inference_meta parameters %v", r.ID, meta.Parameters)
		}
		if _, ok := meta.Parameters["upscale"]; ok != (r.ID == "upscaled") {
			t.Errorf("%s: inference_meta parameters %v", r.ID, meta.Parameters)
		}
		// The mock backend resamples an upscale to UPSCALE_LONG_SIDE (2048) and says so.
		if up := r.ID == "upscaled"; (meta.Width == 2048) != up || slices.Contains(meta.Warnings, "upscale_resampled_only") != up {
			t.Errorf("%s: width %d, warnings %v", r.ID, meta.Width, meta.Warnings)
		}
		// The service's own record of the job says what it was asked.
		raw, err := os.ReadFile(filepath.Join(s.storeDir, filepath.FromSlash(*r.StagedKey)+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if labelled := strings.Contains(string(raw), `"label":true`); labelled != (r.ID == "labelled") {
			t.Errorf("%s: the service's record %s", r.ID, raw)
		}
		if upscaled := strings.Contains(string(raw), `"upscale":true`); upscaled != (r.ID == "upscaled") {
			t.Errorf("%s: the service's record %s", r.ID, raw)
		}
	}
}

func ptr[T any](v T) *T { return &v }
